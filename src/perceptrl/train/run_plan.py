"""What a new run does with an output folder that may hold another run: the decision table.

``config.yaml`` in the folder is the config of the run that owns it, ``run.json`` its record. A new
run resumes the newest checkpoint only when its config differs from the saved one in nothing but
:data:`RESUMABLE_CHANGES`; a finished run is reported, or continued with a larger step budget; a
different run is refused naming the keys that differ (``train.resume=force`` and
``train.overwrite=true`` say otherwise); a checkpoint past ``train.max_steps`` is refused.
``plan_start`` is a pure function of the config and the folder's state (docs/RELIABILITY.md).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perceptrl.config import Config, ConfigError, apply_aliases
from perceptrl.train.checkpoint import PREFIX, STATE_FILE, clean_partial, is_complete, list_checkpoints

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILES = {"train": "metrics.jsonl", "sft": "sft_metrics.jsonl"}
# Config keys that may change between a run and its resumption: they change how long it runs, what
# is logged, how often it is evaluated and checkpointed, and where it executes; not what it computes.
RESUMABLE_CHANGES = frozenset({
    "train.max_steps", "train.output_dir", "train.resume", "train.overwrite", "train.report_to", "train.progress",
    "train.log_every", "train.eval_every", "train.save_steps", "train.save_total_limit", "train.save_final",
    "train.max_bad_steps", "train.num_threads", "model.device",
})
RESUME_MODES = ("auto", "none", "force")


class RunDirError(ValueError):
    """The output folder cannot be used as asked (another run's, finished, not writable, ...)."""


def check_resume_path(config: Config) -> None:
    """``train.resume=<folder>``: a complete checkpoint not past ``train.max_steps``."""
    t = config.train
    if t.resume in RESUME_MODES:
        return
    path = Path(t.resume)
    if not is_complete(path):
        raise RunDirError(f"train.resume: '{t.resume}' is not a complete checkpoint folder "
                          f"(needs model.safetensors, trainer_state.pt and {STATE_FILE})")
    step = step_of(path)
    if step > t.max_steps:
        raise RunDirError(f"train.resume: {path} is at step {step}, past train.max_steps = {t.max_steps}")



def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _plain(config: Config) -> dict[str, Any]:
    """The config as YAML would read it back (lists, plain floats), flattened to dotted keys."""
    return _flatten(yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False)))


def config_changes(saved: dict, config: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every key that differs, except :data:`RESUMABLE_CHANGES`.
    A key the saved config lacks (written by an older perceptrl) counts as its default; old key names
    are read under their current ones."""
    try:
        saved = apply_aliases(copy.deepcopy(saved), CONFIG_FILE)
    except ConfigError:  # both an old and a new name: compare as written
        pass
    old, new, defaults = _flatten(saved), _plain(config), _plain(Config())
    changes = {}
    for key, value in new.items():
        if key in RESUMABLE_CHANGES:
            continue
        before = old.get(key, defaults.get(key))
        if before != value and not _same_number(before, value):
            changes[key] = (before, value)
    return changes


def _same_number(a: Any, b: Any) -> bool:
    return (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            and not isinstance(b, bool) and math.isclose(a, b, rel_tol=0, abs_tol=0))


# Named first when a refusal lists what differs: what tells one run from another at a glance.
_FIRST = ("recipe", "model.path", "data.train_files", "train.seed", "train.lr")


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    """``recipe 'grpo' -> 'papo_g', train.lr 5e-05 -> 0.0001 and 3 more keys``."""
    keys = sorted(changes, key=lambda k: _FIRST.index(k) if k in _FIRST else len(_FIRST))
    parts = [f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in keys[:limit]]
    more = len(keys) - limit
    return ", ".join(parts) + (f" and {more} more key{'s' if more > 1 else ''}" if more > 0 else "")


def step_of(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        suffix = checkpoint.name[len(PREFIX):]
        return int(suffix) if suffix.isdigit() else 0


@dataclass
class FolderState:
    """What a run folder holds before a new run starts in it."""

    path: Path
    checkpoints: list[Path] = field(default_factory=list)  # complete ones, oldest first
    saved_config: dict | None = None  # config.yaml, if readable
    record: dict = field(default_factory=dict)  # run.json
    has_final: bool = False
    has_metrics: bool = False

    @property
    def finished(self) -> bool:
        if self.record:
            return self.record.get("status") == "finished"
        return self.has_final  # written by a perceptrl without run.json: final/ marks the end

    @property
    def empty(self) -> bool:
        return not (self.checkpoints or self.has_final or self.has_metrics or self.record)

    @property
    def finished_step(self) -> int | None:
        step = self.record.get("step")
        return step if isinstance(step, int) else None


def inspect_folder(path: Path) -> FolderState:
    state = FolderState(path)
    if not path.is_dir():
        return state
    clean_partial(path)  # finish what a killed write left (a checkpoint being replaced comes back)
    state.checkpoints = list_checkpoints(path)
    config_file = path / CONFIG_FILE
    if config_file.is_file():
        try:
            saved = yaml.safe_load(config_file.read_text())
            state.saved_config = saved if isinstance(saved, dict) else None
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            state.saved_config = None
    try:
        record = json.loads((path / RUN_FILE).read_text())
        state.record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        state.record = {}
    state.has_final = (path / "final").is_dir()
    state.has_metrics = any((path / name).is_file() for name in METRICS_FILES.values())
    return state


@dataclass
class Plan:
    """What a new run does with its folder."""

    checkpoint: Path | None = None  # resume from here
    step: int = 0  # the step it continues from
    replace: bool = False  # delete the previous run's files first (train.overwrite, or stale leftovers)
    forced: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # differences accepted by resume=force / path
    done: dict | None = None  # already finished, nothing to do: the recorded result
    notes: list[str] = field(default_factory=list)  # said on the console when the run begins


def plan_start(config: Config, state: FolderState, kind: str = "train") -> Plan:
    """Decide how a run of ``config`` starts in a folder holding ``state``; raises RunDirError."""
    t = config.train
    where = f"train.output_dir {state.path}"
    overwrite = "train.overwrite=true"
    changes = config_changes(state.saved_config, config) if state.saved_config is not None else {}
    mode = t.resume if kind == "train" else "auto"
    if mode not in RESUME_MODES:
        return _plan_resume_path(config, state, changes)
    if state.empty:
        return Plan()
    replace = Plan(replace=True, notes=[f"{overwrite}: deleting the previous run in {state.path} and starting over"])
    latest = state.checkpoints[-1] if state.checkpoints else None
    latest_step = step_of(latest) if latest is not None else None

    if state.saved_config is None and (latest is not None or state.finished):
        if t.overwrite:
            return replace
        raise RunDirError(f"{where} holds a run without a readable {CONFIG_FILE}: cannot tell whether it is this "
                          f"one; set {overwrite} to replace it, or choose another train.output_dir")
    # Another run's folder (resume=force accepts the differences when there is a checkpoint to continue).
    if changes and not (mode == "force" and latest is not None):
        if t.overwrite:
            return replace
        what = "checkpoints of a" if latest is not None else ("a finished" if state.finished else "files of a")
        hint = "train.resume=force to continue it anyway, " if latest is not None else ""
        raise RunDirError(f"{where} holds {what} different run ({describe_changes(changes)}); use another "
                          f"train.output_dir, {hint}or {overwrite} to replace it")
    if mode == "none":
        if latest is None and not state.finished:
            return Plan(replace=True)  # leftovers of an interrupted attempt without a checkpoint
        if t.overwrite:
            return replace
        held = f"checkpoints up to step {latest_step}" if latest is not None else "a finished run"
        raise RunDirError(f"{where} holds {held}; train.resume=none would start over and replace it: add "
                          f"{overwrite}, or choose another train.output_dir")
    if mode == "force" and latest is None:
        raise RunDirError(f"train.resume=force: {state.path} holds no complete checkpoint to resume")
    if latest is not None and latest_step > t.max_steps:
        if t.overwrite:
            return replace
        raise RunDirError(f"{latest}: step {latest_step} is past train.max_steps = {t.max_steps}; raise "
                          f"train.max_steps to at least {latest_step}, or {overwrite} to start over")
    if state.finished:
        if t.overwrite:
            return replace
        done_step = state.finished_step if state.finished_step is not None else latest_step
        if done_step == t.max_steps:
            if "after" in state.record and not changes:
                return Plan(done=state.record)
            raise RunDirError(f"{where} holds a run finished at step {done_step}: nothing to continue; raise "
                              f"train.max_steps to train further, or set {overwrite} to run it again")
        if done_step is not None and done_step > t.max_steps:
            raise RunDirError(f"{where} holds a run finished at step {done_step} > train.max_steps = {t.max_steps}; "
                              f"set {overwrite} to replace it, or choose another train.output_dir")
        if latest is None:
            raise RunDirError(f"{where} holds a finished run without a checkpoint to continue from (train.save_steps); "
                              f"set {overwrite} to replace it, or choose another train.output_dir")
    if latest is None:
        return Plan(replace=True)  # leftovers of an interrupted attempt without a checkpoint: start again
    plan = Plan(checkpoint=latest, step=latest_step, forced=changes)
    if changes:  # resume=force
        plan.notes.append(f"train.resume=force: resuming although the config differs ({describe_changes(changes)})")
    plan.notes.append(f"resuming from {latest} at step {latest_step} of {t.max_steps}")
    return plan


def _plan_resume_path(config: Config, state: FolderState, changes: dict) -> Plan:
    """``train.resume=<checkpoint folder>``: an explicit choice, so a config difference is only reported."""
    t = config.train
    check_resume_path(config)
    path = Path(t.resume)
    step = step_of(path)
    inside = path.resolve().parent == state.path.resolve()
    if inside:
        newer = [c for c in state.checkpoints if step_of(c) > step]
        if newer and not t.overwrite:
            raise RunDirError(f"train.resume: {state.path} holds newer checkpoints than {path.name} "
                              f"({', '.join(c.name for c in newer)}) that a later automatic resume would pick: add "
                              "train.overwrite=true to delete them, or resume into another train.output_dir")
        plan = Plan(checkpoint=path, step=step, forced=changes)
        if changes:
            plan.notes.append(f"train.resume: {path} was made with another config ({describe_changes(changes)})")
        plan.notes.append(f"resuming from {path} at step {step} of {t.max_steps}"
                          + (f" (deleting {', '.join(c.name for c in newer)})" if newer else ""))
        return plan
    if not state.empty:
        if not t.overwrite:
            raise RunDirError(f"train.output_dir {state.path} already holds another run; resume into an empty "
                              "folder, or add train.overwrite=true to replace it")
    plan = Plan(checkpoint=path, step=step, replace=not state.empty)
    source_config = path.parent / CONFIG_FILE
    if source_config.is_file():
        try:
            plan.forced = config_changes(yaml.safe_load(source_config.read_text()) or {}, config)
        except (OSError, yaml.YAMLError):
            pass
    if plan.forced:
        plan.notes.append(f"train.resume: {path} was made with another config ({describe_changes(plan.forced)})")
    plan.notes.append(f"resuming from {path} at step {step} of {t.max_steps}")
    return plan
