"""Evaluate a model from a config: which samples, which model, where the outputs go.

``evaluate_model(config, settings)`` is what ``perceptrl eval`` runs; call it from code (e.g. a
comparison over seeds) with a loaded ``Config`` and optionally an already-loaded ``Policy``::

    from perceptrl.config import load_config
    from perceptrl.eval.pipeline import evaluate_model
    from perceptrl.eval.runner import EvalSettings

    config = load_config(None, ["model.path=runs/grpo-s0/final", "data.families=[count,pope]"])
    result = evaluate_model(config, EvalSettings(k=8, temperature=1.0), output_dir="runs/grpo-s0/eval")
    result.metrics["accuracy"], result.metrics["avg@8/family/count"]

Samples: ``data.val_files`` if set (every valid row, or the first ``n_per_family`` of each
family), otherwise the built-in suite's fixed test set (``SyntheticTask.test_set``) for
``data.families`` (``all`` = every family), ``data.difficulty`` and ``data.image_size``, with
``n_per_family`` items per family (default ``data.val_per_family``, the same items the training
loop evaluates on, so the greedy accuracy here equals the training run's final ``accuracy``).
A config with ``data.train_files`` but no ``data.val_files`` is refused: evaluation never reads
training rows.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from perceptrl.config import Config, ConfigError, load_config
from perceptrl.data.types import Sample
from perceptrl.train.heldout import PolicyGenerator
from perceptrl.eval.report import write_outputs
from perceptrl.eval.runner import EvalResult, EvalSettings, run_evaluation

__all__ = [
    "default_output_dir",
    "evaluate_model",
    "find_run_config",
    "load_eval_samples",
    "model_folder",
]

log = logging.getLogger(__name__)


def is_tiny(path: str) -> bool:
    return path == "tiny" or path.startswith("tiny:")


def model_folder(path: str | Path) -> Path:
    """An HF model folder: ``path`` itself, or ``path/final`` for a training run's output folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    raise FileNotFoundError(f"{path}: not a model folder (no config.json) nor a run folder with final/config.json")


def find_run_config(model_path: str | Path) -> Path | None:
    """The perceptrl ``config.yaml`` of the run that saved ``model_path`` (in it or its parent)."""
    model_path = Path(model_path)
    for candidate in (model_path / "config.yaml", model_path.parent / "config.yaml"):
        if candidate.is_file():
            try:
                load_config(candidate)
            except ConfigError as err:
                log.warning("ignoring %s: not a perceptrl config (%s)", candidate, err)
                continue
            return candidate
    return None


def _families(data_cfg) -> list[str]:
    from perceptrl.data.synthetic import FAMILIES

    families = list(data_cfg.families)
    if families == ["all"]:
        return list(FAMILIES)
    return families


def _cap_per_family(samples: list[Sample], cap: int) -> list[Sample]:
    taken: Counter = Counter()
    kept = []
    for s in samples:
        if taken[s.family] < cap:
            taken[s.family] += 1
            kept.append(s)
    return kept


def load_eval_samples(data_cfg, n_per_family: int | None = None) -> tuple[list[Sample], dict[str, Any]]:
    """The samples to evaluate on and a description of them (for the report)."""
    from perceptrl.data.synthetic import SUITE_VERSION, SyntheticTask, samples_digest

    if n_per_family is not None and n_per_family < 1:
        raise ConfigError(f"n_per_family must be >= 1, got {n_per_family}")
    if data_cfg.val_files:
        from perceptrl.data.files import load_samples, parse_file_list

        samples = load_samples(data_cfg.val_files, data_cfg)
        if n_per_family is not None:
            samples = _cap_per_family(samples, n_per_family)
        desc = {
            "source": "files",
            "files": [str(p) for p in parse_file_list(data_cfg.val_files)],
            "n_per_family": n_per_family,
            "families": sorted({s.family for s in samples}),
        }
    elif data_cfg.train_files:
        raise ConfigError(
            "data.train_files is set but data.val_files is not: evaluation never uses training rows; "
            "pass data.val_files=... (or data.train_files=null to use the built-in suite)"
        )
    else:
        families = _families(data_cfg)
        n = data_cfg.val_per_family if n_per_family is None else n_per_family
        try:
            task = SyntheticTask(families, difficulty=data_cfg.difficulty, image_size=data_cfg.image_size,
                                 decontaminate=False)
            samples = task.held_out_set(n, data_cfg.val_split)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None
        desc = {
            "source": "suite",
            "suite_version": SUITE_VERSION,
            "families": families,
            "difficulty": data_cfg.difficulty,
            "image_size": data_cfg.image_size,
            "n_per_family": n,
            "split": data_cfg.val_split,
        }
    desc["template"] = data_cfg.template
    desc["system_prompt"] = data_cfg.system_prompt
    desc["n_samples"] = len(samples)
    desc["samples_sha256"] = samples_digest(samples)
    return samples, desc


def _data_tag(data_cfg) -> str:
    from perceptrl.data.synthetic import FAMILIES

    if data_cfg.val_files:
        from perceptrl.data.files import parse_file_list

        paths = parse_file_list(data_cfg.val_files)
        more = f"-and-{len(paths) - 1}-more" if len(paths) > 1 else ""
        return f"files-{paths[0].stem}{more}"
    families = _families(data_cfg)
    name = "all" if set(families) == set(FAMILIES) else "-".join(families)
    return f"suite-{name}-d{data_cfg.difficulty}"


def default_output_dir(config: Config) -> Path:
    """``<run>/eval/<model folder name>-<data>`` next to a model folder; ``runs/eval/...`` for tiny."""
    path = config.model.path
    tag = _data_tag(config.data)
    if is_tiny(path):
        return Path("runs") / "eval" / f"{path.replace(':', '-')}-s{config.model.tiny_seed}-{tag}"
    folder = Path(path)
    return folder.parent / "eval" / f"{folder.name}-{tag}"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("perceptrl", "torch", "transformers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out[name] = None
    return out


def evaluate_model(
    config: Config,
    settings: EvalSettings | None = None,
    policy=None,
    output_dir: str | Path | None = None,
    n_per_family: int | None = None,
    progress: Callable[[str], None] | None = None,
    run_config: str | Path | None = None,
) -> EvalResult:
    """Load the samples and (unless given) the policy of ``config``, evaluate, and write the
    outputs to ``output_dir`` (nothing is written when it is None).

    ``settings.max_new_tokens`` defaults to ``config.rollout.max_new_tokens`` and
    ``settings.batch_size`` to 64 prompts per generate call.
    """
    import torch

    from perceptrl.models.loading import load_policy
    from perceptrl.rewards import RewardFunction, get_template

    settings = dataclasses.replace(settings) if settings is not None else EvalSettings()
    if settings.max_new_tokens is None:
        settings.max_new_tokens = config.rollout.max_new_tokens
    if settings.batch_size is None:
        settings.batch_size = 64
    if settings.temperature is None:
        settings.temperature = 1.0
    if settings.top_p is None:
        settings.top_p = 1.0
    if settings.max_new_tokens < 1 or settings.batch_size < 1:
        raise ConfigError("max_new_tokens and batch_size must be >= 1")
    if settings.temperature <= 0 or not 0 < settings.top_p <= 1:
        raise ConfigError("temperature must be > 0 and top_p in (0, 1]")
    settings.resolved_pass_ks()
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)

    samples, data_desc = load_eval_samples(config.data, n_per_family)
    template = get_template(config.data.template)
    reward_fn = RewardFunction(config.data.template, config.reward.accuracy_weight, config.reward.format_weight)
    if policy is None:
        if progress:
            progress(f"loading model {config.model.path}")
        policy = load_policy(config.model, config.data.system_prompt)
        policy.set_pixel_bounds(config.data.min_pixels, config.data.max_pixels)  # as the training loops do
    generator = PolicyGenerator(policy, template, settings.max_new_tokens, settings.batch_size,
                                settings.temperature, settings.top_p)
    result = run_evaluation(samples, generator, reward_fn, settings, progress=progress)
    model_desc: dict[str, Any] = {
        "path": config.model.path,
        "dtype": config.model.dtype,
        "n_parameters": int(sum(p.numel() for p in policy.model.parameters())),
        "run_config": str(run_config) if run_config else None,
    }
    if is_tiny(config.model.path):
        model_desc["tiny_seed"] = config.model.tiny_seed
    report = result.report
    # Put the descriptive sections first in the JSON.
    result.report = {"schema_version": report["schema_version"], "kind": "perceptrl.eval", "model": model_desc,
                     "data": data_desc, **{k: v for k, v in report.items() if k != "schema_version"},
                     "versions": _versions()}
    if output_dir is not None:
        from perceptrl.config import save_config

        paths = write_outputs(output_dir, result.report, result.records)
        save_config(config, Path(output_dir) / "eval_config.yaml")
        result.report["outputs"] = {k: str(v) for k, v in paths.items()}
    return result
