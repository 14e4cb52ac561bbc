"""DUPL uncertainty measures (spec section 7)."""

import math

import pytest
import torch

from perceptrl.algorithms import full_entropy, sampled_token_entropy, sym_kl_full, sym_kl_pointwise

LN = math.log


def _direct_sym_kl(a, b):
    P = torch.distributions.Categorical(logits=a.double())
    Q = torch.distributions.Categorical(logits=b.double())
    return 0.5 * (torch.distributions.kl_divergence(P, Q) + torch.distributions.kl_divergence(Q, P))


def test_sym_kl_full_by_hand():
    # P = (.5, .5), Q = (.25, .75): sum (p - q)(ln p - ln q) / 2 = (.25 ln 2 + (-.25) ln(2/3)) / 2
    p = torch.tensor([[[0.0, 0.0]]])
    q = torch.tensor([[[LN(0.25), LN(0.75)]]])
    want = (0.25 * LN(2.0) - 0.25 * LN(0.5 / 0.75)) / 2
    assert sym_kl_full(p, q).item() == pytest.approx(want, rel=1e-6)


def test_sym_kl_full_equals_direct_and_chunking():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 13, 23, generator=gen) * 3
    b = a + torch.randn(2, 13, 23, generator=gen)
    want = _direct_sym_kl(a, b).float()
    for c in (1, 4, 13, 0):
        torch.testing.assert_close(sym_kl_full(a, b, chunk=c), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sym_kl_full(a, b), sym_kl_full(b, a))
    assert torch.equal(sym_kl_full(a, a), torch.zeros(2, 13))
    out = sym_kl_full(a.to(torch.bfloat16), b.to(torch.bfloat16), chunk=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _direct_sym_kl(a.to(torch.bfloat16), b.to(torch.bfloat16)).float(), atol=1e-4, rtol=1e-4)
    ar = a.clone().requires_grad_(True)
    assert not sym_kl_full(ar, b).requires_grad


def test_sym_kl_pointwise_and_sampled_entropy_by_hand():
    lp = torch.tensor([[LN(0.5), LN(0.2)]])
    lq = torch.tensor([[LN(0.25), LN(0.2)]])
    # ((.5 - .25)(ln .5 - ln .25)) / 2 = .25 ln 2 / 2 = .08664 ; equal probabilities -> 0
    torch.testing.assert_close(sym_kl_pointwise(lp, lq), torch.tensor([[0.125 * LN(2.0), 0.0]]))
    torch.testing.assert_close(sym_kl_pointwise(lq, lp), sym_kl_pointwise(lp, lq))
    # -p ln p: .5 ln 2 = .3466 ; .2 * 1.6094 = .3219
    torch.testing.assert_close(sampled_token_entropy(lp), torch.tensor([[0.5 * LN(2.0), -0.2 * LN(0.2)]]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=gen).clamp(max=0) - torch.rand(4, 6, generator=gen)
    assert (sym_kl_pointwise(x, x.flip(0)) >= 0).all()
    assert (sampled_token_entropy(x) <= 1 / math.e + 1e-6).all()


def test_full_entropy_matches_categorical():
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(full_entropy(x, chunk=2), torch.distributions.Categorical(logits=x).entropy())
