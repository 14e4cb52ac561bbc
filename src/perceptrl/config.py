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
class ModelConfig:
    path: str = "tiny"  # HF folder, or "tiny" to build the offline test model
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False  # never on unless the user says so
    tiny_seed: int = 0  # initial weights when path == "tiny"


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
    image_size: int = 56
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


@dataclass
class RewardConfig:
    accuracy_weight: float = 0.9
    format_weight: float = 0.1


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"  # registry name in perceptrl.algorithms
    adv_scale: str = "group"  # group | batch | none (Dr.GRPO)
    adv_eps: float = 1e-6
    loss_agg_mode: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float | None = 3.0
    kl_beta: float = 0.0  # 0 loads no reference model
    kl_type: str = "k3"  # k1 | k2 | k3
    entropy_coef: float = 0.0  # bonus: subtract coef * mean full-vocabulary entropy


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
    recipe: str = "grpo"  # informational name of the recipe

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
    ]
    if a.adv_estimator in ("grpo", "group") and r.n < 2:
        checks.append((False, "rollout.n must be >= 2 for a group advantage (a group of one has no baseline)"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
