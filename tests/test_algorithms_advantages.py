"""Advantage estimators: hand-computed cases, spec section 11 check values, properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perceptrl.algorithms import (
    ADVANTAGE_ESTIMATORS,
    dupl_bonus,
    dupl_shape,
    group_advantage,
    group_index,
    group_normalise,
    noisy_grpo_advantage,
    register_advantage,
)

LONG = torch.long


# ------------------------------------------------------------------ group_advantage, by hand
# Group 0: r = (1, 0, 0): mean 1/3, deviations (2/3, -1/3, -1/3), unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3.
# Group 1: r = (2, 2): constant -> 0.
# Group 2: r = (0.5, 1.5): mean 1, unbiased var = (0.25 + 0.25) / 1 = 0.5.
R = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 0.5, 1.5])
G = torch.tensor([0, 0, 0, 1, 1, 2, 2], dtype=LONG)


def test_group_scale_by_hand():
    s0, s2 = math.sqrt(1 / 3), math.sqrt(0.5)
    want = torch.tensor([(2 / 3) / s0, (-1 / 3) / s0, (-1 / 3) / s0, 0, 0, -0.5 / s2, 0.5 / s2])
    got = group_advantage(R, G, scale="group", eps=0.0)
    torch.testing.assert_close(got, want)
    # eps enters the denominator: (2/3) / (s0 + 1e-6)
    got = group_advantage(R, G, scale="group", eps=1e-6)
    assert got[0].item() == pytest.approx((2 / 3) / (s0 + 1e-6), rel=1e-6)


def test_none_scale_is_drgrpo_centring():
    want = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, -0.5, 0.5])
    torch.testing.assert_close(group_advantage(R, G, scale="none"), want)
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["drgrpo"](R, G), want)


def test_batch_scale_uses_std_of_raw_batch_rewards():
    # Batch rewards: mean 1, deviations (0, -1, -1, 1, 1, -.5, .5): ss = 4.5, unbiased var = 4.5 / 6 = 0.75.
    sb = math.sqrt(0.75)
    want = torch.tensor([(2 / 3) / sb, (-1 / 3) / sb, (-1 / 3) / sb, 0, 0, -0.5 / sb, 0.5 / sb])
    torch.testing.assert_close(group_advantage(R, G, scale="batch", eps=0.0), want)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_group_is_exactly_zero(scale):
    # 0.1 is not representable: the float mean of three 0.1's differs from 0.1 by an ulp; dividing that by eps
    # would give a spurious non-zero advantage.
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0])
    g = torch.tensor([5, 5, 5, 9, 9], dtype=LONG)
    a = group_advantage(r, g, scale=scale)
    assert torch.equal(a[:3], torch.zeros(3))
    assert a[3] > 0 > a[4]


def test_noncontiguous_ids_singleton_and_dtypes():
    r = torch.tensor([1.0, 0.0, 3.0, 0.0, 1.0], dtype=torch.bfloat16)
    g = torch.tensor([7, 3, 42, 7, 3], dtype=LONG)
    a = group_advantage(r, g)
    assert a.dtype == torch.float32
    # ids 3 -> (0, 1), 7 -> (1, 0): +-1/sqrt(0.5) = +-0.7071 ; id 42 is a singleton -> 0.
    torch.testing.assert_close(a, torch.tensor([0.7071, -0.7071, 0.0, -0.7071, 0.7071]), atol=1e-4, rtol=0)
    assert group_advantage(r.double(), g).dtype == torch.float64


def test_bad_scale_and_registry():
    with pytest.raises(ValueError):
        group_advantage(R, G, scale="bogus")
    assert ADVANTAGE_ESTIMATORS["grpo"] is group_advantage
    assert ADVANTAGE_ESTIMATORS["noisy_grpo"] is noisy_grpo_advantage

    @register_advantage("_test_dummy")
    def dummy(rewards, group_ids):
        return rewards

    assert ADVANTAGE_ESTIMATORS.pop("_test_dummy") is dummy
    with pytest.raises(ValueError):
        register_advantage("grpo")(lambda r, g: r)


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from(["group", "batch", "none"]),
    binary=st.booleans(),
)
def test_property_group_advantages_sum_to_zero(sizes, seed, scale, binary):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.full((n,), i, dtype=LONG) for i, n in enumerate(sizes)])
    ids = ids[torch.randperm(len(ids), generator=gen)]
    r = torch.randint(0, 2, ids.shape, generator=gen).float() if binary else torch.rand(ids.shape, generator=gen)
    a = group_advantage(r, ids, scale=scale)
    idx, g = group_index(ids)
    sums = torch.zeros(g).index_add_(0, idx, a)
    torch.testing.assert_close(sums, torch.zeros(g), atol=1e-4, rtol=0)
    assert torch.isfinite(a).all()


# ------------------------------------------------------------------ NoisyGRPO (spec section 6, 11)


@pytest.mark.parametrize(
    "std,k", [(0.0, 0.9091), (0.1, 0.8333), (0.2, 0.6667), (0.3, 0.5), (0.5, 0.2778)]
)
def test_noisy_grpo_gain_check_values(std, k):
    # var_g = std^2 with the unbiased std. For rewards (a, a, -a, -a) the unbiased var is 4a^2/3.
    a = std * math.sqrt(3) / 2
    r = torch.tensor([a, a, -a, -a])
    _, K = noisy_grpo_advantage(r, torch.tensor([0.0, 0.3, 0.6, 0.9]), torch.zeros(4, dtype=LONG))
    assert K.shape == (1,)
    assert K.item() == pytest.approx(k, abs=1e-4)
    # by hand: P = 0.01 / (std^2 + 0.01), K = P / (P + 0.1)
    P = 0.01 / (std**2 + 0.01)
    assert K.item() == pytest.approx(P / (P + 0.1), rel=1e-5)


def test_noisy_grpo_gain_per_group_in_id_order():
    stds = [0.5, 0.0, 0.2]
    r = torch.cat([torch.tensor([s, s, -s, -s]) * math.sqrt(3) / 2 for s in stds])
    ids = torch.tensor([2] * 4 + [0] * 4 + [1] * 4, dtype=LONG)  # group ids 2, 0, 1
    _, K = noisy_grpo_advantage(r, torch.tensor([0.0, 0.3, 0.6, 0.9]).repeat(3), ids)
    torch.testing.assert_close(K, torch.tensor([0.9091, 0.6667, 0.2778]), atol=1e-4, rtol=0)


def test_noisy_grpo_z_n_ladder():
    # 1 - n = (1, .7, .4, .1): mean .55, deviations (.45, .15, -.15, -.45), unbiased var = .45 / 3 = .15.
    n = torch.tensor([0.0, 0.3, 0.6, 0.9])
    idx, g = group_index(torch.zeros(4, dtype=LONG))
    z = group_normalise(1 - n, idx, g, 1e-4)
    by_hand = torch.tensor([0.45, 0.15, -0.15, -0.45]) / (math.sqrt(0.15) + 1e-4)
    torch.testing.assert_close(z, by_hand)
    torch.testing.assert_close(z, torch.tensor([1.1616, 0.3872, -0.3872, -1.1616]), atol=1e-4, rtol=0)


def test_noisy_grpo_rewards_1100_check_value():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    n = torch.tensor([0.0, 0.3, 0.6, 0.9])
    A, K = noisy_grpo_advantage(r, n, torch.zeros(4, dtype=LONG))
    # unbiased var(1,1,0,0) = 1/3: P = .01 / (1/3 + .01) = .029126, K = P / (P + .1) = .22556.
    # (biased var .25 would give K = .2778, which is why the variance is the unbiased one)
    assert K.item() == pytest.approx(0.2256, abs=1e-4)
    torch.testing.assert_close(A, torch.tensor([0.9504, 0.7723, -0.7723, -0.9504]), atol=1e-4, rtol=0)


def test_noisy_grpo_equal_rewards_driven_by_noise_prior_and_G8():
    # all-equal rewards: z_sem = 0, so A = GN(K z_n): ordered by the noise level, clean first.
    n = torch.tensor([0.0, 0.3, 0.6, 0.9] * 2)
    A, K = noisy_grpo_advantage(torch.ones(8), n, torch.zeros(8, dtype=LONG))
    assert K.item() == pytest.approx(1 / 1.1, abs=1e-6)
    assert A[0] > A[1] > A[2] > A[3] and torch.allclose(A[:4], A[4:])
    assert abs(A.sum().item()) < 1e-5


# ------------------------------------------------------------------ DUPL shaping (spec section 7)


def test_dupl_shape_by_hand():
    A = torch.tensor([1.0, -1.0, 0.0])
    u_out = torch.tensor([[0.5, 10.0], [0.5, 10.0], [3.0, 3.0]])
    u_per = torch.tensor([[0.1, 0.3], [0.1, 0.3], [1.0, 1.0]])
    mask = torch.ones(3, 2)
    # g_out = min(|A|/2, 0.4 u_out): row 0/1 -> (min(.5, .2), min(.5, 4)) = (.2, .5); row 2 -> 0
    raw = dupl_shape(A, u_out, None, mask)
    torch.testing.assert_close(raw, torch.tensor([[1.2, 1.5], [-0.8, -0.5], [0.0, 0.0]]))
    # g_per = min(|A|/2, 1.0 u_per): (.1, .3); added unsigned, as in ruiiu/DUPL
    noi = dupl_shape(A, u_out, u_per, mask)
    torch.testing.assert_close(noi, torch.tensor([[1.3, 1.8], [-0.7, -0.2], [0.0, 0.0]]))
    # released order: A' = A + g_per = (1.1, 1.3 | -.9, -.7); g_out = min(|A'|/2, .4 u_out) = (.2, .65 | .2, .35)
    seq = dupl_shape(A, u_out, u_per, mask, sequential=True)
    torch.testing.assert_close(seq, torch.tensor([[1.3, 1.95], [-0.7, -0.35], [0.0, 0.0]]))
    # masked tokens keep the unshaped A; [B, T] advantages work too
    mask2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = dupl_shape(A[:, None].expand(3, 2), u_out, None, mask2)
    torch.testing.assert_close(got, torch.tensor([[1.2, 1.0], [-1.0, -0.5], [0.0, 0.0]]))


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    B=st.integers(1, 6),
    T=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    alpha=st.floats(0.0, 5.0),
    zero_frac=st.floats(0.0, 1.0),
)
def test_property_dupl_bonus_bounded_and_sign_preserving(B, T, seed, alpha, zero_frac):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(B, T, generator=gen) * 3
    A = torch.where(torch.rand(B, T, generator=gen) < zero_frac, torch.zeros_like(A), A)
    u1 = torch.rand(B, T, generator=gen) * 5
    u2 = torch.rand(B, T, generator=gen) * 5
    mask = (torch.rand(B, T, generator=gen) < 0.8).float()
    for u in (u1, u2):
        g = dupl_bonus(A, u, mask, alpha, 2.0)
        assert (g >= 0).all() and (g <= A.abs() / 2 + 1e-7).all()
        assert (g[A == 0] == 0).all()
    raw = dupl_shape(A, u1, None, mask, alpha_o=alpha)
    assert torch.equal(torch.sign(raw), torch.sign(A))  # strict: |g| <= |A|/2
    for seq in (False, True):
        noi = dupl_shape(A, u1, u2, mask, alpha_o=alpha, alpha_p=alpha, sequential=seq)
        assert (noi * A >= 0).all()  # never flips (two half-bonuses can at most reach 0)
        assert (noi[A == 0] == 0).all()
