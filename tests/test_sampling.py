"""Batch-invariant sampling: exact Gumbel-max samples, one noise stream per row, any batch."""

import pytest
import torch

from perceptrl.models.sampling import GumbelSampler, gumbel_argmax, gumbel_noise, uniforms

MASK64 = (1 << 64) - 1


def _splitmix_reference(seed: int, n: int) -> list[float]:
    """SplitMix64 (Steele, Lea and Flood 2014) in plain Python integers."""
    out, state = [], seed & MASK64
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append(((z >> 11) + 0.5) * 2.0**-53)
    return out


def test_uniforms_are_splitmix64_bit_for_bit():
    keys = torch.tensor([0, 1, -5, 123456789012345, -(1 << 63), (1 << 63) - 1], dtype=torch.int64)
    u = uniforms(keys, 9)
    for key, row in zip(keys.tolist(), u.tolist()):
        assert row == _splitmix_reference(key, 9)
    assert 0 < float(u.min()) and float(u.max()) < 1


def test_noise_depends_on_row_seed_and_position_only():
    a = gumbel_noise(torch.tensor([7, 8, 9]), position=3, vocab_size=50)
    b = gumbel_noise(torch.tensor([9, 7]), position=3, vocab_size=50)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])  # same (seed, position), any batch
    assert not torch.equal(a[0], gumbel_noise(torch.tensor([7]), position=4, vocab_size=50)[0])
    assert not torch.equal(a[0], a[1])


def test_gumbel_argmax_samples_the_softmax():
    n = 40_000
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, -float("inf")])
    tokens = gumbel_argmax(logits.repeat(n, 1), torch.arange(n), position=0)
    freq = torch.bincount(tokens, minlength=5).double() / n
    expected = logits.double().softmax(-1)
    # 4 standard errors of a binomial proportion at n = 40k
    assert torch.all((freq - expected).abs() <= 4 * (expected * (1 - expected) / n).sqrt() + 1e-12), (freq, expected)
    assert freq[4] == 0  # a filtered token is never drawn


def test_processor_applies_temperature_and_top_p():
    n = 40_000
    scores = torch.tensor([[2.0, 1.0, 0.0, -3.0]]).repeat(n, 1)
    processor = GumbelSampler(torch.arange(n), prompt_length=5, temperature=0.5, top_p=0.9)
    out = processor(torch.zeros(n, 7, dtype=torch.long), scores.clone())
    freq = torch.bincount(out.argmax(-1), minlength=4).double() / n
    tempered = (scores[0].double() / 0.5).softmax(-1)  # [0.867, 0.117, 0.016, 0.000]: top-p 0.9 keeps two
    expected = torch.tensor([tempered[0], tempered[1], 0, 0]) / (tempered[0] + tempered[1])
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    # position comes from the ids' length: 2 tokens generated so far
    kept = scores[:3, :2].double() / 0.5 + gumbel_noise(torch.arange(3), 2, 4)[:, :2]
    assert torch.equal(out[:3, :2], kept) and torch.isinf(out[:, 2:]).all()


@pytest.fixture
def encoded(tiny_policy, rgb_images):
    texts = ["How many red circles?", "x", "Count the shapes, then answer."]
    return tiny_policy.encode(texts, [[rgb_images[0]], [rgb_images[1]], [rgb_images[2]]])


def test_completions_do_not_depend_on_the_batch(tiny_policy, encoded):
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    seeds = torch.tensor([11, 12, 21, 22, 31, 32])
    torch.manual_seed(0)
    whole = tiny_policy.generate(encoded, rows, max_new_tokens=16, top_p=0.95, row_seeds=seeds)
    torch.manual_seed(1)  # the global RNG plays no part
    order = torch.tensor([5, 2, 3])
    part = tiny_policy.generate(encoded, rows[order], max_new_tokens=16, top_p=0.95, row_seeds=seeds[order])
    for i, r in enumerate(order.tolist()):
        n = int(whole.mask[r].sum())
        assert int(part.mask[i].sum()) == n
        assert torch.equal(part.ids[i, :n], whole.ids[r, :n])
    assert not torch.equal(whole.ids[0], whole.ids[1])  # rows of one group differ


def test_logprobs_are_those_of_the_unperturbed_distribution(tiny_policy, encoded):
    rows = torch.tensor([0, 0, 1, 2])
    out = tiny_policy.generate(encoded, rows, max_new_tokens=16, temperature=1.0, return_logprobs=True,
                               row_seeds=torch.arange(4))
    with torch.no_grad():
        scored = tiny_policy.score(encoded, out.rows, out.ids, out.mask)["logprobs"]
    mask = out.mask.bool()
    assert torch.allclose(scored[mask], out.logprobs[mask], atol=1e-5)


def test_hf_generate_path_samples_the_same_tokens(tiny_policy, encoded):
    rows, seeds = torch.tensor([0, 1, 2, 2]), torch.tensor([5, 6, 7, 8])
    fast = tiny_policy.generate(encoded, rows, max_new_tokens=12, temperature=0.8, top_p=0.95, row_seeds=seeds)
    tiny_policy.fast_generation = False
    try:
        slow = tiny_policy.generate(encoded, rows, max_new_tokens=12, temperature=0.8, top_p=0.95, row_seeds=seeds)
    finally:
        tiny_policy.fast_generation = True
    for r in range(len(rows)):
        n = int(fast.mask[r].sum())
        assert torch.equal(fast.ids[r, :n], slow.ids[r, :n])


def test_engines(tiny_policy, encoded):
    from perceptrl.config import ConfigError, load_config
    from perceptrl.models.engines import HFEngine, build_engine

    engine = build_engine("hf", tiny_policy)
    assert isinstance(engine, HFEngine)
    engine.sync_weights()  # nothing to copy: generation runs on the training model
    engine.release()  # nothing to free
    rows, seeds = torch.tensor([0, 1]), torch.tensor([3, 4])
    a = engine.generate(encoded, rows, 8, 1.0, 1.0, seeds, texts=None, images=None)
    b = tiny_policy.generate(encoded, rows, 8, row_seeds=seeds)
    assert torch.equal(a.ids, b.ids)
    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(None, ["rollout.engine=sglang"])
    try:
        import vllm  # noqa: F401
    except ImportError:  # the usual case here: the message says how to get it
        from perceptrl.config import ModelConfig

        # one line naming the fix (a ConfigError: the CLI prints it and exits 2)
        with pytest.raises(ConfigError, match=r"needs vLLM, which is not installed.*pip install 'perceptrl\[vllm\]'"):
            build_engine("vllm", tiny_policy, ModelConfig(path="/models/x"))


def test_generation_in_batches_gives_the_same_completions(tiny_policy, encoded):
    """rollout.generation_batch_size bounds the rows generated at once; batch-invariant sampling makes
    the completions (and their padding to the longest) the same as one call's."""
    from perceptrl.models.engines import HFEngine

    rows = torch.tensor([0, 0, 1, 1, 0, 1, 1])
    seeds = torch.arange(7, dtype=torch.int64) * 7919 + 5
    whole = HFEngine(tiny_policy).generate(encoded, rows, 12, 1.0, 0.9, seeds)
    split = HFEngine(tiny_policy, generation_batch_size=3).generate(encoded, rows, 12, 1.0, 0.9, seeds)
    for key in ("ids", "mask", "rows", "truncated"):
        assert torch.equal(getattr(whole, key), getattr(split, key)), key
    assert whole.mask.sum(-1).min() < whole.ids.shape[1]  # some rows ended early: the padding was exercised


def _top_p_cases():
    """Logits that exercise every branch of the threshold filter: plain, tied at the boundary, -inf, inf."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for vocab in (2, 5, 264, 4000):
        for scale in (0.1, 1.0, 4.0, 30.0):
            x = torch.randn(24, vocab, generator=g) * scale
            cases += [x, x.double(), (x * 2).round() / 2, x.bfloat16().float()]  # the last two: many ties
            y = x.clone()
            y[:, : vocab // 3] = -float("inf")  # suppressed tokens
            y[0] = -float("inf")  # nothing left to keep
            y[1, -1] = float("inf")
            cases.append(y)
    return cases


def test_threshold_top_p_filter_equals_the_sorted_filter(monkeypatch):
    import perceptrl.models.sampling as sampling_module
    from perceptrl.models.sampling import top_p_filter, top_p_filter_sorted, top_p_filter_threshold

    fallback_rows = []
    sorted_filter = sampling_module.top_p_filter_sorted
    monkeypatch.setattr(sampling_module, "top_p_filter_sorted",
                        lambda s, p: fallback_rows.append(s.shape[0]) or sorted_filter(s, p))
    checked = 0
    for scores in _top_p_cases():
        for top_p in (0.05, 0.3, 0.9, 0.95, 0.99, 0.999):
            expected = sorted_filter(scores, top_p)
            fast = top_p_filter_threshold(scores, top_p)
            assert fast is not None
            assert torch.equal(fast, expected), (scores.shape, top_p)  # bit for bit, -inf where the plain one has it
            assert torch.equal(top_p_filter(scores, top_p), expected)
            checked += 1
    assert checked == 6 * 4 * 4 * 5
    assert fallback_rows and sum(fallback_rows) < 24 * checked / 4  # split ties occur, on a few rows only
    # Not applicable: NaN, half precision, a tensor that needs gradients. top_p = 1: nothing filtered.
    x = torch.randn(3, 10)
    x[1, 4] = float("nan")
    assert top_p_filter_threshold(x, 0.9) is None
    assert torch.equal(top_p_filter(x, 0.9).isnan(), top_p_filter_sorted(x, 0.9).isnan())
    assert top_p_filter_threshold(torch.randn(3, 10).bfloat16(), 0.9) is None
    assert top_p_filter_threshold(torch.randn(3, 10, requires_grad=True), 0.9) is None
    y = torch.randn(3, 10)
    assert top_p_filter(y, 1.0) is y


def test_fast_top_p_generates_the_same_tokens(tiny_policy, encoded):
    rows, seeds = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), torch.arange(8) * 7 + 1
    outs = {}
    for fast in (True, False):
        tiny_policy.fast_top_p = fast
        try:
            outs[fast] = tiny_policy.generate(encoded, rows, max_new_tokens=24, temperature=0.9, top_p=0.9,
                                              return_logprobs=True, row_seeds=seeds)
        finally:
            tiny_policy.fast_top_p = True
    a, b = outs[True], outs[False]
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask) and torch.equal(a.logprobs, b.logprobs)
    # the filter was at work: a token outside some step's nucleus would have been drawn at top-p 1
    c = tiny_policy.generate(encoded, rows, max_new_tokens=24, temperature=0.9, top_p=1.0, row_seeds=seeds)
    assert not torch.equal(a.ids, c.ids)
