"""Load a policy from a config: the offline tiny model or any HF image-text-to-text folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from perceptrl.models.policy import Policy

# The tiny model warm-started on the built-in suite, shipped with the package (``make warmstart``).
WARMSTART_DIR = Path(__file__).resolve().parent.parent / "assets" / "warmstart"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_and_processor(path: str, dtype: str = "float32", trust_remote_code: bool = False, tiny_seed: int = 0):
    """``tiny`` (or ``tiny:<family>``) builds an offline test model; otherwise load an HF folder."""
    if path == "tiny" or path.startswith("tiny:"):
        from perceptrl.models.families import build_tiny_family

        model, processor = build_tiny_family(path.partition(":")[2] or "qwen2_5_vl", seed=tiny_seed)
        return model.to(DTYPES[dtype]), processor
    from transformers import AutoModelForImageTextToText

    from perceptrl.models.processors import load_processor

    if path == "warmstart":
        path = str(WARMSTART_DIR)
        if not (WARMSTART_DIR / "config.json").exists():
            raise FileNotFoundError(f"model.path: the shipped warm start is missing at {WARMSTART_DIR} (make warmstart)")

    if not Path(path).exists():
        raise FileNotFoundError(f"model.path: '{path}' does not exist (perceptrl loads local folders only)")
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model, load_processor(path, trust_remote_code=trust_remote_code)


def load_policy(model_cfg, system_prompt: str | None = None) -> Policy:
    model, processor = load_model_and_processor(
        model_cfg.path, model_cfg.dtype, model_cfg.trust_remote_code, model_cfg.tiny_seed
    )
    model.to(resolve_device(model_cfg.device))
    return Policy(model, processor, system_prompt=system_prompt)


def frozen_copy(policy: Policy) -> Policy:
    """A frozen copy of the policy's model, used as the reference for the KL term."""
    model = copy.deepcopy(policy.model).eval()
    model.requires_grad_(False)
    return Policy(model, policy.processor, system_prompt=policy.system_prompt)


def save_pretrained(model, processor, path: str | Path) -> Path:
    """Save model and processor as a plain Hugging Face folder (safetensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
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
