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
    system_prompt: str | None = None
    answer_type_key: str = "answer_type"  # optional column with each row's answer type (default "math")
    id_key: str = "id"  # optional column with unique row ids (default id: "<file stem>-<row>")
    image_dir: str | None = None  # root of relative image paths; images must stay inside (default: data file's folder)
    on_bad_sample: str = "error"  # error | skip: what to do with a malformed row of a data file
    max_prompt_chars: int = 8192  # longest problem (and answer) text accepted from data files, in characters
    max_image_pixels: int = 50_000_000  # largest image (width x height) accepted from data files


@dataclass
class RolloutConfig:
    n: int = 8  # completions per prompt (G)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    plan: str = "clean"  # rollout plan: clean | noisy_rollout | noise_ladder | dupl (ALGORITHMS.md section 8)
    batch_invariant: bool = True  # each completion draws its own sampling noise (same samples on any process count)
    engine: str = "hf"  # hf (transformers generation) | vllm (GPU only: pip install perceptrl[vllm])


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
    round_prompts: int = 0  # prompts generated per round (0 = train.prompts_per_step)
    overlong_mask: bool = False  # take truncated completions out of the loss
    overlong_penalty: bool = False  # add DAPO's soft length punishment to the reward
    overlong_cache: int | None = None  # L_cache of the punishment, in tokens (None = 20% of rollout.max_new_tokens)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 50
    seed: int = 0
    lr: float = 1e-5
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    prompts_per_step: int = 8
    micro_batch_size: int = 64  # sequences per forward/backward in the update
    ppo_epochs: int = 1
    log_every: int = 1
    eval_every: int = 0  # 0 = only before and after training
    save_final: bool = True
    save_steps: int = 0  # write a checkpoint every N optimizer steps (0 = never)
    save_total_limit: int = 2  # keep only the newest N checkpoints
    resume: str = "auto"  # auto (newest complete checkpoint in output_dir, if any) | none | a checkpoint path
    max_bad_steps: int = 3  # stop after this many consecutive steps with a non-finite loss, reward or gradient
    progress: bool = True
    deterministic: bool = False
    num_threads: int = 0  # 0 = leave torch's default


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


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config):
    """Build a config from an optional YAML file and ``key.path=value`` overrides."""
    raw: dict = read_yaml(path) if path else {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
    try:
        config = _build(cls, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    validate(config)
    return config


def validate(config: Config) -> None:
    """Refuse values that would train silently wrong."""
    t, a, r = config.train, config.algorithm, config.rollout
    checks = [
        (t.lr > 0, "train.lr must be > 0"),
        (t.max_steps >= 0, "train.max_steps must be >= 0"),
        (t.prompts_per_step >= 1, "train.prompts_per_step must be >= 1"),
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
    checks += _data_checks(config)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _data_checks(config: Config) -> list[tuple[bool, str]]:
    """Names the data section refers to (checked here, before any model is loaded)."""
    from perceptrl.rewards.templates import PROMPT_TEMPLATES

    d = config.data
    checks = [
        (d.on_bad_sample in ("error", "skip"), f"data.on_bad_sample must be error or skip, got {d.on_bad_sample!r}"),
        (d.template in PROMPT_TEMPLATES,
         f"data.template: unknown prompt template {d.template!r}; valid names: {', '.join(sorted(PROMPT_TEMPLATES))}"),
    ]
    checks.append((0 <= d.label_noise < 1, f"data.label_noise must be in [0, 1), got {d.label_noise}"))
    checks.append((not (d.label_noise and d.train_files), "data.label_noise applies to the built-in suite only"))
    if not d.train_files:  # the built-in synthetic suite
        from perceptrl.data.synthetic import FAMILIES

        unknown = [name for name in d.families if name not in FAMILIES]
        checks.append((not unknown, f"data.families: unknown synthetic families {unknown}; known: {', '.join(FAMILIES)}"))
    return checks


RECIPE_ALIASES = {"vogue": "dupl"}  # VOGUE (arXiv 2510.01444 v1) is DUPL's first name, one codebase
PLANS = ("clean", "noisy_rollout", "noise_ladder", "dupl")
ADV_ESTIMATORS = ("grpo", "drgrpo", "noisy_grpo", "dupl")


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


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
