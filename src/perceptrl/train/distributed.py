"""Multi-process training through ``accelerate``: a small wrapper that is a no-op in one process.

Launch with ``accelerate launch --config_file configs/accelerate/<name>.yaml -m perceptrl.cli train ...``
(GPUs) or ``torchrun --nproc_per_node N -m perceptrl.cli train ...`` (CPU, gloo; add
``ACCELERATE_USE_FSDP=true FSDP_VERSION=2`` to the environment for FSDP, or
``ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_ZERO3_INIT=false
ACCELERATE_DEEPSPEED_CONFIG_FILE=<zero json>`` for DeepSpeed; the tests use the shipped JSON files
with ``"bf16": {"enabled": false}``). In one process (``WORLD_SIZE`` unset or 1) nothing here
touches ``torch.distributed``, and the loop runs exactly as it would without this module.

How the work is split (see docs/SCALING.md):
- each process generates, scores and evaluates on its own: a step's ``data.rollout_batch_size``
  prompts are cut into PPO mini-batches of ``train.global_batch_size`` prompts, and each mini-batch
  into one contiguous slice per process (:meth:`Distributed.prompt_positions`), so that every
  optimizer step sees the same prompts whatever the number of processes; whole groups stay on one
  process (both sizes must divide by the number of processes);
- the update's loss denominators are global: the token and sequence counts of the update batch are
  summed over processes (:meth:`Distributed.all_reduce_sum`). DDP, FSDP and DeepSpeed *average* the
  gradients over processes, so the loss is multiplied by the world size before the backward pass
  (:meth:`Distributed.backward`): the summed micro-batch losses of all processes are then the loss
  of the whole update batch, and so is the gradient;
- every process runs the same number of micro-batches (a process with fewer update rows runs
  zero-weight ones, :meth:`micro_batches`). DDP and DeepSpeed synchronise gradients once per
  optimizer step (DDP ``no_sync`` on all but the last); FSDP reduce-scatters after every
  micro-batch, so that only sharded gradients accumulate;
- logging, evaluation and checkpoint writing happen on the main process; the others wait at a
  barrier. Each process saves its own random states next to the checkpoint (``rng_rank<r>.pt``).

Parameter sharding (FSDP2, DeepSpeed ZeRO-3) makes every forward pass a collective operation, while
the rollout's forwards are not paired across processes (each process generates until its own rows
end; the main process evaluates alone). So the rollout-side forwards (generation, scoring without
gradient, evaluation) run inside :meth:`Distributed.full_weights`, which all processes enter
together: the full weights are gathered once, every forward inside is local, and the weights are
sharded again on exit. The update runs on the sharded model, where every process makes the same
model calls: one full forward per micro-batch (no shared prompt prefix), with padding micro-batches,
and every prompt has an image (so the vision tower runs everywhere). Settings whose update forwards
depend on a process's data are refused (:meth:`Distributed.check`). Checkpoints and the final model
are gathered to full tensors on the main process, so their files are those of any other run.

Backends: DDP (gloo on CPU, NCCL on GPU), FSDP2 (``fully_shard``; FSDP1 is refused), DeepSpeed
ZeRO-2 and ZeRO-3. Tested here (``tests/test_distributed.py``, two CPU processes over gloo, against
one process): DDP, FSDP2, and DeepSpeed ZeRO-2 and ZeRO-3 in fp32. Not tested here: NCCL, GPUs, and
DeepSpeed in bf16. DeepSpeed needs ``zero3_init_flag: false`` (perceptrl builds the model itself,
on every process); its mid-run checkpoints and resuming from a checkpoint are refused.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from perceptrl.train.sharding import (
    ShardingModelLoader,
    ShardingOptimizerLoader,
    StateView,
    deepspeed_on_cpu,
    fsdp2_gathered,
    fsdp_on_cpu,
    full_tensors,
    plain_copy,
    torch_optimizer,
    zero3_gathered,
)

RNG_FILE = "rng_rank{rank}.pt"


class Distributed:
    """Rank, world size and the few collective operations the loop needs.

    ``Distributed()`` in a single process is inert: every method is a no-op or an identity.
    ``Distributed.from_environment()`` builds an ``accelerate.Accelerator`` when the process was
    launched with more than one process (``WORLD_SIZE > 1``).
    """

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        kind = accelerator.distributed_type.name if accelerator is not None else "NO"
        self.deepspeed = kind == "DEEPSPEED"
        self.fsdp = kind == "FSDP"  # FSDP2 (fully_shard); FSDP1 is refused in from_environment
        self.zero3 = self.deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3
        self._trainable: list[torch.Tensor] = []  # set by prepare
        self._sync = True
        self._model = None  # the prepared model (sharded backends gather its weights in full_weights)
        self._gathered = 0  # depth of full_weights contexts
        self._shared_prefix: bool | None = None  # the policy's own share_prompt_prefix (sharded backends)

    @property
    def sharded(self) -> bool:
        """Parameters sharded over processes (FSDP, ZeRO-3): every forward outside full_weights is a collective."""
        return self.fsdp or self.zero3

    # ------------------------------------------------------------------ setup
    @classmethod
    def from_environment(cls) -> Distributed:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from perceptrl.config import ConfigError

        # broadcast_buffers=False: no collective in a forward pass, since processes generate,
        # score and evaluate on their own (a DDP buffer broadcast would pair unrelated forwards).
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=False)
        cpu = not torch.cuda.is_available()
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[ddp])
        if cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            fsdp_on_cpu(accelerator)
        elif cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            deepspeed_on_cpu(accelerator)
        kind = accelerator.distributed_type.name
        if kind == "DEEPSPEED":
            if accelerator.state.deepspeed_plugin.zero3_init_flag:  # accelerate's default for ZeRO-3
                raise ConfigError("DeepSpeed zero3_init_flag: true is not supported: perceptrl builds the whole model "
                                  "on every process (transformers would build it partitioned inside zero.Init); "
                                  "set zero3_init_flag: false (ACCELERATE_DEEPSPEED_ZERO3_INIT=false), as "
                                  "configs/accelerate/zero3.yaml does")
            # accelerate registers its DeepSpeed config with transformers whatever zero3_init_flag says;
            # under ZeRO-3 transformers would then build models inside zero.Init (partitioned weights:
            # perceptrl's own model loading fails) and default generate to synced_gpus=True (generation
            # runs on gathered weights, each process to its own length).
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        if kind == "MEGATRON_LM":
            raise ConfigError("Megatron-LM is not supported: use FSDP (configs/accelerate/fsdp.yaml), DeepSpeed "
                              "(zero2.yaml, zero3.yaml) or DDP (ddp.yaml); see docs/SCALING.md")
        if kind == "FSDP" and accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise ConfigError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                              "(FSDP_VERSION=2), as configs/accelerate/fsdp.yaml does")
        return cls(accelerator)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """E.g. ``2 processes, FSDP2 (gloo)``; ``1 process`` when inert."""
        if not self.enabled:
            return "1 process"
        if self.fsdp:
            kind = "FSDP2"
        elif self.deepspeed:
            kind = f"DeepSpeed ZeRO-{self.accelerator.state.deepspeed_plugin.zero_stage}"
        else:
            kind = "DDP"
        return f"{self.world_size} processes, {kind} ({torch.distributed.get_backend()})"

    @property
    def device(self) -> torch.device | None:
        """The device of this process (None in a single process: the config decides)."""
        return self.accelerator.device if self.enabled else None

    def check(self, config) -> None:
        """Refuse settings this process layout cannot run correctly (``config``: the run's Config)."""
        from perceptrl.config import ConfigError

        train_cfg = config.train
        self.check_divisible(config.data.rollout_batch_size)
        self.check_divisible(train_cfg.global_batch_size, "train.global_batch_size",
                             "each process takes an equal share of every mini-batch")
        self.check_divisible(config.filters.round_prompts, "filters.round_prompts",
                             "each process generates an equal share of every dynamic-sampling round")
        if self.deepspeed and train_cfg.save_steps:
            raise ConfigError("train.save_steps: checkpoints of DeepSpeed runs are not supported yet (ZeRO "
                              "partitions the optimizer state over processes); set train.save_steps=0")
        if not self.sharded:
            return
        what = "FSDP" if self.fsdp else "DeepSpeed ZeRO-3"
        # Outside full_weights every forward is a collective: the update's forwards must be the same
        # model calls on every process, whatever its data.
        if config.rollout.engine != "hf":
            raise ConfigError(f"rollout.engine: {config.rollout.engine} cannot run with {what} (its weight copy "
                              "reads unsharded weights); use rollout.engine=hf, or DDP / ZeRO-2")
        papo = config.papo
        if papo.recompute_masked and (papo.gamma > 0 or papo.eta1 > 0 or papo.eta2 > 0):
            raise ConfigError(f"papo.recompute_masked=true cannot run with {what}: its extra forward in the update "
                              "is not run by a process's padding micro-batches; use the default (false)")
        dupl = config.dupl
        if config.algorithm.adv_estimator == "dupl" and dupl.variant == "paper" and dupl.use_u_per:
            raise ConfigError(f"dupl.variant=paper with dupl.use_u_per cannot run with {what}: its forwards inside "
                              "the update depend on each process's data; use DDP or ZeRO-2")
        if self.zero3 and train_cfg.save_final:
            zero = self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
            if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
                raise ConfigError("DeepSpeed ZeRO-3 saves the final model from weights gathered to the main process: "
                                  "set stage3_gather_16bit_weights_on_model_save: true in the DeepSpeed config "
                                  "(configs/accelerate/zero3.json does), or train.save_final=false")

    def check_divisible(self, count: int | None, key: str = "data.rollout_batch_size",
                        why: str = "each process takes whole groups of an equal slice of the step's prompts") -> None:
        """A prompt count of the config (``key``, counted over all processes) must split evenly over them."""
        if count and count % self.world_size:
            from perceptrl.config import ConfigError

            raise ConfigError(f"{key} ({count}) must be divisible by the number of processes "
                              f"({self.world_size}): {why}")

    def prompt_positions(self, start: int, n: int, block: int) -> list[int]:
        """Global data positions of this process's ``n`` prompts among the next ``n * world_size`` from ``start``.

        The ``n * world_size`` prompts are cut into blocks of ``block * world_size`` (one PPO mini-batch,
        ``train.global_batch_size`` prompts); of each block, process ``r`` takes the contiguous slice
        ``[r * block, (r + 1) * block)``. A mini-batch therefore holds the same prompts whatever the number
        of processes, and so does every optimizer step. One process: ``start, start + 1, ...``.
        """
        if n % block:
            raise ValueError(f"{n} prompts do not split into blocks of {block}")
        span = block * self.world_size
        return [start + (i // block) * span + self.rank * block + i % block for i in range(n)]

    def prepare(self, model, optimizer):
        """Wrap model and optimizer for the backend (DDP, FSDP2, DeepSpeed); identity in one process."""
        if not self.enabled:
            return model, optimizer
        # Sharded parameters are replaced by the wrapper and every process runs the same modules in
        # each update forward: nothing to touch in backward (see backward).
        self._trainable = [] if self.sharded else [p for p in model.parameters() if p.requires_grad]
        if self.fsdp:
            plugin = self.accelerator.state.fsdp_plugin
            if plugin.transformer_cls_names_to_wrap is None:  # accelerate's default: every _no_split_modules
                # class, and it fails on a class the model does not contain (LLaVA-OneVision lists SigLIP's text side)
                present = {type(m).__name__ for m in model.modules()}
                names = sorted(getattr(model, "_no_split_modules", None) or [])
                plugin.transformer_cls_names_to_wrap = [n for n in names if n in present]
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self._model = model
        return model, optimizer

    def unwrap(self, model):
        """The model under a DDP / DeepSpeed wrapper (a peft model stays a peft model; FSDP2 shards in place)."""
        if not self.enabled:
            return model
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    @contextlib.contextmanager
    def full_weights(self, policy=None):
        """Forwards inside run on full, local weights; every process must enter and leave together.

        DDP, ZeRO-2 and one process: nothing to do. FSDP2: every FSDP unit is unsharded (all-gathered)
        on entry and kept so (no reshard after forward), and resharded on exit; DeepSpeed ZeRO-3:
        ``deepspeed.zero.GatheredParameters`` over all parameters, with the engine's fetch and
        release hooks removed meanwhile. Inside, a forward pass is local and unpaired: each process
        generates until its own rows end, scores its own micro-batches, and the main process
        evaluates while the others wait at a barrier. Outside (the update), a sharded policy scores
        each micro-batch with one full forward (``policy.share_prompt_prefix`` off), so that every
        process runs the same collective model calls whatever its data.
        """
        if not (self.enabled and self.sharded) or self._model is None or self._gathered:
            self._gathered += 1
            try:
                yield
            finally:
                self._gathered -= 1
            return
        if policy is not None and self._shared_prefix is None:
            self._shared_prefix = bool(policy.share_prompt_prefix)
        gather = fsdp2_gathered if self.fsdp else zero3_gathered
        with gather(self._model):
            self._gathered += 1
            if policy is not None:
                policy.share_prompt_prefix = self._shared_prefix
            try:
                yield
            finally:
                self._gathered -= 1
                if policy is not None:
                    policy.share_prompt_prefix = False

    # ------------------------------------------------------------ collectives
    def all_reduce_sum(self, value):
        """Sum of ``value`` (a number or a tensor) over processes."""
        if not self.enabled:
            return value
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self._comm_device()).clone()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        if torch.is_tensor(value):
            return tensor.to(value.dtype).to(value.device)
        return float(tensor) if isinstance(value, float) else type(value)(tensor.item())

    def all_reduce_max(self, value: int) -> int:
        if not self.enabled:
            return value
        tensor = torch.tensor(float(value), dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return type(value)(tensor.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (small picklable objects)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return self.accelerator.device if "nccl" in str(backend) else torch.device("cpu")

    # ----------------------------------------------------------------- update
    def micro_batches(self, n_local: int) -> int:
        """Micro-batches every process runs this update: the most any process has."""
        return self.all_reduce_max(n_local)

    def set_grad_sync(self, model, sync: bool) -> None:
        """Whether the next backward passes synchronise gradients (only the last micro-batch's do).

        Set it before the micro-batch's forward pass (DDP decides there); the same switch as
        ``accelerator.no_sync``, without an indented block.
        """
        if not self.enabled:
            return
        if self.fsdp:  # reduce-scatter after every backward: the sharded gradients accumulate (no_sync would
            sync = True  # keep full unsharded gradients on every process until the last micro-batch)
        self._sync = sync
        self.accelerator.gradient_state._set_sync_gradients(sync)  # DeepSpeed: accumulation boundary
        if hasattr(model, "require_backward_grad_sync"):  # DDP
            model.require_backward_grad_sync = sync

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this process's share of the global loss (DDP, FSDP and DeepSpeed average: scale by world size).

        Under DDP and ZeRO-2 a synchronising backward also touches every trainable parameter
        (``+ 0 * p[0]``), so that each one has a gradient to all-reduce even when this micro-batch
        did not use it (a text-only prompt leaves the vision tower out): DDP then needs no
        ``find_unused_parameters``, and gradients accumulated in earlier micro-batches are always
        synchronised. Sharded backends (FSDP, ZeRO-3) touch nothing: their forwards already run the
        same modules on every process (every prompt has an image; see ``check``).
        """
        if not self.enabled:
            loss.backward()
            return
        if self._sync and self._trainable:
            loss = loss + 0.0 * sum(p.reshape(-1)[0] for p in self._trainable)
        self.accelerator.backward(loss * self.world_size)

    def clip_grad_norm_(self, model, max_norm: float) -> torch.Tensor:
        """Clip the (synchronised) gradients; returns the total norm before clipping.

        Under DeepSpeed the engine clips (``gradient_clipping`` in its config) and steps inside the
        last backward: the norm it measured there (over all processes' gradients, before clipping)
        is returned (``0.0`` before the engine's first step). Under FSDP2 accelerate computes the
        norm over the sharded gradients (a collective).
        """
        if not self.enabled:
            return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if self.deepspeed:
            return torch.tensor(float(model.get_global_grad_norm() or 0.0))
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 may return a DTensor

    # ---------------------------------------------------------------- logging
    def reduce_metrics(self, metrics: dict[str, float], weight_key: str = "num_completions") -> dict[str, float]:
        """One set of step metrics from all processes (the main process logs it).

        ``*/max``, ``*_max`` and ``*/min`` take the extreme, counts (``num_completions``, ``update/rows``,
        ``dapo/*`` counts) are summed, everything else is averaged weighted by ``weight_key``.
        Metrics that are already global (loss, grad norm, lr) are equal on every process, so
        their weighted mean is themselves.
        """
        if not self.enabled:
            return metrics
        gathered = self.gather_objects(metrics)
        weights = [float(m.get(weight_key, 1.0)) for m in gathered]
        out: dict[str, float] = {}
        for key in {k for m in gathered for k in m}:
            values = [(m[key], w) for m, w in zip(gathered, weights) if key in m]
            if key.endswith("/max") or key.endswith("_max"):
                out[key] = max(v for v, _ in values)
            elif key.endswith("/min"):
                out[key] = min(v for v, _ in values)
            elif key in SUMMED_METRICS:
                out[key] = sum(v for v, _ in values)
            else:
                total = sum(w for _, w in values)
                out[key] = sum(v * w for v, w in values) / total if total else values[0][0]
        return {key: out[key] for key in metrics} | {k: v for k, v in out.items() if k not in metrics}

    # ------------------------------------------------------------ checkpoints
    def saving_views(self, model, optimizer):
        """``(model, optimizer)`` as ``save_checkpoint`` reads them (through their ``state_dict()``).

        One process, DDP: the unwrapped model and the optimizer. FSDP: full (unsharded) copies of
        both states on the main process, gathered tensor by tensor (a collective: every process
        calls this; the others get ``(None, None)``). The files are the same as any other run's, so
        a checkpoint of an FSDP run resumes under DDP or in one process, and the reverse.
        """
        if not self.fsdp:
            return self.unwrap(model), optimizer
        weights = full_tensors(self.unwrap(model).state_dict(keep_vars=True), self.is_main)
        packed = torch_optimizer(optimizer).state_dict()
        state = {index: full_tensors(packed["state"][index], self.is_main) for index in sorted(packed["state"])}
        if not self.is_main:
            return None, None
        return StateView(weights), StateView({"state": state, "param_groups": packed["param_groups"]})

    def loading_views(self, model, optimizer):
        """``(model, optimizer)`` for ``load_checkpoint`` to fill; under FSDP each process keeps its shard
        of the checkpoint's full tensors (every process reads the checkpoint)."""
        if self.deepspeed:
            from perceptrl.config import ConfigError

            raise ConfigError("resuming a DeepSpeed run from a checkpoint is not supported (ZeRO keeps its own "
                              "optimizer state); set train.resume=none train.overwrite=true to start over, or use a fresh train.output_dir")
        if not self.fsdp:
            return self.unwrap(model), optimizer
        return ShardingModelLoader(self.unwrap(model)), ShardingOptimizerLoader(optimizer)

    def final_model(self, model):
        """The model the end-of-run save writes, on the main process (a collective under sharding).

        One process, DDP, ZeRO-2: the unwrapped model. FSDP and ZeRO-3: a plain, unsharded copy
        holding the full weights on the main process (the model's class rebuilt from its config,
        the LoRA adapter re-applied); ``None`` on the others. ZeRO-3 needs
        ``stage3_gather_16bit_weights_on_model_save: true`` (``configs/accelerate/zero3.json``).
        """
        if not (self.enabled and self.sharded):
            return self.unwrap(model)
        if self.fsdp:
            weights = full_tensors(self.unwrap(model).state_dict(keep_vars=True), self.is_main)
        else:
            weights = self.accelerator.get_state_dict(model)  # 16-bit weights consolidated on the main process
        return plain_copy(self.unwrap(model), weights) if self.is_main else None

    def gather_rng_states(self) -> list[dict] | None:
        """Every process's random states (python, numpy, torch), on every process; None in one process."""
        if not self.enabled:
            return None
        from perceptrl.train.checkpoint import rng_state

        return self.gather_objects(rng_state())

    def rng_writer(self, states: list[dict] | None):
        """A ``before_commit`` hook for ``save_checkpoint``: writes ``rng_rank<r>.pt`` for r >= 1."""
        if not states:
            return None

        def write(folder: Path) -> None:
            from perceptrl.train.checkpoint import _rng_tensors

            for rank, state in enumerate(states):
                if rank:
                    torch.save(_rng_tensors(state), Path(folder) / RNG_FILE.format(rank=rank))

        return write

    def restore_rng(self, checkpoint: Path) -> bool:
        """Restore this process's random states from ``checkpoint`` (rank 0's are in the trainer state)."""
        if not self.enabled or self.is_main:
            return True
        path = Path(checkpoint) / RNG_FILE.format(rank=self.rank)
        if not path.is_file():  # e.g. saved by a run with fewer processes: every step reseeds anyway
            return False
        from perceptrl.train.checkpoint import _rng_from_tensors, set_rng_state

        set_rng_state(_rng_from_tensors(torch.load(path, weights_only=True, map_location="cpu")))
        return True


SUMMED_METRICS = {"num_completions", "update/rows", "dapo/prompts_kept", "dapo/groups_dropped", "dapo/shortfall"}
