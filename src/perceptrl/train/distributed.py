"""Multi-process training through ``accelerate``: a small wrapper that is a no-op in one process.

Launch with ``accelerate launch --config_file configs/accelerate/<name>.yaml -m perceptrl.cli train ...``
(GPUs) or ``torchrun --nproc_per_node N -m perceptrl.cli train ...`` (CPU, gloo). In one process
(``WORLD_SIZE`` unset or 1) nothing here touches ``torch.distributed``, and the loop runs exactly as
it would without this module.

How the work is split (see docs/SCALING.md):
- every process holds a full copy of the model and generates, scores and evaluates on its own: a
  step's ``train.prompts_per_step`` prompts are cut into one contiguous slice per process, and whole
  groups stay on one process (``prompts_per_step`` must divide by the number of processes);
- the update's loss denominators are global: the token and sequence counts of the update batch are
  summed over processes (:meth:`Distributed.all_reduce_sum`). DDP (and DeepSpeed) *average* the
  gradients over processes, so the loss is multiplied by the world size before the backward pass
  (:meth:`Distributed.backward`): the summed micro-batch losses of all processes are then the loss
  of the whole update batch, and so is the gradient;
- gradients are synchronised once per optimizer step: every process runs the same number of
  micro-batches (a process with fewer update rows runs zero-weight ones, :meth:`micro_batches`), and
  only the last one's backward all-reduces (DDP ``no_sync`` on the others);
- logging, evaluation and checkpoint writing happen on the main process; the others wait at a
  barrier. Each process saves its own random states next to the checkpoint (``rng_rank<r>.pt``).

Backends: DDP (gloo on CPU, NCCL on GPU) and DeepSpeed ZeRO-2 (parameters replicated, gradients and
optimizer states partitioned). Tested here: DDP on CPU (``tests/test_distributed.py``); the NCCL and
DeepSpeed paths are written for GPUs and not tested on this project's CPU machines. Parameter sharding (FSDP, ZeRO-3) is refused with a clear error: it
turns every forward pass into a collective operation, and the rollout's forwards (generation until
each process's own rows end, evaluation on the main process) are not synchronised across processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

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
        self.deepspeed = accelerator is not None and accelerator.distributed_type.name == "DEEPSPEED"
        self._trainable: list[torch.Tensor] = []  # set by prepare
        self._sync = True

    # ------------------------------------------------------------------ setup
    @classmethod
    def from_environment(cls) -> "Distributed":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # broadcast_buffers=False: no collective in a forward pass, since processes generate,
        # score and evaluate on their own (a DDP buffer broadcast would pair unrelated forwards).
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=False)
        accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
        kind = accelerator.distributed_type.name
        from perceptrl.config import ConfigError

        if kind in ("FSDP", "MEGATRON_LM"):
            raise ConfigError(_SHARDING_MESSAGE.format(what=kind))
        if kind == "DEEPSPEED" and accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ConfigError(_SHARDING_MESSAGE.format(what="DeepSpeed ZeRO-3"))
        return cls(accelerator)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device of this process (None in a single process: the config decides)."""
        return self.accelerator.device if self.enabled else None

    def check(self, train_cfg) -> None:
        """Refuse training settings this process layout cannot run correctly."""
        from perceptrl.config import ConfigError

        self.check_divisible(train_cfg.prompts_per_step)
        if self.deepspeed and train_cfg.save_steps:
            raise ConfigError("train.save_steps: checkpoints of DeepSpeed runs are not supported yet (ZeRO "
                              "partitions the optimizer state over processes); set train.save_steps=0")

    def check_divisible(self, prompts_per_step: int) -> None:
        if prompts_per_step % self.world_size:
            from perceptrl.config import ConfigError

            raise ConfigError(
                f"train.prompts_per_step ({prompts_per_step}) must be divisible by the number of processes "
                f"({self.world_size}): each process takes whole groups of an equal slice of the step's prompts"
            )

    def prepare(self, model, optimizer):
        """Wrap model and optimizer for the backend (DDP, DeepSpeed); identity in one process."""
        if not self.enabled:
            return model, optimizer
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model):
        """The model under a DDP / DeepSpeed wrapper (a peft model stays a peft model)."""
        if not self.enabled:
            return model
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

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
        self._sync = sync
        self.accelerator.gradient_state._set_sync_gradients(sync)  # DeepSpeed: accumulation boundary
        if hasattr(model, "require_backward_grad_sync"):  # DDP
            model.require_backward_grad_sync = sync

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this process's share of the global loss (DDP averages: scale by world size).

        A synchronising backward also touches every trainable parameter (``+ 0 * p[0]``), so that
        each one has a gradient to all-reduce even when this micro-batch did not use it (a
        text-only prompt leaves the vision tower out): DDP then needs no ``find_unused_parameters``,
        and gradients accumulated in earlier micro-batches are always synchronised.
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
        last backward: the norm is not measured here and ``0.0`` is returned.
        """
        if not self.enabled:
            return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if self.deepspeed:
            return torch.tensor(0.0)
        return self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    # ---------------------------------------------------------------- logging
    def reduce_metrics(self, metrics: dict[str, float], weight_key: str = "num_completions") -> dict[str, float]:
        """One set of step metrics from all processes (the main process logs it).

        ``*/max`` and ``*/min`` take the extreme, counts (``num_completions``, ``update/rows``,
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
            if key.endswith("/max"):
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

_SHARDING_MESSAGE = (
    "{what} is not supported yet: it shards the parameters, so every forward pass becomes a collective "
    "operation, while perceptrl's processes generate, score and evaluate independently. Use DDP "
    "(configs/accelerate/ddp.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/zero2.yaml), with LoRA "
    "if the model does not fit; see docs/SCALING.md"
)
