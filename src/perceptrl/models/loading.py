"""Load a policy from a config: the offline tiny model or any HF image-text-to-text folder.

A model folder is checked before anything loads (:func:`check_model_folder`): ``config.json``
readable, and safetensors weights present, complete and with a sound header (sharded weights: every
shard the index names). perceptrl loads safetensors only: a folder with pickle weights
(``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) is refused up front, with the command that
converts it. A problem is a ``ModelError`` naming the folder and the file.
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import torch

from perceptrl.models.families import build_tiny_family
from perceptrl.models.policy import Policy
from perceptrl.models.precision import DTYPES, compute_dtype  # noqa: F401  (DTYPES re-exported)
from perceptrl.models.processors import load_processor
from perceptrl.models.saving import quiet_transformers, save_pretrained  # noqa: F401  (save_pretrained re-exported)

# The tiny model warm-started on the built-in suite, shipped with the package (``make warmstart``).
WARMSTART_DIR = Path(__file__).resolve().parent.parent / "assets" / "warmstart"


SAFETENSORS_INDEX = "model.safetensors.index.json"
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class ModelError(ValueError):
    """A model folder or device cannot be used; the message names the folder, file or setting."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:N``, ...; an unavailable device
    is a ``ModelError``, not an assertion deep in torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ModelError(f"model.device: '{name}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ModelError(f"model.device={name}: {why} (torch {torch.__version__}); use model.device=auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"model.device={name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelError(f"model.device={name}: MPS is not available here; use model.device=auto or cpu")
    return device


def _check_safetensors(file: Path) -> None:
    """The header of a safetensors file parses and the file is as long as its header says."""
    size = file.stat().st_size
    if size < 8:
        raise ModelError(f"{file}: truncated safetensors file ({size} bytes)")
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, _MAX_HEADER):
            raise ModelError(f"{file}: corrupt safetensors header (says {length} header bytes in a {size}-byte file)")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ModelError(f"{file}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{file}: corrupt safetensors header (not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(x, int) for x in offsets)):
            raise ModelError(f"{file}: corrupt safetensors header (tensor '{name}' has no data_offsets)")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise ModelError(f"{file}: truncated: {size} bytes, its header describes {8 + length + end} "
                         "(an interrupted download or copy?)")


def check_model_folder(path: str | Path) -> None:
    """Refuse, before loading anything, a model folder transformers would fail on with a traceback."""
    folder = Path(path)
    if not folder.exists():
        raise ModelError(f"model.path: '{path}' does not exist (perceptrl loads local folders only)")
    if not folder.is_dir():
        raise ModelError(f"model.path: {folder} is a file; give the model folder (with config.json and *.safetensors)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model.path: {folder} has no config.json (not a Hugging Face model folder)")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelError(f"{config_file}: not valid JSON ({err})") from None
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise ModelError(f"{index}: not a valid safetensors index (needs a weight_map)") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelError(f"{folder}: weight shard(s) {', '.join(missing)} named in {SAFETENSORS_INDEX} are missing")
        files = [folder / name for name in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        unsafe_files = sorted(p.name for p in folder.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES and p.is_file())
        if unsafe_files:
            raise ModelError(
                f"{folder / unsafe_files[0]}: pickle weights are not loaded (perceptrl loads safetensors only: unpickling "
                "can run code); convert them once where you trust the file, e.g. python -c \"from transformers import "
                f"AutoModelForImageTextToText as M; M.from_pretrained('{folder}').save_pretrained('{folder}')\"")
        raise ModelError(f"model.path: {folder} has no weights (model.safetensors, or shards with {SAFETENSORS_INDEX})")
    for file in files:
        _check_safetensors(file)


def check_model(model_cfg) -> None:
    """What can be checked of ``config.model`` without loading it: the device, the folder."""
    resolve_device(model_cfg.device)
    path = model_cfg.path
    if path == "tiny" or path.startswith("tiny:"):
        return
    if path == "warmstart":
        path = str(WARMSTART_DIR)
        if not (WARMSTART_DIR / "config.json").exists():
            raise ModelError(f"model.path: the shipped warm start is missing at {WARMSTART_DIR} (make warmstart)")
    check_model_folder(path)


def load_model_and_processor(path: str, dtype: str = "float32", trust_remote_code: bool = False, tiny_seed: int = 0):
    """``tiny`` (or ``tiny:<family>``) builds an offline test model; otherwise load an HF folder."""
    if path == "tiny" or path.startswith("tiny:"):
        model, processor = build_tiny_family(path.partition(":")[2] or "qwen2_5_vl", seed=tiny_seed)
        return model.to(DTYPES[dtype]), processor
    from transformers import AutoModelForImageTextToText

    if path == "warmstart":
        path = str(WARMSTART_DIR)
        if not (WARMSTART_DIR / "config.json").exists():
            raise ModelError(f"model.path: the shipped warm start is missing at {WARMSTART_DIR} (make warmstart)")

    check_model_folder(path)
    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
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
