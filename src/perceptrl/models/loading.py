"""Load a policy from a config: the offline tiny model or any HF image-text-to-text folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from perceptrl.models.policy import Policy
from perceptrl.models.precision import DTYPES, compute_dtype  # noqa: F401  (DTYPES re-exported)

# The tiny model warm-started on the built-in suite, shipped with the package (``make warmstart``).
WARMSTART_DIR = Path(__file__).resolve().parent.parent / "assets" / "warmstart"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    # Stored as loaded (model.dtype); forwards under autocast to it. Training then keeps its trainable
    # parameters in float32 (models.lora.prepare_for_training -> models.precision.use_master_weights).
    return Policy(model, processor, system_prompt=system_prompt, compute_dtype=compute_dtype(model_cfg.dtype))


def frozen_copy(policy: Policy) -> Policy:
    """A frozen copy of the policy's model, used as the reference for the KL term.

    Stored in the policy's compute dtype (bf16 when training with float32 master weights), run under
    the same autocast as the policy.
    """
    model = copy.deepcopy(policy.model).eval()
    model.requires_grad_(False)
    if policy.compute_dtype is not None:
        model.to(policy.compute_dtype)
    return Policy(model, policy.processor, system_prompt=policy.system_prompt, compute_dtype=policy.compute_dtype)


def save_pretrained(model, processor, path: str | Path) -> Path:
    """Save model and processor as a plain Hugging Face folder (safetensors).

    Floating-point weights are written in ``model.config.dtype`` when that is bf16 / fp16 and they are
    held in float32 (master weights trained under mixed precision): the folder is the size of the
    checkpoint the run started from.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
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
