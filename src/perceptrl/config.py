"""Typed configuration: a tree of dataclasses, loaded from YAML plus dotted overrides.

``load_config("recipes/grpo.yaml", ["train.lr=1e-4", "rollout.n=8"])`` returns a
``Config``. An unknown key or a value of the wrong type is a ``ConfigError`` that names the
dotted key (and the file), never a crash deep in the trainer.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass
class LoraSettings:
    """LoRA adapters through peft (``perceptrl.models.lora``); the reference policy is the base model."""

    enabled: bool = False
    r: int = 16  # rank of the adapter matrices
    alpha: float = 32.0  # scaling alpha / r
    dropout: float = 0.0  # dropout on the adapter input (0 keeps rollout and update log-probs equal)
    target_modules: list[str] = field(  # last names of the Linear layers that get adapters
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    include_vision: bool = False  # also adapt matching layers of the vision tower and projector


@dataclass
class ModelConfig:
    path: str = "tiny"  # HF folder, or "tiny" to build the offline test model
    dtype: str = "float32"  # float32 | bfloat16 | float16 (bfloat16 on GPUs: half the memory of weights)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (several processes: each its own device)
    trust_remote_code: bool = False  # never on unless the user says so
    tiny_seed: int = 0  # initial weights when path == "tiny"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, slower)
    freeze_vision_tower: bool = False  # no gradient into the vision encoder (EasyR1 worker.actor.model.freeze_vision_tower)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class DataConfig:
    train_files: str | list[str] | None = None  # local JSONL/JSON/parquet; None = built-in synthetic suite
    val_files: str | list[str] | None = None
    image_key: str = "images"
    prompt_key: str = "problem"
    answer_key: str = "answer"
    template: str = "boxed"  # prompt template name (perceptrl.rewards.templates)
    families: list[str] = field(default_factory=lambda: ["count"])  # synthetic families
    difficulty: int = 1
    label_noise: float = 0.0  # synthetic suite: share of training answers made wrong, rationale included (test: never)
    image_size: int = 112
    val_per_family: int = 64  # held-out prompts per family for evaluation during training
    val_split: str = "test"  # built-in suite: test (held-out items 0, 1, ...) | tune (items from the pool's far end)
    system_prompt: str | None = None
    answer_type_key: str = "answer_type"  # optional column with each row's answer type (default "math")
    id_key: str = "id"  # optional column with unique row ids (default id: "<file stem>-<row>")
    image_dir: str | None = None  # root of relative image paths; images must stay inside (default: data file's folder)
    on_bad_sample: str = "error"  # error | skip: what to do with a malformed row of a data file
    max_prompt_chars: int = 8192  # longest problem (and answer) text accepted from data files, in characters
    max_image_pixels: int = 50_000_000  # largest image (width x height) accepted from data files
    rollout_batch_size: int = 8  # prompts per rollout step, over all processes (EasyR1 data.rollout_batch_size;
    #                              alias: train.prompts_per_step)
    min_pixels: int | None = None  # images resized to at least this many pixels (EasyR1 data.min_pixels; None: processor's)
    max_pixels: int | None = None  # images resized to at most this many pixels (EasyR1 data.max_pixels; None: processor's)
    max_prompt_length: int | None = None  # prompt tokens, image tokens included (None: no limit)
    filter_overlong_prompts: bool = True  # drop (count, log) prompts over max_prompt_length; false: error naming the row


@dataclass
class RolloutConfig:
    n: int = 8  # completions per prompt (G)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    plan: str = "clean"  # rollout plan: clean | noisy_rollout | noise_ladder | dupl (ALGORITHMS.md section 8)
    batch_invariant: bool = True  # each completion draws its own sampling noise (same samples on any process count)
    engine: str = "hf"  # hf (transformers generation) | vllm (pip install 'perceptrl[vllm]'; docs/SCALING.md)
    vllm_gpu_memory_utilization: float = 0.3  # vllm: share of GPU memory vLLM may take (TRL's colocate default 0.3)
    vllm_sleep: bool = True  # vllm: free its GPU memory during the update (sleep mode: CUDA/ROCm; elsewhere a notice)
    vllm_max_model_len: int | None = None  # vllm: context window (prompt + completion); None = the model's own limit
    vllm_enforce_eager: bool | None = None  # vllm: no CUDA graphs / torch.compile; None = eager on CPU only
    generation_batch_size: int | None = None  # hf: completions generated at once per device (bounds the KV cache); null: all
    tis_cap: float | None = None  # truncated IS of the rollout/training mismatch: weight cap (TRL 3, verl 2); null = off


@dataclass
class RewardConfig:
    accuracy_weight: float = 0.9
    format_weight: float = 0.1


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"  # grpo | drgrpo (= grpo with adv_scale none) | noisy_grpo | dupl
    adv_scale: str = "group"  # group | batch | none (Dr.GRPO)
    adv_eps: float = 1e-6
    loss_agg_mode: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float | None = 3.0
    kl_beta: float = 0.0  # 0 loads no reference model
    kl_type: str = "k3"  # k1 | k2 | k3
    kl_bias_correction: bool = False  # multiply k3 by the importance ratio (TRL's use_bias_correction_kl)
    entropy_coef: float = 0.0  # bonus: subtract coef * mean full-vocabulary entropy
    kl_clamp: bool = True  # clamp k3 to [-10, 10] and d to [-20, 20] as EasyR1; false: unclamped, as TRL (NoisyGRPO)


@dataclass
class PapoConfig:
    """PAPO (arXiv 2507.06448): perception KL to a masked view, maximised, plus double entropy."""

    gamma: float = 0.0  # weight of -token_mean(KLprcp); 0 = off. PAPO-G 0.02, PAPO-D 0.01; > 0.02 risks collapse
    eta1: float = 0.0  # double entropy: weight of token_mean(-lp) on the original image (PAPO-D 0.03, PAPO-G-7B 0.05)
    eta2: float = 0.0  # double entropy: weight of token_mean(-lp_mask) on the masked image
    mask_patch: int = 14  # masked view: side of the squares, in raw-image pixels
    mask_prob: float = 0.6  # masked view: probability that a square is blackened
    recompute_masked: bool = False  # re-score the masked view with gradient in the update (one more forward+backward)
    kl_clamp_max: float | None = None  # clamp KLprcp to [0, x] (their off-by-default option uses 0.2)


@dataclass
class NoisyRolloutConfig:
    """NoisyRollout (arXiv 2504.13055): n1 clean + n2 noisy rollouts per prompt, one group."""

    n1: int | None = None  # rollouts from the clean image (None: rollout.n - n2, or half of rollout.n; released 6)
    n2: int | None = None  # rollouts from the annealed DDPM view (None: rollout.n - n1, or half; released 6)
    t_max: int = 500  # DDPM step at full strength: t = int(t_max * eta(s)) (their gaussian_noise_step)
    schedule: str = "sigmoid"  # eta(s): sigmoid (paper) | constant (fixed noise, unstable in their runs) | linear
    lam: float = 30.0  # sigmoid steepness (their decay_coef)
    s_mid: float = 40.0  # sigmoid midpoint, an absolute optimizer step (their decay_sig_mid_step)


@dataclass
class NoisyGrpoConfig:
    """NoisyGRPO (arXiv 2510.21122): a ladder of DDPM noise levels and a Kalman-fused advantage."""

    levels: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.6, 0.9])  # rollout.n must be a multiple of len
    p_alpha: float = 0.01  # prior variance in P = p_alpha / (var_g(r) + p_alpha)
    R: float = 0.1  # measurement noise in K = P / (P + R)
    clean_first_level: bool = True  # level 0 is the clean image (spec); false = ddpm(t=0) as their code


@dataclass
class DuplConfig:
    """DUPL (arXiv 2510.01444), first released as VOGUE: uncertainty-shaped advantages, two branches."""

    variant: str = "paper"  # paper (G from x and G from T(x), full-vocabulary u) | released (ruiiu/DUPL code)
    sigma: float = 0.4  # Gaussian noise std of T(x): paper 0.4, released scripts 0.2
    alpha_p: float = 1.0  # perceptual bonus g_per = min(|A| / beta_p, alpha_p * u_per)
    beta_p: float = 2.0
    alpha_o: float = 0.4  # output bonus g_out = min(|A| / beta_o, alpha_o * u_out)
    beta_o: float = 2.0
    branch_schedule: str = "linear"  # p_noi(s): linear (max(0, 1 - s/S), the paper) | constant (ablation)
    branch_prob: float = 0.5  # p_noi for branch_schedule: constant
    use_u_per: bool = True  # ablation switch for the perceptual bonus
    use_u_out: bool = True  # ablation switch for the output bonus
    view_per_rollout: bool = False  # released variant: draw T(x) afresh per rollout as their trainer (slower: no shared prompt)


@dataclass
class FiltersConfig:
    """DAPO (arXiv 2503.14476) dynamic sampling and overlong handling."""

    dynamic_sampling: bool = False  # drop prompts whose groups are all right or all wrong; generate more
    accuracy_low: float = 0.01  # keep a group when accuracy_low < mean accuracy < accuracy_high (PAPO code)
    accuracy_high: float = 0.99
    max_tries: int = 20  # at most this many generation rounds per step, then train on what there is
    round_prompts: int = 0  # prompts generated per round, over all processes (0 = data.rollout_batch_size)
    overlong_mask: bool = False  # take truncated completions out of the loss
    overlong_penalty: bool = False  # add DAPO's soft length punishment to the reward
    overlong_cache: int | None = None  # L_cache of the punishment, in tokens (None = 20% of rollout.max_new_tokens)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 50  # rollout steps (EasyR1 trainer.max_steps; each one or more optimizer steps)
    seed: int = 0
    lr: float = 1e-5
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    warmup_steps: int = 0  # linear LR warm-up, in optimizer steps
    global_batch_size: int | None = None  # prompts per optimizer step (PPO mini-batch; EasyR1
    #   worker.actor.global_batch_size); None: the whole rollout batch, one optimizer step per epoch
    micro_batch_size: int = 64  # sequences per forward/backward in the update
    ppo_epochs: int = 1  # passes over the rollout batch, each one optimizer step per mini-batch
    log_every: int = 1
    eval_every: int = 0  # 0 = only before and after training
    save_final: bool = True
    save_steps: int = 0  # write a checkpoint every N rollout steps (0 = never)
    save_total_limit: int = 2  # keep only the newest N checkpoints
    resume: str = "auto"  # auto (newest checkpoint of this same run) | none | force (even if the config differs) | a checkpoint path
    overwrite: bool = False  # replace a finished or different run already in output_dir (else it is refused)
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])  # + wandb (pip install 'perceptrl[wandb]')
    max_bad_steps: int = 3  # stop after this many rollout steps in a row with a non-finite loss, reward or gradient
    progress: bool = True
    deterministic: bool = False
    num_threads: int = 0  # 0 = leave torch's default


# ---- token-level perception-aware family and policy-gradient baselines (issue 16; docs/METHODS.md) ----


@dataclass
class TokenViewConfig:
    """A counterfactual view of the image: a ``vision.views`` view, or ``no_image`` (the image removed).

    Only the parameters of the named view are read: mask_patches (patch, p, fill), gaussian (sigma),
    ddpm (t), vogue (sigma), clean (none), no_image (none).
    """

    name: str = "mask_patches"  # mask_patches | gaussian | ddpm | vogue | clean | no_image
    patch: int = 14  # mask_patches: side of the squares, raw-image pixels
    p: float = 0.5  # mask_patches: probability that a square is blackened
    fill: float = 0.0  # mask_patches: fill intensity in [0, 1]
    sigma: float = 0.4  # gaussian / vogue: noise std on [0, 1] pixels
    t: int = 500  # ddpm: forward-noise step 0..999

    def params(self) -> dict[str, Any]:
        """The keyword arguments of ``vision.views.make_view`` for this view."""
        return {"mask_patches": {"patch": self.patch, "p": self.p, "fill": self.fill}, "gaussian": {"sigma": self.sigma},
                "ddpm": {"t": self.t}, "vogue": {"sigma": self.sigma}}.get(self.name, {})


@dataclass
class TokenSignalConfig:
    """Per-token visual dependency of the rollout policy: the policy on the image vs on a counterfactual view.

    Computed once per rollout step, before the update, without gradient (``train/token_pieces.py``).
    """

    metric: str = "none"  # none | k3 (VPPO/PGPO released: sampled-token k3, clamped [0, 10]) | abs_log_ratio (ToR)
    #                        | kl_full (VPPO paper: full-vocabulary KL) | vepo (VEPO: JSD, entropy gap, entropy)
    view: TokenViewConfig = field(default_factory=TokenViewConfig)  # the counterfactual view (VPPO: 14 px, p = 0.5)
    per_rollout: bool = False  # a fresh view for every completion (VPPO's released code) instead of one per prompt
    vepo_alpha: float = 0.7  # VEPO: weight of the JSD against the entropy gap in the soft "or" (run_train.sh 0.7)
    chunk_rows: int = 4  # full-vocabulary metrics: completions whose logits (both views) are held at once


@dataclass
class TokenSelectConfig:
    """Which tokens the policy gradient reaches, with what weight (VPPO's gradient filter, VEPO, ToR)."""

    signal_fraction: float | None = None  # keep the top fraction by the signal (VPPO 0.4, VEPO 0.2, ToR 0.3); null: off
    entropy_fraction: float | None = None  # keep the top fraction by rollout-policy entropy (ToR 0.3); null: off
    granularity: str = "response"  # response (per completion: VPPO, VEPO) | batch (over the rollout batch: ToR)
    signal_weight: float = 1.0  # weight of the signal-selected tokens (ToR gamma_p 0.5)
    entropy_weight: float = 1.0  # weight of the entropy-selected tokens (ToR gamma_r 1.0)
    entropy_top_p: float = 1.0  # entropy of the top-p truncated distribution (ToR 0.95); 1: full vocabulary
    normalize: str = "all"  # all: the loss stays a mean over every token | selected: over the selected ones (VEPO)


@dataclass
class TokenScaleConfig:
    """Advantage scaling from the signal: per completion (VPPO) or per token (PGPO)."""

    method: str = "none"  # none | vppo (trajectory-level advantage shaping) | pgpo (token weights)
    vppo_min: float = 0.9  # VPPO beta_min (train_vppo_7b.sh advantage_scaling_min=0.9); beta_max is dynamic
    vppo_scope: str = "minibatch"  # min/max/mean over: minibatch (released: the PPO mini-batch) | rollout
    pgpo_threshold: float = 0.4  # PGPO tau
    pgpo_boost: float = 2.0  # PGPO beta
    pgpo_threshold_mode: str = "absolute"  # absolute (paper) | quantile (the authors' development code)
    pgpo_low_floor: float = 0.0  # lower bound of the weights below tau (paper 0; development code 0.1)
    pgpo_mass_normalize: bool = True  # weights of a completion sum to its length (paper; development code: false)


@dataclass
class DvrpConfig:
    """DVRP (arXiv 2601.06801): minimise the KL to an annealed, noised view (its masked-view term is PAPO's)."""

    robustness_coef: float = 0.0  # lambda_rob: + coef * token_mean(k3 to the noised view); 0 = off
    entropy_coef: float = 0.0  # lambda_ent on the noised view: + coef * token_mean(-lp_noised) (no gradient)
    t_init: float = 500.0  # noised view: ddpm(t), t = t_init * sigmoid(gamma * (0.5 - s / S))
    gamma: float = 10.0
    t_max: int = 999  # largest DDPM step


@dataclass
class PolicyLossConfig:
    """The policy-gradient loss: PPO's token-level clipped surrogate, or a baseline's (docs/METHODS.md)."""

    type: str = "ppo"  # ppo | gspo (sequence ratio, mean log-ratio) | sequence_sum (TRL's RLOO loss) | cispo
    cispo_max_ratio: float = 5.0  # CISPO: cap of the stop-gradient importance weight (TRL epsilon_high, ScaleRL 5.0)
    sampled_entropy_coef: float = 0.0  # + coef * token_mean(-lp), sampled-token entropy penalty (VPPO 0.06)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    papo: PapoConfig = field(default_factory=PapoConfig)
    noisy_rollout: NoisyRolloutConfig = field(default_factory=NoisyRolloutConfig)
    noisy_grpo: NoisyGrpoConfig = field(default_factory=NoisyGrpoConfig)
    dupl: DuplConfig = field(default_factory=DuplConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    token_signal: TokenSignalConfig = field(default_factory=TokenSignalConfig)
    token_select: TokenSelectConfig = field(default_factory=TokenSelectConfig)
    token_scale: TokenScaleConfig = field(default_factory=TokenScaleConfig)
    dvrp: DvrpConfig = field(default_factory=DvrpConfig)
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    recipe: str = "grpo"  # name of the recipe (informational; "vogue" is an alias of "dupl")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_type is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{key}: NaN is not a valid value")
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return _coerce(float(value), float, key)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return value


def _build(cls: type, raw: Any, prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(f"unknown key '{dotted}' (valid keys here: {valid})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 1e-4)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{key}': value {raw!r} is not valid YAML ({err})") from err
    return key, value


# Old or other frameworks' names accepted for a key: alias -> canonical dotted key.
KEY_ALIASES = {
    "train.prompts_per_step": "data.rollout_batch_size",  # perceptrl's name before mini-batches (EasyR1's is canonical)
}


def apply_aliases(raw: dict, source: str) -> dict:
    """Rename aliased keys of one raw config tree (a file, or one override) to their canonical names.

    Giving both an alias and its canonical key in one source is an error when the values differ.
    """
    for alias, canonical in KEY_ALIASES.items():
        a_section, a_key = alias.split(".")
        c_section, c_key = canonical.split(".")
        section = raw.get(a_section)
        if not isinstance(section, dict) or a_key not in section:
            continue
        value = section.pop(a_key)
        target = raw.setdefault(c_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: '{c_section}' must be a mapping")
        if c_key in target and target[c_key] != value:
            raise ConfigError(f"{source}: '{alias}' ({value!r}) is another name for '{canonical}' "
                              f"({target[c_key]!r}); give one of them")
        target.setdefault(c_key, value)
    return raw


# Recipe files may inherit: ``base: <recipe>`` names the file whose settings this one starts from, and
# ``differs_from_base`` records why a key outside the method's own section differs from the base
# (dotted key -> reason; tests/test_recipe_pairs.py checks every such difference has one). Both are
# read and removed by the loader: they are not settings.
BASE_KEY = "base"
REASONS_KEY = "differs_from_base"


@dataclass
class RecipeFile:
    """One file of a recipe's inheritance chain, as written (aliases applied, meta keys removed)."""

    path: Path
    raw: dict  # this file's own settings
    base: str | None  # its ``base:`` entry as written, if any
    reasons: dict[str, str]  # its ``differs_from_base`` entries


@dataclass
class RecipeSource:
    """A recipe file resolved through its ``base:`` chain.

    ``raw`` is the merged settings tree (what ``read_yaml`` returns); ``chain`` the files from the
    root base to the file itself.
    """

    raw: dict
    chain: list[RecipeFile]

    def reasons_since(self, ancestor: str | Path) -> dict[str, str]:
        """The ``differs_from_base`` entries of the files below ``ancestor`` in the chain (a recipe
        name or path); all of them if ``ancestor`` is not in the chain."""
        target = Path(ancestor).resolve() if str(ancestor).endswith((".yaml", ".yml")) else None
        out: dict[str, str] = {}
        for file in reversed(self.chain):
            if file.path == target or (target is None and file.path.stem == str(ancestor)):
                break
            for key, reason in file.reasons.items():
                out.setdefault(key, reason)
        return out


def recipes_dir() -> Path:
    """The shipped ``recipes/`` folder of the source checkout (the package is installed from it)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "recipes" / "grpo.yaml").is_file():
            return parent / "recipes"
    return Path.cwd() / "recipes"


def recipe_path(name: str) -> Path:
    """The shipped recipe called ``name`` (``grpo`` -> ``recipes/grpo.yaml``)."""
    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"recipe '{name}' not found under {recipes_dir()}")
    return path


def _base_path(value: Any, including: Path) -> Path:
    """Where ``base: value`` of the file ``including`` points.

    A value ending in ``.yaml``/``.yml`` is a path relative to the including file's folder (or
    absolute); anything else is a recipe name, ``<recipes>/<name>.yaml``, where ``<recipes>`` is the
    nearest folder named ``recipes`` around the including file, else the shipped ``recipes/``.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{including}: '{BASE_KEY}' must be a recipe name or a YAML path, got {value!r}")
    value = value.strip()
    if value.endswith((".yaml", ".yml")):
        path = Path(value)
        path = (path if path.is_absolute() else including.parent / path).resolve()
        if not path.is_file():
            raise ConfigError(f"{including}: base recipe '{value}' not found ({path} is not a file)")
        return path
    roots = [p for p in including.parents if p.name == "recipes"][:1] + [recipes_dir()]
    for root in roots:
        candidate = (root / f"{value}.yaml").resolve()
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(r / f"{value}.yaml") for r in dict.fromkeys(roots))
    raise ConfigError(f"{including}: base recipe '{value}' not found (looked for {looked})")


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted keys of the leaves of a raw settings tree (a mapping under a section is descended)."""
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        keys |= _leaf_keys(value, dotted) if isinstance(value, dict) else {dotted}
    return keys


def _config_leaf_keys(cls: type = None, prefix: str = "") -> set[str]:
    """Every dotted leaf key of the ``Config`` tree."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    keys = set()
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        keys |= _config_leaf_keys(hints[f.name], dotted) if dataclasses.is_dataclass(hints[f.name]) else {dotted}
    return keys


def _read_file(path: Path) -> RecipeFile:
    """One YAML file: parsed, aliases applied, ``base`` and ``differs_from_base`` taken out and checked."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = raw.pop(BASE_KEY, None)
    reasons = raw.pop(REASONS_KEY, None) or {}
    raw = apply_aliases(raw, str(path))
    if not isinstance(reasons, dict):
        raise ConfigError(f"{path}: '{REASONS_KEY}' must map dotted keys to reasons, got {reasons!r}")
    if reasons and base is None:
        raise ConfigError(f"{path}: '{REASONS_KEY}' needs a '{BASE_KEY}' recipe to differ from")
    valid, own = _config_leaf_keys(), _leaf_keys(raw)
    for key, reason in reasons.items():
        key = KEY_ALIASES.get(key, key)
        if key not in valid:
            raise ConfigError(f"{path}: {REASONS_KEY}: unknown key '{key}'")
        if key not in own:
            raise ConfigError(f"{path}: {REASONS_KEY}: '{key}' is not set in this file")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{path}: {REASONS_KEY}: '{key}' needs a reason (a non-empty string)")
    reasons = {KEY_ALIASES.get(k, k): v.strip() for k, v in reasons.items()}
    return RecipeFile(path, raw, base, reasons)


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists, null) replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_recipe(path: str | Path, cls: type | None = None) -> RecipeSource:
    """A recipe file and its ``base:`` chain, merged (base first, each file's settings on top).

    A missing base, a cycle, and (with ``cls``) an unknown key or a value of the wrong type are
    ``ConfigError``s that name the file where the problem is.
    """
    path = Path(path).resolve() if Path(path).is_file() else Path(path)
    chain: list[RecipeFile] = []
    seen: list[Path] = []
    while True:
        if path in seen:
            loop = " -> ".join(p.name for p in [*seen[seen.index(path):], path])
            raise ConfigError(f"{seen[-1]}: '{BASE_KEY}' makes a cycle: {loop}")
        seen.append(path)
        file = _read_file(path)
        if cls is not None:
            try:
                _build(cls, file.raw)  # names and types, file by file (so the error names the right file)
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
        chain.append(file)
        if file.base is None:
            break
        path = _base_path(file.base, path)
    chain.reverse()
    raw: dict = {}
    for file in chain:
        raw = deep_merge(raw, file.raw)
    return RecipeSource(raw, chain)


def read_yaml(path: str | Path) -> dict:
    """The settings tree of a YAML config, resolved through its ``base:`` chain (see ``read_recipe``)."""
    return read_recipe(path).raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config):
    """Build a config from an optional YAML file (and its ``base:`` chain) and ``key.path=value`` overrides.
    An error in a file names the file (``read_recipe``); one in an override names the override."""
    raw: dict = read_recipe(path, cls).raw if path else {}
    for text in overrides or []:
        key, value = parse_override(text)
        key = KEY_ALIASES.get(key, key)
        _set_dotted(raw, key, value)
        try:
            _build(cls, raw)
        except ConfigError as err:
            raise ConfigError(f"override '{text}': {err}") from None
    config = _build(cls, raw)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Refuse values that would train silently wrong."""
    t, a, r = config.train, config.algorithm, config.rollout
    checks = [
        (t.lr > 0, "train.lr must be > 0"),
        (t.max_steps >= 0, "train.max_steps must be >= 0"),
        (config.data.rollout_batch_size >= 1, "data.rollout_batch_size must be >= 1"),
        (t.global_batch_size is None or t.global_batch_size >= 1, "train.global_batch_size must be >= 1 or null"),
        (t.global_batch_size is None or config.data.rollout_batch_size % t.global_batch_size == 0,
         f"train.global_batch_size ({t.global_batch_size}) must divide data.rollout_batch_size "
         f"({config.data.rollout_batch_size}): every mini-batch has the same number of prompts"),
        (t.ppo_epochs >= 1, "train.ppo_epochs must be >= 1"),
        (t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1"),
        (t.max_grad_norm > 0, "train.max_grad_norm must be > 0"),
        (t.save_steps >= 0, "train.save_steps must be >= 0"),
        (t.save_total_limit >= 1, "train.save_total_limit must be >= 1"),
        (t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1"),
        (r.n >= 1, "rollout.n must be >= 1"),
        (r.temperature > 0, "rollout.temperature must be > 0"),
        (0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (r.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (a.eps_low >= 0 and a.eps_high >= 0, "algorithm.eps_low and eps_high must be >= 0"),
        (a.eps_high >= a.eps_low, "algorithm.eps_high must be >= algorithm.eps_low"),
        (a.kl_beta >= 0, "algorithm.kl_beta must be >= 0"),
        (a.kl_type in ("k1", "k2", "k3"), "algorithm.kl_type must be k1, k2 or k3"),
        (a.adv_scale in ("group", "batch", "none"), "algorithm.adv_scale must be group, batch or none"),
        (
            a.loss_agg_mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"),
            "algorithm.loss_agg_mode must be token_mean, seq_mean_token_mean or seq_mean_token_sum_norm",
        ),
        (a.dual_clip_c is None or a.dual_clip_c > 1, "algorithm.dual_clip_c must be > 1 or null"),
        (config.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype must be float32, bfloat16 or float16"),
        (r.engine in ("hf", "vllm"), f"rollout.engine must be hf or vllm, got {r.engine!r}"),
        (config.model.lora.r >= 1, "model.lora.r must be >= 1"),
        (config.model.lora.alpha > 0, "model.lora.alpha must be > 0"),
        (0 <= config.model.lora.dropout < 1, "model.lora.dropout must be in [0, 1)"),
        (bool(config.model.lora.target_modules), "model.lora.target_modules must name at least one layer"),
    ]
    if a.adv_estimator in ("grpo", "group") and r.n < 2:
        checks.append((False, "rollout.n must be >= 2 for a group advantage (a group of one has no baseline)"))
    checks += _method_checks(config)
    checks += _token_checks(config)
    checks += _data_checks(config)
    checks += _rollout_engine_checks(config)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _rollout_engine_checks(config: Config) -> list[tuple[bool, str]]:
    """The vLLM engine's keys and the rollout correction (``perceptrl.train.rollout_correction``)."""
    r = config.rollout
    return [
        (0 < r.vllm_gpu_memory_utilization <= 1, "rollout.vllm_gpu_memory_utilization must be in (0, 1]"),
        (r.vllm_max_model_len is None or r.vllm_max_model_len > r.max_new_tokens,
         "rollout.vllm_max_model_len must be null or > rollout.max_new_tokens (it holds prompt and completion)"),
        (r.generation_batch_size is None or r.generation_batch_size >= 1, "rollout.generation_batch_size must be >= 1 or null"),
        (r.tis_cap is None or r.tis_cap >= 1, "rollout.tis_cap must be null (off) or >= 1 (TRL uses 3, verl 2)"),
    ]


def _data_checks(config: Config) -> list[tuple[bool, str]]:
    """Names the data section refers to (checked here, before any model is loaded)."""
    from perceptrl.rewards.templates import PROMPT_TEMPLATES

    d = config.data
    checks = [
        (d.min_pixels is None or d.min_pixels >= 1, "data.min_pixels must be >= 1 or null"),
        (d.max_pixels is None or d.max_pixels >= 1, "data.max_pixels must be >= 1 or null"),
        (d.min_pixels is None or d.max_pixels is None or d.min_pixels <= d.max_pixels,
         f"data.min_pixels ({d.min_pixels}) must be <= data.max_pixels ({d.max_pixels})"),
        (d.max_prompt_length is None or d.max_prompt_length >= 1, "data.max_prompt_length must be >= 1 or null"),
        (d.on_bad_sample in ("error", "skip"), f"data.on_bad_sample must be error or skip, got {d.on_bad_sample!r}"),
        (d.template in PROMPT_TEMPLATES,
         f"data.template: unknown prompt template {d.template!r}; valid names: {', '.join(sorted(PROMPT_TEMPLATES))}"),
    ]
    checks.append((0 <= d.label_noise < 1, f"data.label_noise must be in [0, 1), got {d.label_noise}"))
    checks.append((not (d.label_noise and d.train_files), "data.label_noise applies to the built-in suite only"))
    checks.append((d.val_split in ("test", "tune"), f"data.val_split must be test or tune, got {d.val_split!r}"))
    checks.append((d.val_split == "test" or not (d.train_files or d.val_files),
                   "data.val_split=tune picks the built-in suite's tuning items; with data files, give the "
                   "tuning rows as data.val_files"))
    if not d.train_files:  # the built-in synthetic suite
        from perceptrl.data.synthetic import FAMILIES

        unknown = [name for name in d.families if name not in FAMILIES]
        checks.append((not unknown, f"data.families: unknown synthetic families {unknown}; known: {', '.join(FAMILIES)}"))
    return checks


RECIPE_ALIASES = {"vogue": "dupl"}  # VOGUE (arXiv 2510.01444 v1) is DUPL's first name, one codebase
PLANS = ("clean", "noisy_rollout", "noise_ladder", "dupl")
ADV_ESTIMATORS = ("grpo", "drgrpo", "noisy_grpo", "dupl", "rloo")


def noisy_rollout_split(config: Config) -> tuple[int, int]:
    """NoisyRollout's ``(n1, n2)``: as given, or the rest of ``rollout.n`` (half and half if neither is)."""
    n, nr = config.rollout.n, config.noisy_rollout
    if nr.n1 is None and nr.n2 is None:
        return n - n // 2, n // 2
    if nr.n1 is None:
        return n - nr.n2, nr.n2
    if nr.n2 is None:
        return nr.n1, n - nr.n1
    return nr.n1, nr.n2


def canonical_recipe(name: str) -> str:
    """The recipe a name stands for (``vogue`` -> ``dupl``)."""
    return RECIPE_ALIASES.get(name, name)


def _method_checks(config: Config) -> list[tuple[bool, str]]:
    """Checks of the method sections (papo, noisy_rollout, noisy_grpo, dupl, filters)."""
    r, a = config.rollout, config.algorithm
    p, nr, ng, d, f = config.papo, config.noisy_rollout, config.noisy_grpo, config.dupl, config.filters
    checks = [
        (r.plan in PLANS, f"rollout.plan must be one of {', '.join(PLANS)}, got {r.plan!r}"),
        (a.adv_estimator in ADV_ESTIMATORS, f"algorithm.adv_estimator must be one of {', '.join(ADV_ESTIMATORS)}, got {a.adv_estimator!r}"),
        (p.gamma >= 0, f"papo.gamma must be >= 0 (the perception KL is maximised by a positive gamma), got {p.gamma}"),
        (p.eta1 >= 0 and p.eta2 >= 0, "papo.eta1 and papo.eta2 must be >= 0"),
        (p.mask_patch >= 1, "papo.mask_patch must be >= 1"),
        (0 <= p.mask_prob <= 1, "papo.mask_prob must be in [0, 1]"),
        (p.kl_clamp_max is None or p.kl_clamp_max > 0, "papo.kl_clamp_max must be > 0 or null"),
        (d.variant in ("paper", "released"), f"dupl.variant must be paper or released, got {d.variant!r}"),
        (d.sigma >= 0, "dupl.sigma must be >= 0"),
        (min(d.alpha_p, d.alpha_o) >= 0, "dupl.alpha_p and dupl.alpha_o must be >= 0"),
        (min(d.beta_p, d.beta_o) > 0, "dupl.beta_p and dupl.beta_o must be > 0"),
        (d.branch_schedule in ("linear", "constant"), "dupl.branch_schedule must be linear or constant"),
        (0 <= d.branch_prob <= 1, "dupl.branch_prob must be in [0, 1]"),
        (not d.view_per_rollout or d.variant == "released",
         "dupl.view_per_rollout needs dupl.variant: released (the paper generates G rollouts from one x')"),
        (0 <= f.accuracy_low < f.accuracy_high <= 1, "filters.accuracy_low and accuracy_high need 0 <= low < high <= 1"),
        (f.max_tries >= 1, "filters.max_tries must be >= 1"),
        (f.round_prompts >= 0, "filters.round_prompts must be >= 0"),
        (f.overlong_cache is None or 0 <= f.overlong_cache <= r.max_new_tokens,
         "filters.overlong_cache must be between 0 and rollout.max_new_tokens"),
        (ng.p_alpha > 0 and ng.R > 0, "noisy_grpo.p_alpha and noisy_grpo.R must be > 0"),
        (nr.t_max in range(1000), "noisy_rollout.t_max must be a DDPM step in 0..999"),
        (nr.schedule in ("sigmoid", "constant", "linear"), "noisy_rollout.schedule must be sigmoid, constant or linear"),
    ]
    if a.adv_estimator in ("drgrpo", "noisy_grpo", "dupl") and r.n < 2:
        checks.append((False, "rollout.n must be >= 2 for a group advantage (a group of one has no baseline)"))
    if r.plan == "noisy_rollout":
        n1, n2 = noisy_rollout_split(config)
        checks += [
            (n1 >= 0 and n2 >= 1, f"noisy_rollout.n1 must be >= 0 and noisy_rollout.n2 >= 1 (got {n1} and {n2} for rollout.n {r.n})"),
            (n1 + n2 == r.n, f"noisy_rollout.n1 + noisy_rollout.n2 ({n1} + {n2}) must equal rollout.n ({r.n})"),
        ]
    if r.plan == "noise_ladder" or a.adv_estimator == "noisy_grpo":
        levels = ng.levels
        checks += [
            (len(levels) >= 1 and all(0 <= x <= 1 for x in levels), "noisy_grpo.levels must be noise levels in [0, 1]"),
            (len(levels) >= 1 and r.n % len(levels) == 0,
             f"rollout.n ({r.n}) must be a multiple of the noise ladder length (noisy_grpo.levels has {len(levels)})"),
        ]
    if a.adv_estimator == "noisy_grpo":
        checks.append((r.plan == "noise_ladder", "algorithm.adv_estimator noisy_grpo needs rollout.plan noise_ladder (rows need noise levels)"))
    if a.adv_estimator == "dupl" or r.plan == "dupl":
        checks.append((a.adv_estimator == "dupl" and r.plan == "dupl",
                       "DUPL needs both rollout.plan: dupl and algorithm.adv_estimator: dupl"))
    if (p.gamma > 0 or p.eta2 > 0) and r.plan == "dupl" and d.variant == "paper":
        checks.append((False, "papo with DUPL's paper variant is not supported: noisy-branch rows are updated on T(x), not the original image"))
    required = {
        "dupl": (r.plan == "dupl", "recipe dupl (alias vogue) needs rollout.plan: dupl"),
        "noisy_grpo": (r.plan == "noise_ladder", "recipe noisy_grpo needs rollout.plan: noise_ladder"),
        "noisy_rollout": (r.plan == "noisy_rollout", "recipe noisy_rollout needs rollout.plan: noisy_rollout"),
        "papo_g": (p.gamma > 0, "recipe papo_g needs papo.gamma > 0"),
        "papo_d": (p.gamma > 0, "recipe papo_d needs papo.gamma > 0"),
        "dapo": (f.dynamic_sampling, "recipe dapo needs filters.dynamic_sampling: true"),
    }
    if canonical_recipe(config.recipe) in required:
        checks.append(required[canonical_recipe(config.recipe)])
    return checks


TOKEN_METRICS = ("none", "k3", "abs_log_ratio", "kl_full", "vepo")
POLICY_LOSSES = ("ppo", "gspo", "sequence_sum", "cispo")


def _token_checks(config: Config) -> list[tuple[bool, str]]:
    """Checks of the token-level sections (token_signal, token_select, token_scale, dvrp, policy_loss) and rloo."""
    sig, sel, sca, dv, pl, a = (config.token_signal, config.token_select, config.token_scale, config.dvrp,
                                config.policy_loss, config.algorithm)
    fractions = [(name, x) for name, x in (("signal_fraction", sel.signal_fraction),
                                          ("entropy_fraction", sel.entropy_fraction)) if x is not None]
    checks = [
        (sig.metric in TOKEN_METRICS, f"token_signal.metric must be one of {', '.join(TOKEN_METRICS)}, got {sig.metric!r}"),
        (sig.chunk_rows >= 1, "token_signal.chunk_rows must be >= 1"),
        (0.0 <= sig.vepo_alpha <= 1.0, "token_signal.vepo_alpha must be in [0, 1]"),
        *[(0.0 < x <= 1.0, f"token_select.{name} must be in (0, 1] or null, got {x}") for name, x in fractions],
        (sel.granularity in ("response", "batch"), f"token_select.granularity must be response or batch, got {sel.granularity!r}"),
        (sel.normalize in ("all", "selected"), f"token_select.normalize must be all or selected, got {sel.normalize!r}"),
        (sel.signal_weight >= 0 and sel.entropy_weight >= 0,
         "token_select.signal_weight and entropy_weight must be >= 0 (a weight multiplies the advantage)"),
        (0.0 < sel.entropy_top_p <= 1.0, "token_select.entropy_top_p must be in (0, 1]"),
        (sca.method in ("none", "vppo", "pgpo"), f"token_scale.method must be none, vppo or pgpo, got {sca.method!r}"),
        (0.0 <= sca.vppo_min <= 1.0, "token_scale.vppo_min must be in [0, 1]"),
        (sca.vppo_scope in ("minibatch", "rollout"), f"token_scale.vppo_scope must be minibatch or rollout, got {sca.vppo_scope!r}"),
        (0.0 < sca.pgpo_threshold < 1.0, "token_scale.pgpo_threshold must be in (0, 1)"),
        (sca.pgpo_boost >= 0 and sca.pgpo_low_floor >= 0, "token_scale.pgpo_boost and pgpo_low_floor must be >= 0"),
        (sca.pgpo_threshold_mode in ("absolute", "quantile"),
         f"token_scale.pgpo_threshold_mode must be absolute or quantile, got {sca.pgpo_threshold_mode!r}"),
        (dv.robustness_coef >= 0 and dv.entropy_coef >= 0, "dvrp.robustness_coef and dvrp.entropy_coef must be >= 0"),
        (0 <= dv.t_init <= 999 and dv.t_max in range(1000), "dvrp.t_init and dvrp.t_max must be DDPM steps in 0..999"),
        (pl.type in POLICY_LOSSES, f"policy_loss.type must be one of {', '.join(POLICY_LOSSES)}, got {pl.type!r}"),
        (pl.cispo_max_ratio > 0, "policy_loss.cispo_max_ratio must be > 0"),
        (math.isfinite(pl.sampled_entropy_coef), "policy_loss.sampled_entropy_coef must be finite"),
    ]
    view = sig.view
    if view.name != "no_image":
        from perceptrl.vision.views import make_view

        try:
            make_view(view.name, **view.params())
        except (TypeError, ValueError) as err:
            checks.append((False, f"token_signal.view: {err} (or no_image: the image removed)"))
    uses_signal = sel.signal_fraction is not None or sca.method != "none"
    if uses_signal:
        checks.append((sig.metric != "none", "token_select.signal_fraction and token_scale need token_signal.metric (k3, "
                                             "abs_log_ratio, kl_full or vepo)"))
    weighted = uses_signal or sel.entropy_fraction is not None
    if weighted:
        checks += [
            (pl.type in ("ppo", "cispo"), f"token selection and scaling weigh each token's advantage: policy_loss.type "
                                          f"{pl.type!r} has one ratio per sequence; use ppo or cispo"),
            (config.rollout.plan != "dupl" and a.adv_estimator != "dupl",
             "token selection and scaling are not supported with DUPL (its shaper already makes per-token advantages)"),
        ]
    if pl.type in ("gspo", "sequence_sum"):
        checks.append((a.dual_clip_c is None, f"policy_loss.type {pl.type} clips one ratio per sequence and has no dual "
                                              "clip: set algorithm.dual_clip_c: null"))
    required = {
        "vppo": (sig.metric != "none" and sel.signal_fraction is not None, "recipe vppo needs token_signal.metric and "
                                                                           "token_select.signal_fraction"),
        "pgpo": (sca.method == "pgpo", "recipe pgpo needs token_scale.method: pgpo"),
        "tor": (sel.signal_fraction is not None or sel.entropy_fraction is not None,
                "recipe tor needs token_select.signal_fraction or entropy_fraction"),
        "vepo": (sig.metric == "vepo", "recipe vepo needs token_signal.metric: vepo"),
        "dvrp": (dv.robustness_coef > 0, "recipe dvrp needs dvrp.robustness_coef > 0"),
        "gspo": (pl.type == "gspo", "recipe gspo needs policy_loss.type: gspo"),
        "cispo": (pl.type == "cispo", "recipe cispo needs policy_loss.type: cispo"),
        "rloo": (a.adv_estimator == "rloo", "recipe rloo needs algorithm.adv_estimator: rloo"),
    }
    if config.recipe in required:
        checks.append(required[config.recipe])
    if a.adv_estimator == "rloo":
        checks.append((a.adv_scale in ("none", "batch"), "algorithm.adv_estimator rloo takes adv_scale none (the "
                                                          "leave-one-out advantage) or batch (TRL's normalize_advantages)"))
        checks.append((config.rollout.n >= 2, "rollout.n must be >= 2 for RLOO (a group of one has no baseline)"))
    return checks


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
