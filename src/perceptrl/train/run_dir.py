"""The output folder of a run: checked before any slow work, held by one run at a time, and never
silently reused by a different run.

- **Checked first.** ``train.output_dir`` must be a folder (or creatable), on a writable file system.
- **Locked.** A run holds ``<output_dir>/.perceptrl.lock`` (an ``flock`` on a file naming its pid,
  host and command) while it runs; a second run into the same folder fails at once naming the
  holder. The kernel drops the lock when its process dies, even by SIGKILL, so a lock left by a
  killed run is stale and simply taken over.
- **Resumed only by the same run.** ``config.yaml`` in the folder is the config of the run that
  owns it. A new run resumes its newest checkpoint (``train.resume: auto``) only when the two
  configs differ in nothing but :data:`RESUMABLE_CHANGES` (the step budget, logging, evaluation and
  checkpoint cadence, and where the run executes); otherwise it is refused with the keys that differ.
  ``train.resume: force`` resumes anyway and records the differences in ``run.json``.
- **A finished run is kept.** Run again with the same config, a finished run is reported, not
  redone; with a larger ``train.max_steps`` it continues from its last checkpoint. Anything else that
  would replace it (another config, ``train.resume: none``) needs ``train.overwrite: true``, which
  deletes the previous run's files (checkpoints, ``final/``, metrics, logs) once the model has loaded.
- **A checkpoint past ``train.max_steps``** is refused, not relabelled.

``run.json`` records every start (time, command, pid, checkpoint resumed from, forced differences)
and, at the end, the held-out accuracy before and after training.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perceptrl.config import Config, ConfigError, apply_aliases, save_config
from perceptrl.train.checkpoint import PREFIX, STATE_FILE, clean_partial, is_complete, list_checkpoints
from perceptrl.train.command import command_line

LOCK_FILE = ".perceptrl.lock"
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILES = {"train": "metrics.jsonl", "sft": "sft_metrics.jsonl"}
# What a run writes into its folder, besides the checkpoints: removed when it is replaced.
RUN_ENTRIES = ("final", "adapter", "metrics.jsonl", "sft_metrics.jsonl", "tensorboard", "wandb", "summary.json",
               "result.json", "eval", "eval_probe", RUN_FILE)
# Config keys that may change between a run and its resumption: they change how long it runs, what
# is logged, how often it is evaluated and checkpointed, and where it executes; not what it computes.
RESUMABLE_CHANGES = frozenset({
    "train.max_steps", "train.output_dir", "train.resume", "train.overwrite", "train.report_to", "train.progress",
    "train.log_every", "train.eval_every", "train.save_steps", "train.save_total_limit", "train.save_final",
    "train.max_bad_steps", "train.num_threads", "model.device",
})
RESUME_MODES = ("auto", "none", "force")
REPORTERS = ("jsonl", "tensorboard", "wandb")


class RunDirError(ValueError):
    """The output folder cannot be used as asked (in use, another run's, finished, not writable)."""


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


def check_resume_path(config: Config) -> None:
    """``train.resume=<folder>``: a complete checkpoint not past ``train.max_steps``."""
    t = config.train
    if t.resume in RESUME_MODES:
        return
    path = Path(t.resume)
    if not is_complete(path):
        raise RunDirError(f"train.resume: '{t.resume}' is not a complete checkpoint folder "
                          f"(needs model.safetensors, trainer_state.pt and {STATE_FILE})")
    step = _step_of(path)
    if step > t.max_steps:
        raise RunDirError(f"train.resume: {path} is at step {step}, past train.max_steps = {t.max_steps}")


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
# The lock
# ----------------------------------------------------------------------------------------------


def _holder_text(info: dict) -> str:
    when = info.get("started")
    started = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else ""
    command = f": {info['command']}" if info.get("command") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{started}{command}"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _flock(fd: int, exclusive: bool) -> bool | None:
    """Try to ``flock`` without waiting: True locked, False held by another, None no flock here."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except OSError as err:
        return False if err.errno in _BUSY else None  # ENOLCK, EOPNOTSUPP: a file system without flock


def _unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _live_on_this_host(info: dict) -> bool:
    return info.get("host") == socket.gethostname() and _pid_alive(info.get("pid"))


class OutputLock:
    """``<folder>/.perceptrl.lock``, held with ``flock`` (released by the kernel when the process dies).

    Where there is no ``flock`` (Windows, some network file systems), a lock file whose process still
    runs on this host holds the folder, and one whose process is gone is taken over.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LOCK_FILE
        self.fd: int | None = None
        self.stale: dict | None = None  # what a killed run's lock said, when we took it over

    def in_use_by(self) -> dict | None:
        """The holder's info if another live process holds the lock; changes nothing on disk."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            got, info = _flock(fd, exclusive=False), _read_info(fd)
            if got:
                _unlock(fd)
                return None
            if got is False:
                return info or {"pid": "?"}
            return info if _live_on_this_host(info) else None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Hold the folder, or raise RunDirError naming the run that holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            got = _flock(fd, exclusive=True)
            previous = _read_info(fd)
            if got is False or (got is None and _live_on_this_host(previous)):
                os.close(fd)
                self._refuse(previous or {"pid": "?"})
            if got:
                try:  # a releasing run unlinks the file: make sure we locked the one at the path
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            self.stale = previous or None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command_line()}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode())
            self.fd = fd
            return

    def _refuse(self, holder: dict) -> None:
        raise RunDirError(f"train.output_dir: {self.folder} is in use by another perceptrl run ({_holder_text(holder)}); "
                          "wait for it to end or choose another train.output_dir")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it (see acquire)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# ----------------------------------------------------------------------------------------------
# What the folder holds, and what to do with it
# ----------------------------------------------------------------------------------------------


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


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    parts = [f"{key} {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _step_of(checkpoint: Path) -> int:
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
    latest_step = _step_of(latest) if latest is not None else None

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
    step = _step_of(path)
    inside = path.resolve().parent == state.path.resolve()
    if inside:
        newer = [c for c in state.checkpoints if _step_of(c) > step]
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
        except (RunDirError, ConfigError) as err:
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
            except (RunDirError, ConfigError) as err:
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
                 f"({_holder_text(self.lock.stale)})")
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
            for newer in [c for c in list_checkpoints(self.path) if _step_of(c) > plan.step]:
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
