"""Rollout engines: what generates the completions of a step (``rollout.engine: hf | vllm``).

An engine has two methods:

- ``generate(encoded, rows, max_new_tokens, temperature, top_p, row_seeds, *, texts, images)``
  returns :class:`~perceptrl.models.policy.Completions` for the instances ``rows`` of a step
  (``encoded`` is the processor output of every instance; ``texts[i]`` / ``images[i]`` are the user
  text and images of instance ``i``, for engines that run their own processor);
- ``sync_weights()`` makes the engine generate with the policy's current weights (the loop calls it
  before every rollout).

:class:`HFEngine` (the default) is ``Policy.generate`` on the training model itself: nothing to
sync, batch-invariant sampling with ``row_seeds``. :class:`VLLMEngine` runs vLLM beside the training
model on the same GPU (``pip install 'perceptrl[vllm]'``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from perceptrl.models.policy import Completions, EncodedPrompts, Policy


class HFEngine:
    """Hugging Face generation through :meth:`Policy.generate` (shared prompt cache, batch-invariant)."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def generate(self, encoded: EncodedPrompts, rows, max_new_tokens: int, temperature: float, top_p: float,
                 row_seeds: torch.Tensor | None = None, *, texts=None, images=None) -> Completions:
        return self.policy.generate(encoded, rows, max_new_tokens, temperature=temperature, top_p=top_p,
                                    row_seeds=row_seeds)

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the training model."""


class VLLMEngine:
    """Generation with vLLM for GPU users: ``rollout.engine: vllm``.

    NOT TESTED in perceptrl's own test suite: its machines have no GPU and vLLM does not run on
    CPU there. The surface is kept small on purpose: one ``vllm.LLM`` built from ``model.path`` (an
    HF folder), prompts built with the policy's own chat template and images, one request per
    completion with its own seed (``SamplingParams(seed=row seed)``: per-row reproducible, but not
    the same stream as the HF engine's Gumbel sampler), and a weight copy from the training model
    before every rollout (``sync_weights``, through vLLM's ``load_weights``; LoRA adapters are
    merged first). Vision special tokens get a large negative logit bias, as ``Policy.generate``
    suppresses them. Log-probs are not taken from vLLM: the update re-scores every completion with
    the training model, as with the HF engine. Multi-process runs give each process its own
    engine (no tensor parallelism).
    """

    def __init__(self, policy: Policy, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.3,
                 max_images_per_prompt: int = 4):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "rollout.engine: vllm needs the vLLM package and a CUDA GPU: pip install 'perceptrl[vllm]' "
                "(or set rollout.engine: hf)"
            ) from err
        if model_path.startswith("tiny") or model_path == "warmstart":
            raise ValueError("rollout.engine: vllm needs model.path to be a Hugging Face model folder")
        self.policy = policy
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=True, limit_mm_per_prompt={"image": max_images_per_prompt})

    def generate(self, encoded: EncodedPrompts, rows, max_new_tokens: int, temperature: float, top_p: float,
                 row_seeds: torch.Tensor | None = None, *, texts: Sequence[str], images: Sequence[Sequence[Any]]
                 ) -> Completions:
        from vllm import SamplingParams

        rows = torch.as_tensor(rows, dtype=torch.long)
        policy = self.policy
        bias = {int(t): -100.0 for t in policy.suppressed_token_ids}
        requests, params = [], []
        for i, row in enumerate(rows.tolist()):
            request: dict[str, Any] = {"prompt": policy.chat_text(texts[row], len(images[row]))}
            if images[row]:
                request["multi_modal_data"] = {"image": list(images[row])}
            requests.append(request)
            seed = int(row_seeds[i]) & 0x7FFFFFFF if row_seeds is not None else None
            params.append(SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                         stop_token_ids=[policy.eos_token_id], logit_bias=bias or None))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        token_ids = [list(out.outputs[0].token_ids) for out in outputs]
        length = max(1, max(len(t) for t in token_ids))
        ids = torch.full((len(token_ids), length), policy.pad_token_id, dtype=torch.long)
        for i, t in enumerate(token_ids):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return policy._completions(ids.to(policy.device), rows, None, temperature)

    def sync_weights(self) -> None:
        from perceptrl.models.lora import is_lora, merged_model, unwrap

        model = unwrap(self.policy.model)
        source = merged_model(model) if is_lora(model) else model
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner  # vLLM internals: version-bound
        runner.model.load_weights(source.state_dict().items())


def build_engine(name: str, policy: Policy, model_cfg=None):
    """The engine ``rollout.engine`` names (``hf`` or ``vllm``)."""
    if name == "hf":
        return HFEngine(policy)
    if name == "vllm":
        if model_cfg is None:
            raise ValueError("rollout.engine: vllm needs the model config (model.path, model.dtype)")
        return VLLMEngine(policy, model_cfg.path, dtype=model_cfg.dtype)
    raise ValueError(f"rollout.engine must be hf or vllm, got {name!r}")
