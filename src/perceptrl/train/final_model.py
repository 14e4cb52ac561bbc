"""The end-of-run save: ``final/`` as a plain Hugging Face folder and, under LoRA, ``adapter/``.

With LoRA: the adapter alone in ``<output_dir>/adapter`` (loadable with
``peft.PeftModel.from_pretrained``) and the merged weights in ``<output_dir>/final`` (loadable without
peft). Both written atomically (a temporary folder, renamed; ``train.checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

from perceptrl.models.lora import ADAPTER_DIR, is_lora, merged_model, unwrap
from perceptrl.train.checkpoint import save_final, write_folder


def save_adapter(model, output_dir: str | Path, name: str = ADAPTER_DIR) -> Path:
    """Save the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) atomically, as ``final/``."""
    adapter = unwrap(model)
    return write_folder(output_dir, name, adapter.save_pretrained,
                        lambda: sum(p.numel() * p.element_size() for p in adapter.parameters() if p.requires_grad))


def save_final_model(model, processor, output_dir: str | Path) -> Path:
    """End-of-run save: ``final/`` as a plain HF folder (merged under LoRA) and, under LoRA, ``adapter/``."""
    model = unwrap(model)
    if not is_lora(model):
        return save_final(model, processor, output_dir)
    save_adapter(model, output_dir)
    return save_final(merged_model(model), processor, output_dir)
