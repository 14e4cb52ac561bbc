"""A run's output folder: checked before any slow work, locked while the run owns it, prepared once
the model has loaded, and closed with a record and a model card.

- **Checked first** (:func:`check_output_path`, :func:`check_train_options`): ``train.output_dir``
  is a folder or can be made one, on a writable file system; ``train.resume`` and
  ``train.report_to`` are valid and the loggers asked for are installed.
- **Locked** (``perceptrl.train.output_lock``): a second run into the folder fails at once naming
  the holder; a lock left by a killed run is taken over.
- **Planned** (``perceptrl.train.run_plan``): resume, report, replace or refuse what the folder holds.
- **Prepared** (:meth:`RunDir.begin`): a replaced run's files are deleted, ``config.yaml`` written,
  the start recorded in ``run.json`` (time, command, pid, checkpoint resumed from, forced
  differences); **closed** (:meth:`RunDir.finish`): ``run.json`` says finished, with the held-out
  accuracy before and after, and ``final/README.md`` describes the model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from perceptrl.config import Config, ConfigError, save_config
from perceptrl.train.checkpoint import PREFIX, list_checkpoints
from perceptrl.train.command import command_line
from perceptrl.train.output_lock import FolderInUse, OutputLock, holder_text
from perceptrl.train.run_plan import (CONFIG_FILE, RESUME_MODES, RUN_FILE, Plan, RunDirError, check_resume_path,
                                      inspect_folder, plan_start, step_of)

__all__ = ["RunDir", "RunDirError", "FolderInUse", "check_output_path", "check_train_options"]

# What a run writes into its folder, besides the checkpoints: removed when it is replaced.
RUN_ENTRIES = ("final", "adapter", "metrics.jsonl", "sft_metrics.jsonl", "tensorboard", "wandb", "summary.json",
               "result.json", "eval", "eval_probe", RUN_FILE)
REPORTERS = ("jsonl", "tensorboard", "wandb")


def _say(message: str) -> None:
    print(f"[perceptrl] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Checks before any slow work
# ----------------------------------------------------------------------------------------------


def check_train_options(config: Config) -> None:
    """``train.resume``, ``train.report_to``: valid values, and the loggers asked for installed."""
    t = config.train
    if t.resume not in RESUME_MODES and not Path(t.resume).exists():
        raise ConfigError(f"train.resume: '{t.resume}' is neither auto, none, force nor an existing checkpoint folder")
    unknown = [name for name in t.report_to if name not in REPORTERS + ("none",)]
    if unknown:
        raise ConfigError(f"train.report_to: unknown logger(s) {unknown}; choose from {', '.join(REPORTERS)} (or none)")
    if "wandb" in t.report_to:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("train.report_to: wandb is not installed (pip install 'perceptrl[wandb]'), "
                              "or leave wandb out of train.report_to")


def check_output_path(path: Path) -> None:
    """``path`` is a folder, or can be made one, on a writable file system; raises RunDirError."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"train.output_dir: {path} is a file, not a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"train.output_dir: {path}: {probe} is a file, not a folder")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # no statvfs (Windows): the access check below still runs
        read_only = False
    if read_only:
        raise RunDirError(f"train.output_dir: {path}: {probe} is on a read-only file system")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"train.output_dir: {path}: {probe} is not writable (permission denied)")


# ----------------------------------------------------------------------------------------------
# The run's hold on its folder
# ----------------------------------------------------------------------------------------------


class RunDir:
    """A run's output folder: checked, locked and planned by :meth:`open` / :meth:`claim`, set up by
    :meth:`begin` once the model has loaded, closed by :meth:`finish`. Use as a context manager: the
    lock is released however the run ends, and a folder this run created is removed again if the run
    failed before writing anything into it.
    """

    def __init__(self, config: Config, kind: str = "train", dist=None):
        self.config = config
        self.kind = kind
        self.path = Path(config.train.output_dir)
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.lock = OutputLock(self.path)
        self.plan: Plan | None = None
        self.created = False
        self.error: Exception | None = None  # multi-process: raised on every process by claim()

    @classmethod
    def open(cls, config: Config, kind: str = "train", dist=None) -> RunDir:
        """Checks that change nothing: options, the folder is usable and not in use, the resume plan
        when the folder exists. Raises at once in a single process."""
        run = cls(config, kind, dist)
        if not run.main:
            return run
        try:
            check_train_options(config)
            if kind == "train":
                check_resume_path(config)
            check_output_path(run.path)
            if run.path.is_dir():
                run._lock_and_plan()
        except (RunDirError, FolderInUse, ConfigError) as err:
            if dist is not None and dist.enabled:
                run.error = err  # every process raises it in claim(), after the broadcast
            else:
                raise
        return run

    def _lock_and_plan(self) -> None:
        try:
            self.lock.acquire()
        except OSError as err:
            raise RunDirError(f"train.output_dir: cannot write {self.lock.path} ({err.strerror or err})") from None
        try:
            self.plan = plan_start(self.config, inspect_folder(self.path), self.kind)
        except BaseException:
            self.lock.release()
            raise

    def claim(self) -> Plan:
        """Create and lock the folder if :meth:`open` did not; every process gets the plan."""
        if self.main and self.error is None and self.plan is None:
            try:
                if not self.path.exists():
                    try:
                        self.path.mkdir(parents=True)
                        self.created = True
                    except FileExistsError:  # another run made it meanwhile: the lock decides
                        pass
                self._lock_and_plan()
            except (RunDirError, FolderInUse, ConfigError) as err:
                self.error = err
            except OSError as err:
                self.error = RunDirError(f"train.output_dir: cannot create {self.path} ({err.strerror or err})")
        if self.dist is not None and self.dist.enabled:
            error_text, plan = self.dist.broadcast_object((str(self.error) if self.error else None, self.plan)
                                                          if self.main else None)
            if error_text is not None:
                raise self.error if self.main else RunDirError(error_text)
            self.plan = plan
        elif self.error is not None:
            raise self.error
        if self.main and self.lock.stale:
            _say(f"took over the lock of an earlier run that ended without releasing it "
                 f"({holder_text(self.lock.stale)})")
        return self.plan

    def begin(self) -> None:
        """The model has loaded: remove what the plan replaces, write config.yaml and the start record."""
        if not self.main:
            return
        plan = self.plan
        for note in plan.notes:
            _say(note)
        record = self._record()
        if plan.replace:
            self._remove_previous_run(keep=None)
            record = {}
        elif plan.checkpoint is not None:  # checkpoints newer than the resumed one belong to an abandoned branch
            for newer in [c for c in list_checkpoints(self.path) if step_of(c) > plan.step]:
                _trash(newer, self.path)
        save_config(self.config, self.path / CONFIG_FILE)
        start = {"time": time.time(), "command": command_line(), "pid": os.getpid(), "host": socket.gethostname(),
                 "resumed_from": str(plan.checkpoint) if plan.checkpoint else None, "step": plan.step}
        if plan.forced:
            start["forced"] = {key: [old, new] for key, (old, new) in plan.forced.items()}
        for key in ("step", "finished", "before", "after"):  # of an earlier finish this run continues
            record.pop(key, None)
        record.update({"kind": self.kind, "status": "running", "max_steps": self.config.train.max_steps})
        record.setdefault("starts", []).append(start)
        self._write_record(record)

    def finish(self, before: dict, after: dict, step: int) -> None:
        """The run ended: record it as finished, and describe ``final/`` in its model card."""
        if not self.main:
            return
        record = self._record()
        record.update({"status": "finished", "step": step, "finished": time.time(),
                       "before": _finite(before), "after": _finite(after)})
        final = self.path / "final"
        if final.is_dir():
            from perceptrl.train.model_card import write_model_card

            write_model_card(final, self.config, before, after, step, command_line(), self.kind)
        self._write_record(record)

    def _record(self) -> dict:
        try:
            record = json.loads((self.path / RUN_FILE).read_text())
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_record(self, record: dict) -> None:
        tmp = self.path / f".tmp-{RUN_FILE}-{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, self.path / RUN_FILE)

    def _remove_previous_run(self, keep: Path | None) -> None:
        for checkpoint in list(self.path.glob(f"{PREFIX}*")):
            if checkpoint != keep and checkpoint.is_dir():
                _trash(checkpoint, self.path)
        for name in RUN_ENTRIES:
            entry = self.path / name
            if entry.is_dir():
                _trash(entry, self.path)
            elif entry.exists():
                entry.unlink()

    def close(self, failed: bool) -> None:
        if not self.main:
            return
        self.lock.release()
        if failed and self.created:
            try:
                self.path.rmdir()  # only if the failed run left it empty
            except OSError:
                pass

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(failed=kind is not None)


def _trash(path: Path, folder: Path) -> None:
    """Delete a folder so that a kill never leaves it half-deleted under its own name."""
    trash = folder / f".trash-{path.name}-{os.getpid()}"
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _finite(metrics: dict | None) -> dict:
    out = {}
    for key, value in (metrics or {}).items():
        value = value.item() if hasattr(value, "item") else value
        out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    return out
