"""The end-of-run save: ``final/`` as a plain Hugging Face folder and, under LoRA, ``adapter/``.

With LoRA: the adapter alone in ``<output_dir>/adapter`` (loadable with
``peft.PeftModel.from_pretrained``) and the merged weights in ``<output_dir>/final`` (loadable without
peft). Both written atomically (a temporary folder, renamed; ``train.checkpoint``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from perceptrl.models.lora import ADAPTER_DIR, is_lora, merged_model, unwrap
from perceptrl.train.checkpoint import swap_into_place, save_final


def save_adapter(model, output_dir: str | Path, name: str = ADAPTER_DIR) -> Path:
    """Save the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) atomically."""
    output_dir = Path(output_dir)
    tmp = output_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    unwrap(model).save_pretrained(tmp)
    target = output_dir / name
    swap_into_place(tmp, target)
    return target


def save_final_model(model, processor, output_dir: str | Path) -> Path:
    """End-of-run save: ``final/`` as a plain HF folder (merged under LoRA) and, under LoRA, ``adapter/``."""
    model = unwrap(model)
    if not is_lora(model):
        return save_final(model, processor, output_dir)
    save_adapter(model, output_dir)
    return save_final(merged_model(model), processor, output_dir)
