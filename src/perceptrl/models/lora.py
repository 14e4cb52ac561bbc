"""LoRA adapters (peft), gradient checkpointing, and the reference policy that costs no memory.

- :func:`prepare_for_training` applies the ``model`` config's training options to a loaded policy:
  LoRA adapters on the language model's ``target_modules`` (the vision tower and the projector are
  left out unless ``include_vision``), and gradient checkpointing.
- :func:`reference_policy`: the frozen reference for the KL term. With LoRA it is the *same* model
  with its adapter switched off (``peft``'s ``disable_adapter``), so no second copy is held in
  memory; without LoRA it is a frozen deep copy (``models.loading.frozen_copy``).
- :func:`merged_model`: a plain model with the adapter merged in (the end-of-run save,
  ``train/final_model.py``, writes it and the adapter).
"""

from __future__ import annotations

import copy
import warnings

import torch

from perceptrl.models.loading import frozen_copy
from perceptrl.models.policy import Policy
from perceptrl.models.precision import use_master_weights

# Names of the sub-modules that hold a model's vision side, in the supported families:
# Qwen2-VL / Qwen2.5-VL / Qwen3-VL ``visual`` (tower and merger), LLaVA-OneVision ``vision_tower``
# and ``multi_modal_projector``.
VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "mm_projector")
ADAPTER_DIR = "adapter"


def unwrap(model):
    """The model under a DDP / DeepSpeed wrapper."""
    return getattr(model, "module", model)


def is_lora(model) -> bool:
    return hasattr(unwrap(model), "disable_adapter") and hasattr(unwrap(model), "peft_config")


def lora_targets(model, target_modules: list[str], include_vision: bool = False) -> list[str]:
    """Full names of the ``nn.Linear`` layers to adapt: last name in ``target_modules``, vision excluded."""
    wanted = set(target_modules)
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or parts[-1] not in wanted:
            continue
        if not include_vision and any(part in VISION_PARTS for part in parts):
            continue
        names.append(name)
    if not names:
        raise ValueError(f"model.lora.target_modules {sorted(wanted)} match no Linear layer of the "
                         f"{'model' if include_vision else 'language model'}")
    return names


def apply_lora(policy: Policy, lora_cfg) -> Policy:
    """Wrap ``policy.model`` in a peft LoRA model; only the adapter parameters are trainable."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(policy.model, list(lora_cfg.target_modules), lora_cfg.include_vision)
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=targets, bias="none")
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        policy.model = get_peft_model(policy.model, config)
    return policy


def enable_gradient_checkpointing(policy: Policy) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant, works with frozen inputs).

    A checkpointed model returns no key/value cache in training mode, so the update scores each
    row with a full forward instead of sharing its prompt's cache (``Policy.share_prompt_prefix``).
    """
    base = policy._base_model()
    kwargs = {"use_reentrant": False}
    _checkpointing_enable(base, kwargs)
    # The vision tower too (its blocks hold the image's activations): transformers enables every
    # checkpointable layer of the model; a tower left out (an older version) is enabled on its own.
    for _, tower in vision_towers(base):
        layers = [m for m in tower.modules() if hasattr(m, "gradient_checkpointing") and m is not tower]
        if layers and not all(m.gradient_checkpointing for m in layers) and hasattr(tower, "gradient_checkpointing_enable"):
            _checkpointing_enable(tower, kwargs)
    policy.share_prompt_prefix = False


def _checkpointing_enable(model, kwargs: dict) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_for_training(policy: Policy, model_cfg) -> Policy:
    """LoRA, a frozen vision tower, mixed precision and gradient checkpointing as ``model_cfg``
    (``config.model``) asks. Mixed precision (``model.dtype`` bf16 / fp16): float32 master weights for
    what trains, the compute dtype for what is frozen, forwards under autocast
    (``perceptrl.models.precision``)."""
    if model_cfg.lora.enabled:
        apply_lora(policy, model_cfg.lora)
    if getattr(model_cfg, "freeze_vision_tower", False):
        freeze_vision_tower(policy)
    use_master_weights(policy, model_cfg.dtype)
    if model_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    return policy


# What ``model.freeze_vision_tower`` freezes: Qwen-VL's ``visual`` (tower and merger, as EasyR1's
# ``freeze_vision_tower`` does), LLaVA-OneVision's ``vision_tower`` (its projector keeps training, as
# LLaVA's own "freeze the vision tower" option).
VISION_TOWERS = ("visual", "vision_tower", "vision_model")


def vision_towers(model) -> list[tuple[str, torch.nn.Module]]:
    """The outermost vision-tower sub-modules (``VISION_TOWERS``) of ``model``."""
    found = []
    for name, module in unwrap(model).named_modules():
        parts = name.split(".")
        if parts[-1] in VISION_TOWERS and not any(p in VISION_TOWERS for p in parts[:-1]):
            found.append((name, module))
    return found


def freeze_vision_tower(policy: Policy) -> list[str]:
    """No gradient into the vision tower (``VISION_TOWERS``); returns the names of the frozen modules."""
    found = vision_towers(policy.model)
    if not found:
        raise ValueError(f"model.freeze_vision_tower: no vision tower ({', '.join(VISION_TOWERS)}) in "
                         f"{type(policy._base_model()).__name__}")
    for _, module in found:
        module.requires_grad_(False)
    return [name for name, _ in found]


class AdapterDisabled:
    """The policy with its LoRA adapter switched off: the base model, sharing every weight.

    Behaves as a :class:`Policy` (``score``, ``generate``; other attributes are the policy's).
    """

    def __init__(self, policy: Policy):
        self.policy = policy

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def score(self, *args, **kwargs):
        with unwrap(self.policy.model).disable_adapter():
            return self.policy.score(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with unwrap(self.policy.model).disable_adapter():
            return self.policy.generate(*args, **kwargs)


def reference_policy(policy: Policy):
    """The KL reference: the adapter-free base model under LoRA, else a frozen copy."""
    if is_lora(policy.model):
        return AdapterDisabled(policy)
    return frozen_copy(policy)


def merged_model(model):
    """A plain transformers model with the LoRA weights merged in (the training model is untouched)."""
    return copy.deepcopy(unwrap(model)).merge_and_unload()
