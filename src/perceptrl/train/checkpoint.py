"""Checkpoints that survive a crash at any moment.

A checkpoint is a folder ``checkpoint-<step>`` in the run's output folder holding the model
weights (safetensors), the optimizer and scheduler state (``torch.save``, loaded with
``weights_only=True``), the random states and the loop's position (``state.json``). It is
written into a temporary folder, flushed to disk, and renamed into place, so a folder named
``checkpoint-<step>`` is always complete; ``state.json`` is written last and must be present.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "checkpoint-"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
) -> Path:
    """Write ``checkpoint-<step>`` atomically; then keep only the newest ``keep`` checkpoints."""
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state_dict_for_safetensors(model), str(tmp / "model.safetensors"))
    trainer_state = {"optimizer": optimizer.state_dict(), "rng": _rng_tensors(rng_state())}
    if scheduler is not None:
        trainer_state["scheduler"] = scheduler.state_dict()
    torch.save(trainer_state, tmp / "trainer_state.pt")
    state = {"format": FORMAT_VERSION, "step": step, **(loop_state or {})}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    _fsync_tree(tmp)
    if final.exists():  # a finished checkpoint of this step exists already (re-run after resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without ``state.json`` is ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.glob(f"{PREFIX}*"):
        suffix = path.name[len(PREFIX):]
        if path.is_dir() and suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def clean_partial(output_dir: str | Path) -> int:
    """Remove temporary folders left by a checkpoint write that was killed."""
    removed = 0
    for path in Path(output_dir).glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def load_checkpoint(path: str | Path, model, optimizer, scheduler=None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and random states; return the loop state."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
    tensors = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if _is_tied(model, k, tensors)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
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
