"""vLLM generates what the training model would: greedy tokens, log-probs, seeds, views, weight syncs.

The reference is always the training model (``Policy``) on the same pixel values (112 px images:
both processors leave them unresized). vLLM's log-probs are those of the distribution it sampled
from (temperature applied, vision special tokens suppressed), so the reference applies the same.
"""

import pytest
import torch

from perceptrl.models.logits import output_head
from perceptrl.models.policy import Policy
from perceptrl.rewards import get_template

TEMPLATE = get_template("boxed")


@pytest.fixture(scope="module")
def engine(warm):
    """One vLLM engine on the warm start, shared by this module's tests (none changes weights)."""
    from perceptrl.models.vllm_engine import VLLMEngine

    engine = VLLMEngine(warm, "warmstart", dtype="float32")
    engine.sync_weights()
    yield engine
    engine.close()


def texts_and_images(samples, long: bool = False):
    """User texts and images; ``long``: prompts over 128 tokens (more than one block of vLLM's prefix cache)."""
    tail = " Look at the picture carefully before you answer." * (2 if long else 0)
    return [TEMPLATE.instruction(s.problem) + tail for s in samples], [list(s.images) for s in samples]


@torch.no_grad()
def reference_logprobs(policy: Policy, encoded, rows, ids, mask, temperature: float = 1.0) -> torch.Tensor:
    """The training model's log-probs of ``ids`` under the distribution vLLM samples from."""
    hidden = policy.score(encoded, rows, ids, mask, keep_hidden=True)["hidden"]
    logits = output_head(policy.model)(hidden).float() / temperature
    logits[..., policy.suppressed_token_ids] = -float("inf")
    return logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask


def max_diff(a, b, mask) -> float:
    return float(((a - b).abs() * mask).max())


def test_greedy_tokens_equal_hf(warm, engine, samples):
    texts, images = texts_and_images(samples)
    encoded = warm.encode(texts, images)
    rows = torch.arange(len(samples))
    hf = warm.generate(encoded, rows, 32, do_sample=False)
    out = engine.generate(encoded, rows, 32, 0.0, 1.0, texts=texts, images=images)
    assert not hf.truncated.all()  # the warm start answers and stops: the stop token is compared too
    assert torch.equal(out.mask.sum(-1), hf.mask.sum(-1))
    assert torch.equal(out.truncated, hf.truncated)
    for r in range(len(rows)):
        n = int(hf.mask[r].sum())
        assert out.ids[r, :n].tolist() == hf.ids[r, :n].tolist(), warm.decode(out.ids[r:r + 1], out.mask[r:r + 1])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_hf(warm, engine, samples, temperature):
    texts, images = texts_and_images(samples, long=True)
    encoded = warm.encode(texts, images)
    rows = torch.arange(len(samples)).repeat_interleave(2)  # two completions per prompt (shared prefix cache)
    seeds = torch.arange(len(rows)) + 100
    out = engine.generate(encoded, rows, 24, temperature, 1.0, seeds, texts=texts, images=images)
    assert encoded.attention_mask.sum(-1).min() >= 128  # prompts of more than one 128-token cache block
    ref = reference_logprobs(warm, encoded, rows, out.ids, out.mask, temperature)
    diff = max_diff(out.logprobs, ref, out.mask)
    print(f"vLLM vs HF sampled-token log-probs, T={temperature}: max abs diff {diff:.2e} "
          f"over {int(out.mask.sum())} tokens")
    assert diff < 1e-4
    assert len({tuple(r) for r in out.ids.tolist()}) > len(samples)  # the two samples of a prompt differ


def test_a_completion_depends_on_its_seed_only(warm, engine, samples):
    texts, images = texts_and_images(samples[:3])
    encoded = warm.encode(texts, images)
    rows, seeds = torch.tensor([0, 1, 2, 1]), torch.tensor([7, 8, 9, 10])
    batch = engine.generate(encoded, rows, 24, 1.0, 1.0, seeds, texts=texts, images=images)
    alone = engine.generate(encoded, rows[1:2], 24, 1.0, 1.0, seeds[1:2], texts=texts, images=images)
    n = int(alone.mask.sum())
    assert batch.ids[1, :n].tolist() == alone.ids[0, :n].tolist() and int(batch.mask[1].sum()) == n
    assert batch.ids[1].tolist() != batch.ids[3].tolist()  # same prompt, another seed


def test_top_p_is_applied(warm, engine, samples):
    """With top-p, vLLM's log-probs are renormalised over the nucleus: >= the full softmax's."""
    texts, images = texts_and_images(samples[:2])
    encoded = warm.encode(texts, images)
    rows = torch.tensor([0, 0, 1, 1])
    out = engine.generate(encoded, rows, 24, 1.0, 0.5, torch.arange(4), texts=texts, images=images)
    full = reference_logprobs(warm, encoded, rows, out.ids, out.mask)
    assert bool(((out.logprobs - full) * out.mask >= -1e-4).all())


@pytest.mark.parametrize("recipe, overrides", [
    ("noisy_rollout", ["noisy_rollout.schedule=constant"]),  # n1 clean + n2 DDPM-noised rollouts
    ("noisy_grpo", []),  # a ladder of noise levels
    ("dupl", []),  # paper: x and T(x) both generate
    ("dupl", ["dupl.variant=released"]),  # released: clean rollouts, T(x) per rollout for scoring only
    ("papo_g", []),  # clean rollouts, masked view for scoring only
])
def test_every_plan_generates_from_its_views(warm, engine, samples, recipe, overrides):
    """Each completion's vLLM log-probs are the training model's under the view it was generated from,
    and not under the clean image (the views differ enough to tell)."""
    from perceptrl.config import load_config
    from perceptrl.train.recipe import build_recipe
    from perceptrl.train.rollout import collect_rollout

    config = load_config(f"recipes/{recipe}.yaml", ["model.path=warmstart", "rollout.n=4"] + overrides)
    plan = build_recipe(config)
    rollout = collect_rollout(warm, samples[:2], plan.gen_specs(5), TEMPLATE, 16, 1.0, 1.0,
                              seed_of=lambda p, name: hash((p, name)) % 2**31, scoring_views=plan.scoring_views(5),
                              row_seeds=True, engine=engine)
    comp = rollout.completions
    assert len(rollout) == 2 * sum(spec.count for spec in plan.gen_specs(5))
    own = reference_logprobs(warm, rollout.prompts, comp.rows, comp.ids, comp.mask)
    assert max_diff(comp.logprobs, own, comp.mask) < 1e-4
    noisy = torch.tensor([v != "clean" for v in rollout.gen_view])
    if noisy.any():
        clean_rows = rollout.rows_for_view("clean")
        clean = reference_logprobs(warm, rollout.prompts, clean_rows, comp.ids, comp.mask)
        assert max_diff(comp.logprobs[noisy], clean[noisy], comp.mask[noisy]) > 1e-3


def test_release_and_sleep_mode(engine):
    """CPU has no sleep mode: the engine says so (see the log) and keeps its memory; release is harmless."""
    assert engine.on_cpu and not engine.sleep
    engine.release()
    assert not engine.asleep
