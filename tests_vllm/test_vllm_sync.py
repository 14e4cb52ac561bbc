"""Weight syncs: after the training model changes, vLLM generates as an engine started on the new weights.

Every test here starts its own engines (a process holds one live engine at a time)."""

import copy
import time

import pytest
import torch

from perceptrl.models.policy import Policy
from test_vllm_engine import max_diff, reference_logprobs, texts_and_images


def perturb(model, scale: float, seed: int) -> None:
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def test_weight_sync_matches_a_fresh_engine(copy_policy, samples):
    """After a weight change and a sync, vLLM generates differently, and exactly as an engine started on
    the new weights; with LoRA, as the training model with its adapter (merged on the fly)."""
    from perceptrl.config import LoraSettings
    from perceptrl.models.lora import apply_lora
    from perceptrl.models.vllm_engine import VLLMEngine

    policy = copy_policy()
    texts, images = texts_and_images(samples, long=True)  # prompts over one prefix-cache block
    encoded = policy.encode(texts, images)
    rows, seeds = torch.arange(len(samples)), torch.arange(len(samples)) + 5

    def run(engine):
        return engine.generate(encoded, rows, 24, 1.0, 1.0, seeds, texts=texts, images=images)

    engine = VLLMEngine(policy, "warmstart", dtype="float32")
    engine.sync_weights()
    before = run(engine)
    perturb(policy.model, 0.02, seed=0)
    t0 = time.perf_counter()
    engine.sync_weights()
    print(f"weight sync (warm start, {sum(p.numel() for p in policy.model.parameters())} parameters): "
          f"{time.perf_counter() - t0:.3f} s")
    after = run(engine)
    assert after.ids.tolist() != before.ids.tolist()
    assert max_diff(after.logprobs, reference_logprobs(policy, encoded, rows, after.ids, after.mask), after.mask) < 1e-4
    changed = Policy(copy.deepcopy(policy.model), policy.processor)

    apply_lora(policy, LoraSettings(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)  # peft starts B at 0
    engine.sync_weights()
    lora = run(engine)
    assert lora.ids.tolist() != after.ids.tolist()
    assert max_diff(lora.logprobs, reference_logprobs(policy, encoded, rows, lora.ids, lora.mask), lora.mask) < 1e-4

    fresh = VLLMEngine(changed, "tiny", dtype="float32")  # saved from the changed policy; closes `engine`
    fresh.sync_weights()
    again = run(fresh)
    fresh.close()
    assert again.ids.tolist() == after.ids.tolist()
    assert max_diff(again.logprobs, after.logprobs, after.mask) < 1e-6
    with pytest.raises(RuntimeError, match="closed"):
        run(engine)


def test_without_the_prefix_cache_reset_outputs_would_be_stale(copy_policy, samples):
    """Why sync_weights empties vLLM's prefix cache: prompt key/values computed with the old weights
    would be reused for prompts seen before (full 128-token blocks), giving wrong log-probs."""
    from perceptrl.models.vllm_engine import VLLMEngine

    policy = copy_policy()
    texts, images = texts_and_images(samples[:3], long=True)
    encoded = policy.encode(texts, images)
    rows, seeds = torch.arange(3), torch.arange(3)
    engine = VLLMEngine(policy, "warmstart", dtype="float32")
    engine.sync_weights()
    engine.generate(encoded, rows, 8, 1.0, 1.0, seeds, texts=texts, images=images)  # fills the prefix cache
    perturb(policy.model, 0.05, seed=1)
    engine.llm.reset_prefix_cache = lambda *a, **k: True  # what the sync would do, undone
    engine.sync_weights()
    stale = engine.generate(encoded, rows, 8, 1.0, 1.0, seeds, texts=texts, images=images)
    reference = reference_logprobs(policy, encoded, rows, stale.ids, stale.mask)
    diff = max_diff(stale.logprobs, reference, stale.mask)
    engine.close()
    print(f"without the prefix-cache reset: max abs log-prob diff {diff:.2f}")
    assert diff > 1e-2
