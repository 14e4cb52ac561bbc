"""``perceptrl train|sft CONFIG --dry-run``: check a config and print what the run would do, without weights.

The model is built on the meta device from its ``config.json``: ``model.path``'s folder, the shipped
warm start, the tiny test model, or, when ``model.path`` is a hub name such as
``Qwen/Qwen2.5-VL-7B-Instruct`` that is not a local folder, the public config shipped in
``perceptrl/assets/configs/<name>/config.json`` (config only, no weights). The plan lists the rollout
steps, optimizer steps per rollout step, tokens per step, parameter counts (total and trainable, vision
tower frozen or not) and the GPU memory per device on 1, 2, 4 and 8 GPUs under FSDP2 with and without
CPU offload, term by term (``perceptrl.models.memory`` says what each term is and what it assumes).
Nothing is downloaded, no data file is read (only checked for existence), nothing is written.
"""

from __future__ import annotations

import functools
import glob
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from perceptrl.config import Config, ConfigError
from perceptrl.models import memory
from perceptrl.models.memory import GIB, ModelShape, Workload, estimate_memory, host_offload_bytes

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "configs"
GPU_COUNTS = (1, 2, 4, 8)
TEXT_TOKENS = 256  # prompt text per completion assumed beside the image tokens (chat template, question, format prompt)
QWEN_VL_MAX_PIXELS = 12_845_056  # the Qwen2-VL / Qwen2.5-VL image processor's default max_pixels (16384 x 28 x 28)
QWEN_VL_MIN_PIXELS = 3_136  # its default min_pixels (4 x 28 x 28)
VISION_MODULE_NAMES = ("visual", "vision_tower", "vision_model")  # the vision tower's attribute in each family


def shipped_configs() -> list[str]:
    return sorted(p.parent.name for p in SHIPPED_CONFIGS.glob("*/config.json"))


def resolve_model_config(path: str) -> tuple[Path | None, str]:
    """The ``config.json`` the plan builds the model from, and a description of where it came from.

    ``None`` for the tiny test models (built in code). A local folder wins over a shipped config.
    """
    if path == "tiny" or path.startswith("tiny:"):
        return None, "the offline test model, built in code"
    if path == "warmstart":
        from perceptrl.models.loading import WARMSTART_DIR

        return WARMSTART_DIR / "config.json", f"the shipped warm start ({WARMSTART_DIR})"
    folder = Path(path)
    if (folder / "config.json").is_file():
        return folder / "config.json", f"{folder}/config.json"
    shipped = SHIPPED_CONFIGS / path.rstrip("/").split("/")[-1] / "config.json"
    if shipped.is_file():
        return shipped, (f"shipped public config {shipped.parent.name}/config.json (no weights: download the model "
                         f"and set model.path to its folder to train)")
    raise ConfigError(f"model.path: '{path}' is not a local model folder (no config.json) and no shipped config "
                      f"matches it (shipped: {', '.join(shipped_configs())})")


@functools.lru_cache(maxsize=8)
def _meta_model(config_file: str, dtype: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from perceptrl.models.loading import DTYPES

    hf_config = AutoConfig.from_pretrained(str(Path(config_file).parent), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config, dtype=DTYPES[dtype],
                                                        trust_remote_code=trust_remote_code)
    return model


def build_model(config: Config):
    """The model of ``config.model`` without weights (meta device; the tiny test models are built for real)."""
    config_file, source = resolve_model_config(config.model.path)
    if config_file is None:
        from perceptrl.models.families import build_tiny_family

        model, _ = build_tiny_family(config.model.path.partition(":")[2] or "qwen2_5_vl", seed=config.model.tiny_seed)
        return model, source
    try:
        return _meta_model(str(config_file), config.model.dtype, config.model.trust_remote_code), source
    except (ValueError, KeyError, OSError) as err:  # not an image-text-to-text config transformers knows
        raise ConfigError(f"model.path: cannot build a model from {config_file}: {err}") from None


def _get(cfg, names: tuple[str, ...], default=0):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def _is_vision(name: str) -> bool:
    return any(part in VISION_MODULE_NAMES for part in name.split("."))


def lora_parameters(model, lora_cfg) -> int:
    """Parameters LoRA adds: ``r x (in + out)`` for every targeted ``Linear`` (vision layers if asked)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora_cfg.target_modules:
            if _is_vision(name) and not lora_cfg.include_vision:
                continue
            total += lora_cfg.r * (module.in_features + module.out_features)
    return total


def model_shape(model, config: Config) -> ModelShape:
    """Counts from the built model, widths from its config; freezing and LoRA as ``config.model`` asks."""
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    vision = sum(p.numel() for n, p in named.items() if _is_vision(n))
    unit_classes = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in unit_classes]
    unit_sizes = [sum(p.numel() for p in m.parameters()) for m in units]
    lora = config.model.lora.enabled  # perceptrl train and perceptrl sft both honour model.lora
    freeze = config.model.freeze_vision_tower
    trainable = lora_parameters(model, config.model.lora) if lora else total - (vision if freeze else 0)
    if lora:
        total += trainable
    hf = model.config
    text = getattr(hf, "text_config", hf)
    vis = getattr(hf, "vision_config", None)
    hidden = _get(text, ("hidden_size",))
    heads = _get(text, ("num_attention_heads",), 1)
    head_dim = _get(text, ("head_dim",), hidden // heads)
    return ModelShape(
        total_params=total, trainable_params=trainable, vision_params=vision,
        root_params=total - sum(unit_sizes) - (trainable if lora else 0),
        largest_unit_params=max(unit_sizes, default=0),
        layers=_get(text, ("num_hidden_layers",)), hidden=hidden,
        kv_dim=_get(text, ("num_key_value_heads",), heads) * head_dim,
        intermediate=_get(text, ("intermediate_size",)), vocab=_get(text, ("vocab_size",)),
        vision_layers=_get(vis, ("depth", "num_hidden_layers")), vision_hidden=_get(vis, ("hidden_size", "embed_dim")),
        vision_intermediate=_get(vis, ("intermediate_size",)) or 4 * _get(vis, ("embed_dim", "hidden_size")),
        patch_size=_get(vis, ("patch_size",), 14), merge_size=_get(vis, ("spatial_merge_size",), 1),
        vision_trainable=(vision > 0 and not freeze and not lora) or (lora and config.model.lora.include_vision),
        lora=lora,
    )


@dataclass
class Plan:
    """What ``--dry-run`` prints (``format_plan``)."""

    command: str
    source: str
    config: Config
    model_source: str
    shape: ModelShape
    completions_per_prompt: int
    pixels: int
    image_tokens: int
    prompt_tokens: int
    estimates: list = field(default_factory=list)
    host_offload: int = 0  # bytes of host memory per node for the offloaded shards
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def optimizer_steps_per_rollout_step(self) -> int:
        if self.command == "sft":
            return 1
        t = self.config.train
        batch = self.config.data.rollout_batch_size
        return (batch // (t.global_batch_size or batch)) * t.ppo_epochs


def image_pixels(config: Config) -> tuple[int, str]:
    """Pixels of one image as the processor will see it (an upper bound for data files), and why."""
    d = config.data
    low = d.min_pixels or QWEN_VL_MIN_PIXELS
    if not d.train_files:
        return max(d.image_size**2, low), f"{d.image_size} x {d.image_size} px synthetic images"
    if d.max_pixels:
        return d.max_pixels, f"data.max_pixels {d.max_pixels:,}"
    return QWEN_VL_MAX_PIXELS, f"the processor's default max_pixels {QWEN_VL_MAX_PIXELS:,} (set data.max_pixels)"


def completions_per_prompt(config: Config, sft: bool) -> int:
    if sft:
        return 1
    from perceptrl.train.recipe import build_plan

    return sum(spec.count for spec in build_plan(config).gen_specs(1))


def make_plan(config: Config, command: str = "train", source: str = "") -> Plan:
    """Build the model without weights and work out the plan of ``config`` (see the module docstring)."""
    sft = command == "sft"
    model, model_source = build_model(config)
    shape = model_shape(model, config)
    per_prompt = completions_per_prompt(config, sft)
    pixels, pixel_note = image_pixels(config)
    image_tokens = max(1, pixels // (shape.patch_size * shape.merge_size) ** 2) if shape.vision_layers else 0
    prompt_tokens = image_tokens + TEXT_TOKENS
    if config.data.max_prompt_length:
        prompt_tokens = min(prompt_tokens, config.data.max_prompt_length)
    plan = Plan(command, source, config, model_source, shape, per_prompt, pixels, image_tokens, prompt_tokens)
    plan.notes.append(f"images: {pixel_note}; prompt = {image_tokens:,} image tokens + {TEXT_TOKENS} text tokens"
                      + (f", at most data.max_prompt_length {config.data.max_prompt_length:,}"
                         if config.data.max_prompt_length else ""))

    t, d = config.train, config.data
    gpu_counts = (1,) if sft else GPU_COUNTS
    for n in gpu_counts:
        for offload in ((False,) if n == 1 else (False, True)):
            plan.estimates.append(estimate_memory(shape, workload(config, shape, plan, n, sft), n, offload))
        if n > 1:
            plan.host_offload = host_offload_bytes(shape, workload(config, shape, plan, n, sft), n)  # same for any n
    if not sft:
        for n in GPU_COUNTS:
            for key, value in (("data.rollout_batch_size", d.rollout_batch_size), ("train.global_batch_size", t.global_batch_size)):
                if value and value % n:
                    plan.checks.append(f"{key} ({value}) does not divide by {n} GPUs: that layout is refused")
    for key in ("train_files", "val_files"):
        files = getattr(d, key)
        for name in ([files] if isinstance(files, str) else files or []):
            for part in str(name).split(","):
                if part.strip() and not glob.glob(part.strip()):
                    plan.checks.append(f"data.{key}: '{part.strip()}' is not a local file: download the dataset and "
                                       f"point data.{key} at its JSONL/parquet files")
    if sft:
        plan.notes.append("perceptrl sft runs in one process (perceptrl.train.sft): one GPU only; LoRA, "
                          "freeze_vision_tower and gradient checkpointing as model.* asks, as perceptrl train")
    return plan


def workload(config: Config, shape: ModelShape, plan: Plan, n_gpus: int, sft: bool) -> Workload:
    t, d, f = config.train, config.data, config.filters
    if sft:
        rows = d.rollout_batch_size
        return Workload(0, plan.prompt_tokens, config.rollout.max_new_tokens, min(t.micro_batch_size, rows),
                        plan.pixels, config.model.gradient_checkpointing, False, config.model.dtype, generates=False)
    round_prompts = (f.round_prompts or d.rollout_batch_size) if f.dynamic_sampling else d.rollout_batch_size
    gen_rows = math.ceil(round_prompts / n_gpus) * plan.completions_per_prompt
    if config.rollout.generation_batch_size:  # the HF engine generates at most this many at once
        gen_rows = min(gen_rows, config.rollout.generation_batch_size)
    mini_rows = math.ceil((t.global_batch_size or d.rollout_batch_size) / n_gpus) * plan.completions_per_prompt
    reference = config.algorithm.kl_beta > 0 and not shape.lora
    return Workload(gen_rows, plan.prompt_tokens, config.rollout.max_new_tokens, min(t.micro_batch_size, mini_rows),
                    plan.pixels, config.model.gradient_checkpointing, reference, config.model.dtype)


def _unit(plan: Plan) -> tuple[int, str]:
    """GiB, or MiB when every peak is below 1 GiB (the tiny models)."""
    return (GIB, "GiB") if max(e.peak for e in plan.estimates) >= GIB else (1024**2, "MiB")


def _fmt(value: int, unit: int) -> str:
    return f"{value / unit:.1f}"


COLUMNS = (("weights", "weights"), ("grads", "gradients"), ("adamw", "adamw_state"), ("cast", "autocast_copies"),
           ("ref", "reference_model"),
           ("gen_w", "rollout_weights"), ("kv", "kv_cache"), ("sample", "sampling_buffers"),
           ("units", "update_working_set"), ("act", "activations"), ("logp", "logprob_chunk"))


def _steps_lines(plan: Plan) -> list[str]:
    c = plan.config
    t, d, r = c.train, c.data, c.rollout
    if plan.command == "sft":
        rows = d.rollout_batch_size
        return [f"steps: {t.max_steps} supervised steps of {rows} prompts, one optimizer step each",
                f"tokens per step: at most {rows * r.max_new_tokens:,} target tokens ({rows} x {r.max_new_tokens}); "
                f"about {rows * (plan.prompt_tokens + r.max_new_tokens):,} in all with prompts"]
    rows = d.rollout_batch_size * plan.completions_per_prompt
    mini = t.global_batch_size or d.rollout_batch_size
    opt = plan.optimizer_steps_per_rollout_step
    return [
        f"rollout steps: {t.max_steps} (train.max_steps)",
        f"  per rollout step: {d.rollout_batch_size} prompts x {plan.completions_per_prompt} completions = {rows:,} "
        f"completions" + (", more rounds while dynamic sampling drops groups" if c.filters.dynamic_sampling else ""),
        f"optimizer steps per rollout step: {opt} ({d.rollout_batch_size} / {mini} prompts per mini-batch x "
        f"{t.ppo_epochs} epoch{'s' if t.ppo_epochs > 1 else ''}); {opt * t.max_steps:,} in all",
        f"tokens per rollout step: at most {rows * r.max_new_tokens:,} generated ({rows:,} x {r.max_new_tokens:,}); "
        f"prompts about {plan.prompt_tokens:,} tokens each; the update reads at most "
        f"{rows * (plan.prompt_tokens + r.max_new_tokens) * t.ppo_epochs:,}",
    ]


def _memory_lines(plan: Plan) -> list[str]:
    unit, name = _unit(plan)
    lines = [f"memory per GPU in {name} (estimate: perceptrl.models.memory; "
             + ("one process" if plan.command == "sft" else "FSDP2 over N processes") + ")",
             f"  {'GPUs':>4} {'offload':>7} " + " ".join(f"{col:>7}" for col, _ in COLUMNS)
             + f" | {'rollout':>7} {'update':>7} {'peak':>7}"]
    for est in plan.estimates:
        cells = " ".join(f"{_fmt(est.terms[key], unit):>7}" for _, key in COLUMNS)
        lines.append(f"  {est.n_gpus:>4} {'yes' if est.offload else 'no':>7} {cells} | "
                     f"{_fmt(est.rollout_peak, unit):>7} {_fmt(est.update_peak, unit):>7} {_fmt(est.peak, unit):>7}")
    lines.append("  columns: weights, gradients and AdamW state as stored (sharded over N); cast: bf16 copies autocast "
                 "keeps (one process); ref: reference model "
                 "(kl_beta > 0); gen_w: weights gathered for the rollout; kv: generation key/value cache; sample: "
                 "sampler buffers; units: FSDP2 units unsharded in the update; act: activations of one micro-batch; "
                 "logp: the head's logits and log-probs; rollout, update: the peaks of the two phases of a step")
    widest = next(e for e in reversed(plan.estimates) if not e.offload)
    phase = "rollout" if widest.rollout_peak >= widest.update_peak else "update"
    term = max((key for _, key in COLUMNS), key=lambda k: widest.terms[k])
    line = (f"  on {widest.n_gpus} GPU{'s' if widest.n_gpus > 1 else ''} the {phase} phase sets the peak; its largest "
            f"term is {term} ({_fmt(widest.terms[term], unit)} {name})")
    if term == "kv_cache":
        rows = workload(plan.config, plan.shape, plan, widest.n_gpus, False).generation_rows
        line += (f": the rollout generates {rows:,} completions at once, with their key/value cache preallocated "
                 f"(Policy._sample); rollout.generation_batch_size lowers it")
    lines.append(line)
    if plan.host_offload:
        lines.append(f"  offload: the shards of weights, gradients and AdamW state take "
                     f"{_fmt(plan.host_offload, GIB)} GiB of host memory per node")
    return lines


def _assumption_lines(plan: Plan) -> list[str]:
    c, r = plan.config, plan.config.rollout
    unit, name = _unit(plan)
    lines = ["assumptions:"]
    notes: dict[str, list[int]] = {}
    for est in plan.estimates:
        notes.setdefault(est.precision.note, []).append(est.n_gpus)
    for note, counts in notes.items():
        label = "1 GPU" if set(counts) == {1} else f"{min(counts)}-{max(counts)} GPUs"
        lines.append(f"  - {label}: {note}")
    lines.append(f"  - log-probs: computed inside the output head chunk by chunk (perceptrl.models.logits); keeping "
                 f"the micro-batch's whole logits instead would take {_fmt(full_logprob(plan), unit)} {name}")
    lines.append(f"  - update micro-batch: {plan_micro_rows(plan)} rows of {plan.prompt_tokens + r.max_new_tokens:,} "
                 f"tokens (train.micro_batch_size {c.train.micro_batch_size}), gradient checkpointing "
                 f"{'on' if c.model.gradient_checkpointing else 'off'}")
    lines.append("  - not counted: CUDA context and allocator slack (3-6 GB), communication buffers, evaluation")
    lines += [f"  - {note}" for note in plan.notes]
    return lines


def format_plan(plan: Plan) -> str:
    c, s = plan.config, plan.shape
    trained = "LoRA adapters only" if s.lora else (
        "vision tower frozen" if c.model.freeze_vision_tower else "vision tower trained")
    lines = [
        f"perceptrl {plan.command} --dry-run: {plan.source or '(no file)'} (recipe {c.recipe})",
        "config: valid",
        f"model: {c.model.path}: {plan.model_source}",
        f"  {s.layers} layers, hidden {s.hidden:,}, key/value width {s.kv_dim:,}, MLP {s.intermediate:,}, vocabulary "
        f"{s.vocab:,}; vision tower {s.vision_layers} blocks of {s.vision_hidden:,}, patch {s.patch_size}, merge "
        f"{s.merge_size}x{s.merge_size}; dtype {c.model.dtype}",
        f"  parameters: {s.total_params:,} total ({s.vision_params:,} in the vision tower); trainable "
        f"{s.trainable_params:,} ({trained})",
    ]
    lines += _steps_lines(plan) + _memory_lines(plan) + _assumption_lines(plan)
    if plan.checks:
        lines.append("checks:")
        lines += [f"  - {check}" for check in plan.checks]
    return "\n".join(lines)


def plan_micro_rows(plan: Plan) -> int:
    return workload(plan.config, plan.shape, plan, 1, plan.command == "sft").micro_batch_rows


def full_logprob(plan: Plan) -> int:
    rows = plan_micro_rows(plan)
    return memory.logprob_bytes(rows, plan.config.rollout.max_new_tokens, plan.shape.vocab, plan.shape.hidden,
                                path="full")


def dry_run(config: Config, command: str = "train", source: str = "") -> str:
    """Print the plan of ``config`` (for ``perceptrl train|sft --dry-run``) and return it."""
    text = format_plan(make_plan(config, command, source))
    print(text)
    return text
