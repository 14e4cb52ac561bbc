"""Save a model and its processor as a plain Hugging Face folder (safetensors).

Its own module, below both the loaders (``models.loading``) and the model builders
(``models.tiny``), which all save.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch


@contextlib.contextmanager
def quiet_transformers():
    """No "Loading weights" / "Writing model shards" bars: a run's console has perceptrl's progress only."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _half_state_dict(model) -> dict:
    """``{"state_dict": ...}`` cast to ``config.dtype`` when that is a half type the weights are not in; else {}."""
    dtype = getattr(getattr(model, "config", None), "dtype", None)
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if dtype not in (torch.bfloat16, torch.float16):
        return {}
    state = model.state_dict()
    if all(not t.is_floating_point() or t.dtype == dtype for t in state.values()):
        return {}
    cast: dict[tuple, torch.Tensor] = {}  # tied weights (one storage) stay one tensor
    out = {}
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype == torch.float32:
            ident = (tensor.data_ptr(), tuple(tensor.shape))
            if ident not in cast:
                cast[ident] = tensor.detach().to(dtype)
            tensor = cast[ident]
        out[key] = tensor
    return {"state_dict": out}


def save_pretrained(model, processor, path: str | Path) -> Path:
    """Save model and processor as a plain Hugging Face folder (safetensors).

    Floating-point weights are written in ``model.config.dtype`` when that is bf16 / fp16 and they are
    held in float32 (master weights trained under mixed precision): the folder is the size of the
    checkpoint the run started from.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(path, **_half_state_dict(model))
        processor.save_pretrained(path)
    # Our image-only processor subclass exists only without torchvision: name the stock class
    # so that AutoProcessor works wherever torchvision is installed.
    for name in ("processor_config.json", "tokenizer_config.json"):
        config_file = path / name
        if config_file.exists():
            raw = json.loads(config_file.read_text())
            if raw.get("processor_class") == "ImageOnlyQwenVLProcessor":
                raw["processor_class"] = "Qwen2_5_VLProcessor"
                config_file.write_text(json.dumps(raw, indent=2))
    return path
