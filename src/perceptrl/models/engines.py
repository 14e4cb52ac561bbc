"""Rollout engines: what generates the completions of a step (``rollout.engine: hf | vllm``).

An engine has three methods:

- ``generate(encoded, rows, max_new_tokens, temperature, top_p, row_seeds, *, texts, images)``
  returns :class:`~perceptrl.models.policy.Completions` for the instances ``rows`` of a step
  (``encoded`` is the processor output of every instance; ``texts[i]`` / ``images[i]`` are the user
  text and images of instance ``i``, for engines that run their own processor);
- ``sync_weights()`` makes the engine generate with the policy's current weights (the loop calls it
  before every rollout step);
- ``release()`` frees what the engine holds during the update (the loop calls it after the rollouts).

:class:`HFEngine` (the default) is ``Policy.generate`` on the training model itself: nothing to
sync, batch-invariant sampling with ``row_seeds``. :class:`~perceptrl.models.vllm_engine.VLLMEngine`
runs vLLM beside the training model (``pip install 'perceptrl[vllm]'``; on CPU
``scripts/install_vllm_env.sh``); it also returns the log-probs it sampled with.
"""

from __future__ import annotations

import torch

from perceptrl.models.policy import Completions, EncodedPrompts, Policy
from perceptrl.models.vllm_engine import VLLMEngine


class HFEngine:
    """Hugging Face generation through :meth:`Policy.generate` (shared prompt cache, batch-invariant).

    ``generation_batch_size``: at most this many completions are generated at once (their key/value
    cache is preallocated together: at 7B and 2,048 new tokens, 240 rows take ~46 GB); None: all of
    the step's rows in one call. With batch-invariant sampling (``row_seeds``) the completions are the
    same whatever the split.
    """

    def __init__(self, policy: Policy, generation_batch_size: int | None = None):
        self.policy = policy
        self.generation_batch_size = generation_batch_size

    def generate(self, encoded: EncodedPrompts, rows, max_new_tokens: int, temperature: float, top_p: float,
                 row_seeds: torch.Tensor | None = None, *, texts=None, images=None) -> Completions:
        rows = torch.as_tensor(rows, dtype=torch.long)
        size = self.generation_batch_size or len(rows)
        parts = []
        for start in range(0, len(rows), max(size, 1)):
            seeds = None if row_seeds is None else row_seeds[start : start + size]
            parts.append(self.policy.generate(encoded, rows[start : start + size], max_new_tokens,
                                              temperature=temperature, top_p=top_p, row_seeds=seeds))
        return parts[0] if len(parts) == 1 else Completions.concat(parts, self.policy.pad_token_id)

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the training model."""

    def release(self) -> None:
        """Nothing to free: the training model is the engine."""


def build_engine(name: str, policy: Policy, model_cfg=None, rollout_cfg=None, seed: int = 0):
    """The engine ``rollout.engine`` names (``hf`` or ``vllm``); ``rollout_cfg`` holds the ``vllm_*`` keys."""
    if name == "hf":
        return HFEngine(policy, getattr(rollout_cfg, "generation_batch_size", None))
    if name == "vllm":
        if model_cfg is None:
            raise ValueError("rollout.engine: vllm needs the model config (model.path, model.dtype)")
        options = {}
        if rollout_cfg is not None:
            options = dict(gpu_memory_utilization=rollout_cfg.vllm_gpu_memory_utilization, sleep=rollout_cfg.vllm_sleep,
                           max_model_len=rollout_cfg.vllm_max_model_len, enforce_eager=rollout_cfg.vllm_enforce_eager)
        return VLLMEngine(policy, model_cfg.path, dtype=model_cfg.dtype, seed=seed, **options)
    raise ValueError(f"rollout.engine must be hf or vllm, got {name!r}")
