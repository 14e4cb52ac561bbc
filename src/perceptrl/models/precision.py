"""Mixed precision: float32 master weights, bf16 (or fp16) compute.

``model.dtype: bfloat16`` asks for bf16 *compute*. Storing the trained weights in bf16 and stepping
AdamW on them would lose most updates: bf16 keeps 8 significant bits, so a weight of 0.02 moves only
in steps of 2**-14 (6e-5), and an update of lr 1e-6 (the seeds' setting) rounds back to the same
value. EasyR1 and verl keep float32 parameters and optimizer state and compute in bf16 (FSDP
``MixedPrecision(param_dtype=bf16, reduce_dtype=fp32)``); so does perceptrl:

- the *trainable* parameters (all of them, or LoRA's adapters) are float32: their gradients, AdamW's
  two moments and the update are float32 (16 bytes per trainable parameter);
- *frozen* parameters (LoRA's base model, a frozen vision tower) and frozen copies (the KL reference)
  are stored in the compute dtype (2 bytes per parameter);
- every forward pass of the policy (generation, scoring, evaluation) runs under
  ``torch.autocast(device, dtype=compute)``: matrix products in bf16 (autocast casts each float32
  weight once per forward and keeps the bf16 copy for the backward pass: 2 more bytes per trained
  parameter while a micro-batch's graph is alive), reductions and norms in float32.

Under several processes the backends keep to the same rule: FSDP2 with accelerate's
``mixed_precision: bf16`` (``configs/accelerate/fsdp.yaml``) shards the float32 parameters and
gathers bf16 copies; DeepSpeed with ``"bf16": {"enabled": true}`` keeps its own float32 master
partition and runs the module in bf16; DDP with ``mixed_precision: bf16`` autocasts, as here.
The final model is saved in the compute dtype (``model.config.dtype``); mid-run checkpoints keep the
float32 master weights, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype for ``model.dtype`` ``name``; None for float32 (no autocast)."""
    dtype = DTYPES[name]
    return None if dtype == torch.float32 else dtype


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device``'s type in ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype)


def use_master_weights(policy, dtype_name: str):
    """Trainable parameters in float32, frozen ones in the compute dtype, forwards under autocast.

    Call after everything that decides which parameters train (LoRA, a frozen vision tower).
    float32: the policy computes in float32 and nothing is cast. Returns the policy.
    """
    dtype = compute_dtype(dtype_name)
    policy.compute_dtype = dtype
    if dtype is None:
        return policy
    model = getattr(policy.model, "module", policy.model)
    for param in model.parameters():
        if not param.is_floating_point():
            continue
        want = torch.float32 if param.requires_grad else dtype
        if param.dtype != want:
            param.data = param.data.to(want)  # the same Parameter object: tied weights stay tied
    config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    if config is not None:
        config.dtype = dtype  # what the final model is saved in (models.loading.save_pretrained)
    return policy


def frozen_dtype(policy) -> torch.dtype | None:
    """The dtype a frozen copy of ``policy`` is stored in (None: keep the policy's)."""
    return getattr(policy, "compute_dtype", None)
