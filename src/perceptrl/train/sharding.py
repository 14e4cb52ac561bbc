"""Parameter-sharded backends (FSDP2, DeepSpeed ZeRO-3): gathering full weights, full-tensor state.

The pieces :class:`perceptrl.train.distributed.Distributed` uses when the parameters are sharded over
processes: switching accelerate to FSDP or DeepSpeed on CPU processes, gathering every weight for
the rollout-side forwards, and turning sharded states into full tensors (checkpoints, the final
save) and back (resume). Tested here on CPU processes (gloo): FSDP2, DeepSpeed ZeRO-2 and ZeRO-3.
"""

from __future__ import annotations

import contextlib

import torch


def fsdp_on_cpu(accelerator) -> None:
    """FSDP on CPU processes (gloo): what the tests here run.

    accelerate switches to FSDP for GPU-type backends only; on CPU it would quietly fall back to
    plain multi-process CPU training. The plugin is built from the same ``FSDP_*`` environment
    variables ``accelerate launch`` sets, so the rest is accelerate's own FSDP2 code path
    (``fully_shard``, gradient clipping). ``accelerate launch`` does not start several CPU
    processes: use ``torchrun`` with ``ACCELERATE_USE_FSDP=true FSDP_VERSION=2``.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":  # as accelerate does for GPUs
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does on GPUs


def deepspeed_on_cpu(accelerator) -> None:
    """DeepSpeed on CPU processes (gloo): what the tests here run.

    As for FSDP (:func:`fsdp_on_cpu`), ``Accelerator(cpu=True)`` ignores ``ACCELERATE_USE_DEEPSPEED``
    and would quietly run plain multi-process CPU training (DDP); ``cpu=False`` on a machine without
    GPUs gets the ranks wrong. The plugin is built from the ``ACCELERATE_DEEPSPEED_*`` environment
    variables ``accelerate launch`` sets (``ACCELERATE_DEEPSPEED_CONFIG_FILE``,
    ``ACCELERATE_DEEPSPEED_ZERO3_INIT``), and the state is set up as ``AcceleratorState`` does for
    GPUs: DeepSpeed takes the precision from its own config, accelerate's mixed precision is off.
    DeepSpeed then runs on its CPU accelerator (``deepspeed.comm`` over gloo).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    state = accelerator.state
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(accelerator.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = plugin
    state._mixed_precision = "no"  # DeepSpeed handles precision from its config (as AcceleratorState does)
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED  # as accelerate does on GPUs


@contextlib.contextmanager
def fsdp2_gathered(model):
    """All of an FSDP2 model's units unsharded, and kept unsharded after each forward, until exit.

    Uses FSDP2's public ``unshard`` / ``set_reshard_after_forward`` / ``reshard``; the units'
    own reshard settings are saved and restored (FSDP2 keeps them in private attributes), and the
    forward-order bookkeeping of the forwards run inside is cleared on exit
    (``reset_iter_state``), so that the next backward's prefetching sees only the update's forwards.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    root = units[0]
    root_state = root._get_fsdp_state()
    root_state._lazy_init()  # as the first forward would: settles which unit is the root
    saved = []
    for unit in units:
        state = unit._get_fsdp_state()
        groups = [(group, group.post_forward_mesh_info) for group in state._fsdp_param_groups]
        saved.append((state, state._auto_reshard_after_forward, groups))
    for unit in units:  # the same all-gathers in the same order on every process
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for state, auto, groups in saved:
            state._auto_reshard_after_forward = auto
            for group, info in groups:
                group.post_forward_mesh_info = info
        for unit in units:
            unit.reshard()
        if hasattr(root, "reset_iter_state"):  # torch >= 2.12
            root.reset_iter_state()
        else:
            root_state._comm_ctx.post_forward_order.clear()
            for state, _, groups in saved:
                for group, _ in groups:
                    group._post_forward_indices.clear()


@contextlib.contextmanager
def zero3_gathered(engine):
    """DeepSpeed ZeRO-3: every parameter gathered, the engine's forward hooks off.

    The per-module hooks would fetch (a collective) and release parameters around each module's
    forward, and the root module's start-of-forward hook resets the parameter coordinator's step,
    which broadcasts while the coordinator is still recording its trace: removed, a forward is
    local (each process generates until its own rows end; the main process evaluates alone). They
    are registered again on exit (:func:`zero3_hooks`).
    """
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        zero3_hooks(engine, on=False)
        try:
            yield
        finally:
            zero3_hooks(engine, on=True)


def zero3_hooks(engine, on: bool) -> None:
    """Remove (``on=False``) or register again (``on=True``) a ZeRO-3 engine's forward hooks.

    Off: the per-module fetch/release hooks and the root's start-of-forward hook (``fwd_pre_hook``,
    kept to be put back). On: the root's hook first (``prepend``, where DeepSpeed registered it,
    before any module hook), then the module hooks, as DeepSpeed's ``setup_zero_stage3_hooks`` does.
    No-op for an engine that is not ZeRO-3.
    """
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", optimizer)
    if offload is None or not hasattr(offload, "forward_hooks"):
        return
    if on:
        start = offload.__dict__.pop("_perceptrl_start_hook", None)
        if start is not None:
            offload.fwd_pre_hook = offload.module.register_forward_pre_hook(start, prepend=True)
        register = getattr(offload, "_register_deepspeed_module", None)  # deepspeed >= 0.16.4
        if register is None:
            register = offload._register_hooks_recursively
        register(offload.module)
        return
    handle = getattr(offload, "fwd_pre_hook", None)
    start = offload.module._forward_pre_hooks.get(handle.id) if handle is not None else None
    if start is not None:
        offload._perceptrl_start_hook = start
        handle.remove()
    for param in offload.module.parameters():
        if hasattr(param, "ds_active_sub_modules"):
            param.ds_active_sub_modules.clear()
    for hook in list(offload.forward_hooks) + list(offload.backward_hooks):
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []


def _is_dtensor(value) -> bool:
    return torch.is_tensor(value) and hasattr(value, "full_tensor") and hasattr(value, "placements")


def full_tensors(tensors: dict, keep: bool) -> dict:
    """``tensors`` with every DTensor gathered (a collective per DTensor, in key order), on the CPU if ``keep``.

    A tensor that appears under several names (tied weights; pass ``state_dict(keep_vars=True)`` so
    that it is the same object on every process) is gathered once and shared.
    """
    out: dict = {}
    done: dict[int, torch.Tensor] = {}
    for key, value in tensors.items():
        if _is_dtensor(value):
            if id(value) not in done:
                full = value.full_tensor()
                done[id(value)] = full.detach().cpu() if keep else full.new_empty(0)
            value = done[id(value)]
        elif torch.is_tensor(value) and keep:
            value = value.detach().cpu()
        if keep:
            out[key] = value
    return out


def _shard_like(full: torch.Tensor, like):
    """This process's shard of ``full``, placed as the DTensor ``like`` (no communication)."""
    from torch.distributed.tensor import distribute_tensor

    full = full.to(dtype=like.dtype, device=like.device)
    try:
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    except TypeError:  # torch < 2.6: scatter from rank 0 (every process holds the same full tensor anyway)
        return distribute_tensor(full, like.device_mesh, like.placements)


def torch_optimizer(optimizer):
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer
    return optimizer


class StateView:
    """Stands for a model or an optimizer whose (gathered) state is already known."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class ShardingModelLoader:
    """``load_state_dict`` of full tensors into an FSDP2 model: each process keeps its shard."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict:  # local shards: tied weights share storage, as load_checkpoint checks
        return {k: v.to_local() if _is_dtensor(v) else v for k, v in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict, strict: bool = True):
        current = self.model.state_dict()
        sharded = {k: _shard_like(v, current[k]) if k in current and _is_dtensor(current[k]) else v
                   for k, v in tensors.items()}
        return self.model.load_state_dict(sharded, strict=strict)


class ShardingOptimizerLoader:
    """``load_state_dict`` of a full optimizer state into an optimizer over FSDP2 parameters."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def load_state_dict(self, packed: dict) -> None:
        params = [p for group in torch_optimizer(self.optimizer).param_groups for p in group["params"]]
        state = {}
        for index, values in packed["state"].items():
            param = params[int(index)]
            state[index] = {k: _shard_like(v, param) if _is_dtensor(param) and torch.is_tensor(v)
                            and tuple(v.shape) == tuple(param.shape) else v for k, v in values.items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": packed["param_groups"]})


def plain_copy(model, weights: dict):
    """A plain (unsharded, unwrapped) copy of ``model`` holding ``weights``, built without a second allocation.

    The class under FSDP2's wrapper class is rebuilt from the model's config on the meta device,
    the LoRA adapter (if any) is re-applied, and ``weights`` are assigned; buffers that are not in a
    state dict (rotary frequencies) are copied from ``model``.
    """
    from perceptrl.models.lora import is_lora

    base = model.get_base_model() if is_lora(model) else model
    try:  # FSDP2 swaps the model's class for a subclass of (FSDPModule, the class)
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6 (no FSDP2 through accelerate)
        FSDPModule = ()
    cls = next(c for c in type(base).__mro__ if not (FSDPModule and issubclass(c, FSDPModule)))
    dtype = getattr(base.config, "dtype", None)  # FSDP mixed precision keeps fp32 master weights: save as loaded
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        weights = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in weights.items()}
    with torch.device("meta"):
        plain = cls._from_config(base.config)
        if is_lora(model):
            from peft import get_peft_model

            plain = get_peft_model(plain, model.peft_config["default"])
    missing, _ = plain.load_state_dict(weights, strict=False, assign=True)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    buffers = dict(model.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta and name in buffers:
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner)._buffers[leaf] = buffers[name].detach().clone().cpu()
    left = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"final save: no weights gathered for {left[:5]} (not in the state dict: {missing[:5]})")
    return plain.eval()
