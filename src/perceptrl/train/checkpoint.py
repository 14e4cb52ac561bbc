"""Checkpoints that survive a crash at any moment.

A checkpoint is a folder ``checkpoint-<step>`` in the run's output folder holding the model
weights (``model.safetensors``), the optimizer and scheduler state (``trainer_state.pt``, written
with ``torch.save`` and read back with ``weights_only=True``: no pickle code runs on load), the
random states of python, numpy and torch, and the loop's position (``state.json``: step, data
position, ...).

Every folder that may be read after a crash appears by one atomic rename:

- a checkpoint is written into ``.tmp-checkpoint-<step>-<pid>``, every file and the folder are
  fsynced, and the folder is renamed to ``checkpoint-<step>``; a folder with that name is
  therefore always complete (:func:`list_checkpoints` still checks for all three files);
- old checkpoints are pruned by first renaming them to ``.trash-...`` (atomic) and then deleting
  them, so a kill during a slow delete never leaves a half-deleted folder that looks complete;
- replacing a checkpoint of the same step (a re-run after resuming from an older one) renames the
  old one to ``.replaced-checkpoint-<step>-<pid>`` first; if a kill lands between the two renames,
  :func:`clean_partial` puts the old one back;
- the final model (:func:`save_final`) is written the same way into ``final/``.

:func:`clean_partial` (called when a run resumes) removes what a killed write left behind.

Fault injection for the crash test: if the environment variable ``PERCEPTRL_CRASH_AT`` is
``<point>@<step>`` the process kills itself with SIGKILL when it reaches ``<point>`` while saving
the checkpoint of ``<step>`` (``<point>`` is one of :data:`CRASH_POINTS`; ``final`` ignores the
step). ``minibatch@<step>`` is the loop's own point (:func:`crash_point`): between the first and
the second optimizer step of rollout step ``<step>``, where no checkpoint is ever written. It costs
one dictionary lookup per point and does nothing when the variable is unset.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from perceptrl.models.saving import save_pretrained

PREFIX = "checkpoint-"
STATE_FILE = "state.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer_state.pt"
REQUIRED_FILES = (WEIGHTS_FILE, TRAINER_FILE, STATE_FILE)
FORMAT_VERSION = 1
FINAL_DIR = "final"
CRASH_ENV = "PERCEPTRL_CRASH_AT"
#: Where ``PERCEPTRL_CRASH_AT`` can stop a save, in order.
CRASH_POINTS = ("tmp_created", "weights_written", "trainer_written", "state_written", "synced",
                "renamed", "pruning", "final", "minibatch")
_LEFTOVER_PATTERNS = (".tmp-*", ".trash-*")  # folders of a write or delete that was killed (final/, adapter/, ...)


class CheckpointError(ValueError):
    """A checkpoint folder cannot be used (missing or unreadable files, wrong format)."""


class DiskFullError(CheckpointError):
    """No space left while writing a checkpoint or ``final/``; the previous ones are intact."""


def _is_disk_full(err: BaseException, tmp: Path, needed: int) -> bool:
    """OSError ENOSPC / EDQUOT from Python; safetensors' SafetensorError names the OS error in its text;
    torch.save only says "unexpected pos", so a write error with too little room for the whole folder
    counts too."""
    if getattr(err, "errno", None) in (28, 122) or "No space left on device" in str(err) or "os error 28" in str(err):
        return True
    if not isinstance(err, (OSError, RuntimeError)):
        return False
    written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
    return shutil.disk_usage(tmp.parent).free + written < needed


def _disk_full(file: str, tmp: Path, needed: int, output_dir: Path) -> DiskFullError:
    """Remove the partial folder and say which file failed, how much space is needed and what survives."""
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(output_dir).free
    previous = latest_checkpoint(output_dir)
    resume = (f"{previous.name} is intact: free space, then run the same command to resume from it" if previous
              else "no checkpoint to resume from (train.save_steps): free space and run the same command again")
    return DiskFullError(f"no space left on device writing {file} in {output_dir} (needs about "
                         f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free); {resume}")


def _nbytes(tensors) -> int:
    total = 0
    for value in tensors:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            total += _nbytes(value.values())
        elif isinstance(value, (list, tuple)):
            total += _nbytes(value)
    return total


def _crash_point(point: str, step: int | None = None) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (point == "final" or not at or (step is not None and at == str(step))):
        os.kill(os.getpid(), signal.SIGKILL)


def crash_point(point: str, step: int | None = None) -> None:
    """A crash point outside the checkpoint writer (the loop's ``minibatch``; see the module docstring)."""
    _crash_point(point, step)


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(folder)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path, output_dir: Path, step: int | None = None) -> None:
    """Delete a folder so that no crash can leave it half-deleted under its usable name."""
    trash = output_dir / f".trash-{path.name}-{os.getpid()}"
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    _crash_point("pruning", step)
    shutil.rmtree(trash, ignore_errors=True)


def _step_of(path: Path) -> int | None:
    suffix = path.name[len(PREFIX):]
    return int(suffix) if path.name.startswith(PREFIX) and suffix.isdigit() else None


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``, replacing an existing ``final``."""
    if final.exists():
        old = final.parent / f".replaced-{final.name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        _fsync_dir(final.parent)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_for_safetensors(model) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses shared tensors, so store each once.
    seen: dict[int, str] = {}
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer,
    scheduler=None,
    loop_state: dict[str, Any] | None = None,
    keep: int | None = None,
    before_commit=None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically; then keep only the newest ``keep`` checkpoints.

    ``before_commit(folder)``, if given, may add files to the checkpoint before it is synced and
    renamed (multi-process runs add each process's random states, ``perceptrl.train.distributed``).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _crash_point("tmp_created", step)
    weights = _state_dict_for_safetensors(model)
    trainer_state = {"optimizer": optimizer.state_dict(), "rng": _rng_tensors(rng_state())}
    writing = f"{final.name}/{WEIGHTS_FILE}"  # named in a disk-full error
    try:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        _crash_point("weights_written", step)
        if scheduler is not None:
            trainer_state["scheduler"] = scheduler.state_dict()
        writing = f"{final.name}/{TRAINER_FILE}"
        torch.save(trainer_state, tmp / TRAINER_FILE)
        _crash_point("trainer_written", step)
        state = {"format": FORMAT_VERSION, "step": step, **(loop_state or {})}
        writing = f"{final.name}/{STATE_FILE}"
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if before_commit is not None:
            writing = f"{final.name}/ (random states)"
            before_commit(tmp)
        _crash_point("state_written", step)
        _fsync_tree(tmp)
    except Exception as err:
        needed = _nbytes([weights, trainer_state])
        if _is_disk_full(err, tmp, needed):
            raise _disk_full(writing, tmp, needed, output_dir) from None
        raise
    _crash_point("synced", step)
    _swap_into_place(tmp, final)
    _crash_point("renamed", step)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            _remove(old, output_dir, step)
    return final


def write_folder(output_dir: str | Path, name: str, write, needed_bytes, crash: str | None = None) -> Path:
    """Write the folder ``output_dir/name`` atomically: ``write(tmp)`` fills ``.tmp-<name>-<pid>``,
    which is fsynced and then renamed, so the folder is either the previous complete one or the new
    complete one, never a mixture. A full disk is a :class:`DiskFullError` naming the folder
    (``needed_bytes()``: about its size); ``crash``: the crash point after the write."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write(tmp)
        if crash is not None:
            _crash_point(crash)
        _fsync_tree(tmp)
    except Exception as err:
        needed = needed_bytes()
        if _is_disk_full(err, tmp, needed):
            raise _disk_full(f"{name}/", tmp, needed, output_dir) from None
        raise
    target = output_dir / name
    _swap_into_place(tmp, target)
    return target


def save_final(model, processor, output_dir: str | Path, name: str = FINAL_DIR) -> Path:
    """Save the model and processor as a Hugging Face folder ``output_dir/name``, atomically
    (:func:`write_folder`)."""
    return write_folder(output_dir, name, lambda tmp: save_pretrained(model, processor, tmp),
                        lambda: _nbytes([dict(model.state_dict())]), crash="final")


def _rng_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors and plain lists, loadable with ``weights_only=True``."""
    py = state["python"]
    np_state = state["numpy"]
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": state["torch"],
        "cuda": state["cuda"],
    }


def _rng_from_tensors(saved: dict[str, Any]) -> dict[str, Any]:
    py = saved["python"]
    npst = saved["numpy"]
    return {
        "python": (py[0], tuple(py[1]), py[2]),
        "numpy": (npst[0], npst[1].numpy().astype(np.uint32), *npst[2:]),
        "torch": saved["torch"],
        "cuda": saved["cuda"],
    }


def is_complete(path: str | Path) -> bool:
    """A folder holding all of a checkpoint's files."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED_FILES)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (an incomplete folder is ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.glob(f"{PREFIX}*"):
        step = _step_of(path)
        if step is not None and is_complete(path):
            found.append((step, path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def clean_partial(output_dir: str | Path) -> int:
    """Tidy up after a killed write; returns how many leftover folders were handled.

    Temporary and trash folders (``.tmp-*``, ``.trash-*``) are deleted. A ``.replaced-<name>-<pid>``
    folder (the previous, complete version of a folder that :func:`_swap_into_place` was replacing:
    a checkpoint, ``final/``, a LoRA ``adapter/``) is renamed back if ``<name>`` is missing, else
    deleted.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return 0
    handled = 0
    for pattern in _LEFTOVER_PATTERNS:
        for path in output_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                handled += 1
    for path in output_dir.glob(".replaced-*"):
        name = path.name[len(".replaced-"):].rsplit("-", 1)[0]
        target = output_dir / name
        if name and not target.exists():
            os.replace(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)
        handled += 1
    return handled


def load_checkpoint(path: str | Path, model, optimizer, scheduler=None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and random states; return the loop state."""
    path = Path(path)
    missing_files = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing_files:
        raise CheckpointError(f"{path}: not a complete checkpoint (missing {', '.join(missing_files)})")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {found} is not {FORMAT_VERSION}")
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path / WEIGHTS_FILE}: unreadable ({type(err).__name__}: {err})") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if _is_tied(model, k, tensors)}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")
    try:
        trainer_state = torch.load(path / TRAINER_FILE, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - corrupt file, or one holding non-tensor objects
        raise CheckpointError(f"{path / TRAINER_FILE}: unreadable ({type(err).__name__}: {err})") from None
    optimizer.load_state_dict(trainer_state["optimizer"])
    if scheduler is not None and "scheduler" in trainer_state:
        scheduler.load_state_dict(trainer_state["scheduler"])
    set_rng_state(_rng_from_tensors(trainer_state["rng"]))
    return state


def _is_tied(model, name: str, saved: dict[str, torch.Tensor]) -> bool:
    """A parameter left out of the file because it shares storage with one that is in it."""
    params = model.state_dict()
    ptr = params[name].data_ptr()
    return any(params[other].data_ptr() == ptr for other in saved if other in params)
