"""Loss terms and aggregation (spec sections 1 and 4)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perceptrl.algorithms import (
    AGG_MODES,
    LOSS_TERMS,
    aggregate,
    chunked_entropy,
    clipped_surrogate,
    count_tokens_and_seqs,
    entropy_from_logits,
    importance_ratio,
    kl_penalty,
    perception_kl,
)

LN = math.log


# ------------------------------------------------------------------ ratio and clipped surrogate


def test_importance_ratio_clamp():
    lp = torch.tensor([[0.0, 50.0, -50.0, LN(2.0)]])
    r = importance_ratio(lp, torch.zeros_like(lp))
    torch.testing.assert_close(r, torch.tensor([[1.0, math.exp(20), math.exp(-20), 2.0]]))


def _surrogate_case():
    ratios = torch.tensor([[0.5, 1.0, 1.5, 5.0], [0.5, 1.0, 1.5, 5.0]])
    old = torch.zeros(2, 4)
    return ratios.log(), old, torch.tensor([2.0, -1.0])


def test_clipped_surrogate_by_hand():
    lp, old, A = _surrogate_case()
    loss, st_ = clipped_surrogate(lp, old, A, torch.ones(2, 4), eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    # A = 2:  -min(r A, clip(r, .8, 1.28) A): r=.5 -> -min(1, 1.6) = -1; r=1 -> -2; r=1.5, 5 -> -2.56 (high clip)
    # A = -1: r=.5 -> -min(-.5, -.8) = .8 (low clip); r=1 -> 1; r=1.5 -> 1.5; r=5 -> 5, dual clip -> min(5, 3) = 3
    want = torch.tensor([[-1.0, -2.0, -2.56, -2.56], [0.8, 1.0, 1.5, 3.0]])
    torch.testing.assert_close(loss, want)
    assert st_["clip_frac_low"].item() == pytest.approx(1 / 8)
    assert st_["clip_frac_high"].item() == pytest.approx(2 / 8)
    assert st_["dual_clip_frac"].item() == pytest.approx(1 / 8)
    assert st_["ratio_mean"].item() == pytest.approx(2.0)
    assert st_["token_count"].item() == 8 and st_["clip_high_count"].item() == 2
    assert all(not v.requires_grad and v.dim() == 0 for v in st_.values())
    # no dual clip: the A<0, r=5 token keeps its 5
    loss_nd, st_nd = clipped_surrogate(lp, old, A, torch.ones(2, 4), 0.2, 0.28, dual_clip_c=None)
    assert loss_nd[1, 3].item() == pytest.approx(5.0) and st_nd["dual_clip_frac"].item() == 0
    # stats are masked means: drop the last column -> ratio mean (.5 + 1 + 1.5) / 3 = 1, one high clip out of 6
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    _, st_m = clipped_surrogate(lp, old, A, m, 0.2, 0.28)
    assert st_m["ratio_mean"].item() == pytest.approx(1.0)
    assert st_m["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert st_m["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert LOSS_TERMS["clipped_surrogate"] is clipped_surrogate


def test_clipped_surrogate_gradient_and_per_token_advantage():
    lp = torch.zeros(1, 3, requires_grad=True)
    A = torch.tensor([[1.0, -2.0, 0.5]])
    loss, _ = clipped_surrogate(lp, lp.detach(), A, torch.ones(1, 3))
    loss.sum().backward()
    # at ratio 1: l = -A rho, d l / d lp = -A rho = -A
    torch.testing.assert_close(lp.grad, -A)
    # clipped tokens have no gradient: A > 0 and r = 2 > 1.2
    lp2 = torch.tensor([[LN(2.0)]], requires_grad=True)
    loss2, _ = clipped_surrogate(lp2, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    loss2.sum().backward()
    assert lp2.grad.item() == 0.0


def test_clipped_surrogate_bf16():
    lp = torch.randn(2, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    loss, stats = clipped_surrogate(lp, lp, torch.tensor([1.0, -1.0]), torch.ones(2, 5))
    assert loss.dtype == torch.float32  # promoted with the float32 advantages
    assert clipped_surrogate(lp, lp, torch.ones(2, dtype=torch.bfloat16), torch.ones(2, 5))[0].dtype == torch.bfloat16
    assert aggregate(loss.to(torch.bfloat16), torch.ones(2, 5), "token_mean").dtype == torch.float32
    torch.testing.assert_close(loss.float(), torch.tensor([[-1.0] * 5, [1.0] * 5]))
    assert stats["ratio_mean"].dtype == torch.float32


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    B=st.integers(1, 5), T=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
    eps_low=st.floats(0.0, 0.5), eps_high=st.floats(0.0, 0.5), c=st.floats(1.01, 10.0),
)
def test_property_ratio_one_and_dual_clip_bound(B, T, seed, eps_low, eps_high, c):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(B, T, generator=gen) * 3
    lp = torch.randn(B, T, generator=gen)
    mask = torch.ones(B, T)
    loss1, _ = clipped_surrogate(lp, lp, A, mask, eps_low, eps_high, c)
    torch.testing.assert_close(loss1, -A)
    old = lp + torch.randn(B, T, generator=gen) * 2
    loss, stats = clipped_surrogate(lp, old, A, mask, eps_low, eps_high, c)
    neg = A < 0
    assert (loss[neg] <= -c * A[neg] * (1 + 1e-6) + 1e-6).all()
    # the loss never falls below the pessimistic clipped value -(1 + eps_high) A for A > 0
    pos = A > 0
    assert (loss[pos] >= -(1 + eps_high) * A[pos] - 1e-5).all()
    for k in ("clip_frac_low", "clip_frac_high", "dual_clip_frac"):
        assert 0.0 <= stats[k].item() <= 1.0


# ------------------------------------------------------------------ aggregation


def test_aggregate_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(v, m, "token_mean").item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    assert aggregate(v, m, "seq_mean_token_mean").item() == pytest.approx((1.5 + 4) / 2)
    assert aggregate(v, m, "seq_mean_token_sum_norm", max_len=4).item() == pytest.approx(7 / (2 * 4))
    assert aggregate(v, m, "seq_mean_token_sum_norm").item() == pytest.approx(7 / (2 * 3))  # default L = T
    # global denominators replace local counts
    assert aggregate(v, m, "token_mean", global_tokens=14).item() == pytest.approx(0.5)
    assert aggregate(v, m, "seq_mean_token_mean", global_seqs=11).item() == pytest.approx(5.5 / 11)
    assert count_tokens_and_seqs(m) == (3.0, 2.0)
    with pytest.raises(ValueError):
        aggregate(v, m, "sum")
    assert set(AGG_MODES) == {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"}


def test_aggregate_empty_rows_nan_and_all_masked():
    v = torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]], requires_grad=True)
    m = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # the fully masked row neither contributes nor counts as a sequence
    out = aggregate(v, m, "seq_mean_token_mean")
    assert out.item() == pytest.approx(1.5)
    out.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    for mode in AGG_MODES:
        z = aggregate(torch.ones(2, 3), torch.zeros(2, 3), mode)
        assert z.item() == 0.0


def _trim(values, mask):
    # A micro-batch padded to its own longest completion (trailing all-masked columns removed).
    keep = int(mask.sum(0).nonzero().max().item()) + 1 if mask.any() else 1
    return values[:, :keep], mask[:, :keep]


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    B=st.integers(4, 12), T=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(list(AGG_MODES)), empty_rows=st.booleans(),
)
def test_property_micro_batch_split_gives_whole_batch_gradient(B, T, seed, mode, empty_rows):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0 if empty_rows else 1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    w = torch.randn(B, T, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, T, generator=gen, dtype=torch.float64)
    max_len = T + 3

    def values(wp, xp):
        return (wp * xp).tanh() + wp**2

    whole = aggregate(values(w, x), mask, mode, max_len=max_len)
    (g_whole,) = torch.autograd.grad(whole, w)

    tokens, seqs = count_tokens_and_seqs(mask)
    total = 0.0
    for rows in torch.tensor_split(torch.randperm(B, generator=gen), 4):
        vm, mm = _trim(values(w[rows], x[rows]), mask[rows])
        total = total + aggregate(vm, mm, mode, global_tokens=tokens, global_seqs=seqs, max_len=max_len)
    (g_split,) = torch.autograd.grad(total, w)
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(g_split, g_whole)


# ------------------------------------------------------------------ KL terms


def test_kl_penalty_by_hand():
    lp = torch.tensor([[LN(0.5)]])
    ref = torch.tensor([[LN(0.25)]])
    d = LN(0.5)  # ref - lp = log(.25 / .5)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(-d)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(d * d / 2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 - d - 1)  # = 0.1931
    assert kl_penalty(lp, ref, "low_var_kl").item() == pytest.approx(0.19315, abs=1e-5)
    assert kl_penalty(lp, ref, "kl").item() == kl_penalty(lp, ref, "k1").item()
    # TRL bias correction multiplies k3 by the importance ratio
    ratio = torch.tensor([[1.5]])
    assert kl_penalty(lp, ref, "k3", ratio=ratio).item() == pytest.approx(1.5 * (0.5 - d - 1))
    # k3 is clamped to [-10, 10]
    assert kl_penalty(torch.tensor([[0.0]]), torch.tensor([[30.0]])).item() == 10.0
    assert kl_penalty(lp, lp).item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k4")


def test_kl_penalty_unclamped_as_trl():
    # d = ref - lp = 12: exp(12) - 12 - 1 = 162741.79..., which EasyR1 clamps to 10 and TRL does not
    lp, ref = torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[12.0]], dtype=torch.float64)
    assert kl_penalty(lp, ref, "k3").item() == 10.0
    assert kl_penalty(lp, ref, "k3", clamp=False).item() == pytest.approx(math.exp(12.0) - 13.0)
    # d = 25 is outside EasyR1's [-20, 20] clamp of d too; unclamped keeps it
    assert kl_penalty(lp, ref + 13.0, "k3", clamp=False).item() == pytest.approx(math.exp(25.0) - 26.0)


def test_kl_penalty_gradient_k3():
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp) = 1 - .5 = .5
    lp = torch.tensor([[LN(0.5)]], requires_grad=True)
    kl_penalty(lp, torch.tensor([[LN(0.25)]])).sum().backward()
    assert lp.grad.item() == pytest.approx(0.5)


def test_perception_kl_by_hand():
    lp = torch.tensor([[LN(0.5), LN(0.25)]])
    lpm = torch.tensor([[LN(0.25), LN(0.5)]])
    # d = lp_mask - lp = (log .5, log 2): exp(d) - d - 1 = (.5 + .6931 - 1, 2 - .6931 - 1) = (.1931, .3069)
    torch.testing.assert_close(perception_kl(lp, lpm), torch.tensor([[0.5 - LN(0.5) - 1, 2 - LN(2) - 1]]))
    torch.testing.assert_close(perception_kl(lp, lpm, clamp_max=0.2), torch.tensor([[0.5 - LN(0.5) - 1, 0.2]]))
    assert perception_kl(torch.zeros(1, 1), torch.full((1, 1), 40.0)).item() == 10.0


# ------------------------------------------------------------------ entropy


def test_entropy_by_hand_and_chunking():
    V = 7
    assert entropy_from_logits(torch.zeros(1, 1, V)).item() == pytest.approx(math.log(V), rel=1e-6)
    # two-point distribution p = (.75, .25): H = -(.75 ln .75 + .25 ln .25) = .5623
    logits = torch.tensor([[[LN(3.0), 0.0]]])
    assert entropy_from_logits(logits).item() == pytest.approx(0.562335, abs=1e-5)
    x = torch.randn(3, 11, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    full = torch.distributions.Categorical(logits=x).entropy()
    for c in (1, 3, 4, 11, 100, 0):
        torch.testing.assert_close(chunked_entropy(x.float(), chunk_size=c), full.float(), atol=1e-5, rtol=1e-5)
    xb = x.to(torch.bfloat16)
    out = entropy_from_logits(xb, chunk_size=4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.distributions.Categorical(logits=xb.double()).entropy().float())


def test_entropy_gradient_matches_direct():
    x = torch.randn(2, 5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    h = entropy_from_logits(x, chunk_size=2)
    assert h.dtype == torch.float64
    (g1,) = torch.autograd.grad(h.sum(), x)
    (g2,) = torch.autograd.grad(torch.distributions.Categorical(logits=x).entropy().sum(), x)
    torch.testing.assert_close(g1.double(), g2)


def test_entropy_never_materialises_a_full_float32_vocab_tensor():
    from torch.utils._python_dispatch import TorchDispatchMode

    B, T, V = 2, 64, 50
    biggest = {"n": 0}

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    biggest["n"] = max(biggest["n"], t.numel())
            return out

    logits = torch.randn(B, T, V, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).requires_grad_(True)
    with Spy():
        h = entropy_from_logits(logits, chunk_size=8)
        h.sum().backward()
    assert biggest["n"] <= B * 8 * V  # one chunk, never the whole [B, T, V]
    assert logits.grad is not None and logits.grad.shape == (B, T, V)
