"""The speed paths of ``Policy`` compute what the plain paths compute, for every tiny family.

- ``share_prompt_prefix``: each distinct prompt runs once and its key/value cache is shared by the
  rows that repeat it; log-probs, entropies and gradients equal one full forward per row.
- ``fast_generation``: our sampling loop over that shared cache; greedy decoding equals
  ``model.generate``'s token for token, and its logits equal scoring.
"""

import copy

import pytest
import torch

from perceptrl.models.families import FAMILY_NAMES, build_tiny_family
from perceptrl.models.policy import Policy
from perceptrl.models.sampling import sample_categorical, sample_top_p, top_p_filter


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def policy(request):
    model, processor = build_tiny_family(request.param, seed=0)
    model.eval()
    return Policy(model, processor)


def _encoded(policy, rgb_images):
    texts = ["How many red circles?", "x", "Count the shapes in both pictures, then answer.", "no image"]
    images = [[rgb_images[0]], [rgb_images[1]], [rgb_images[2], rgb_images[0]], []]
    return policy.encode(texts, images)


def test_shared_prefix_scores_and_gradients_equal_full_forward(policy, rgb_images):
    assert policy.share_prompt_prefix and policy.fast_generation
    enc = _encoded(policy, rgb_images)
    rows = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    torch.manual_seed(0)
    out = policy.generate(enc, rows, max_new_tokens=12)
    ids, mask = out.ids.clone(), out.mask.clone()
    results = {}
    for shared in (True, False):
        model = copy.deepcopy(policy.model).train()
        p = Policy(model, policy.processor)
        p.share_prompt_prefix = shared
        scored = p.score(enc, rows, ids, mask, with_entropy=True, keep_hidden=True)
        loss = (scored["logprobs"] * mask).sum() / mask.sum()
        loss.backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        results[shared] = (scored, grads)
    (a, ga), (b, gb) = results[True], results[False]
    m = mask.bool()
    assert torch.allclose(a["logprobs"][m], b["logprobs"][m], atol=1e-5)
    assert torch.allclose(a["entropy"][m], b["entropy"][m], atol=1e-4)
    assert torch.allclose(a["hidden"][m], b["hidden"][m], atol=1e-4)
    assert ga.keys() == gb.keys() and any("visual" in k or "vision" in k for k in ga)
    for key in ga:
        assert torch.allclose(ga[key], gb[key], atol=1e-5, rtol=1e-3), key


def test_fast_greedy_generation_equals_model_generate(policy, rgb_images):
    enc = _encoded(policy, rgb_images)
    rows = torch.tensor([0, 0, 1, 2, 2, 3])
    outs = {}
    for fast in (True, False):
        policy.fast_generation = fast
        try:
            outs[fast] = policy.generate(enc, rows, max_new_tokens=10, do_sample=False, return_logprobs=True)
        finally:
            policy.fast_generation = True
    a, b = outs[True], outs[False]
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.ids[a.mask.bool()], b.ids[b.mask.bool()])
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_fast_sampling_respects_suppression_eos_and_rows(policy, rgb_images):
    enc = _encoded(policy, rgb_images)
    rows = torch.tensor([3, 0, 0, 2, 1, 1, 1])  # any order, repeats
    torch.manual_seed(3)
    out = policy.generate(enc, rows, max_new_tokens=16, temperature=0.7, top_p=0.9, return_logprobs=True)
    assert torch.equal(out.rows, rows) and out.ids.shape[0] == len(rows)
    assert not torch.isin(out.ids[out.mask.bool()], torch.tensor(policy.suppressed_token_ids)).any()
    ended = out.mask.sum(-1) < out.ids.shape[1]
    assert (out.ids[ended.nonzero().flatten()] == policy.pad_token_id).any(-1).all()  # padding after the end
    with torch.no_grad():
        scored = policy.score(enc, rows, out.ids, out.mask, temperature=0.7)
    m = out.mask.bool()
    assert torch.allclose(scored["logprobs"][m], out.logprobs[m], atol=1e-5)


def test_top_p_filter_matches_transformers():
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(5, 50) * 3
    for top_p in (0.3, 0.9, 0.99):
        expected = TopPLogitsWarper(top_p)(None, scores.clone())
        assert torch.equal(top_p_filter(scores.clone(), top_p), expected)


def test_categorical_sampler_distribution_and_zero_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(20000, 1)
    draws = sample_categorical(probs)
    counts = torch.bincount(draws, minlength=6).float() / len(draws)
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts, probs[0], atol=0.015)


def test_top_p_sampler_draws_from_the_transformers_nucleus():
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(1)
    scores = torch.randn(3, 12) * 2
    for top_p in (0.5, 0.9):
        expected = TopPLogitsWarper(top_p)(None, scores.clone()).softmax(-1)  # HF's renormalised nucleus
        probs = scores.softmax(-1)
        draws = sample_top_p(probs.repeat_interleave(20000, dim=0), top_p).view(3, 20000)
        for r in range(3):
            freq = torch.bincount(draws[r], minlength=12).float() / 20000
            assert (freq[expected[r] == 0] == 0).all()
            assert torch.allclose(freq, expected[r], atol=0.015)
