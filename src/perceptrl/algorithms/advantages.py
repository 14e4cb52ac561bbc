"""Advantage estimators: pure tensor functions over a flat batch of completions.

Every estimator takes per-completion rewards ``[N]`` plus integer ``group_ids`` ``[N]`` (completions of
one prompt share an id; ids need be neither contiguous nor sorted) and returns per-completion advantages
``[N]`` (broadcast to tokens by the caller), except :func:`dupl_shape`, which is per token.

Style follows verl's ``core_algos.py``: pure functions and a name -> function registry.
All statistics are computed in at least float32 (upcast from bf16/fp16) and on the inputs' device.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "register_advantage",
    "get_advantage_estimator",
    "group_index",
    "group_mean_std",
    "group_normalise",
    "group_advantage",
    "noisy_grpo_advantage",
    "dupl_bonus",
    "dupl_shape",
]

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., object]] = {}


def register_advantage(name: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator: register an advantage estimator under ``name`` in :data:`ADVANTAGE_ESTIMATORS`."""

    def deco(fn: Callable[..., object]) -> Callable[..., object]:
        if name in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def get_advantage_estimator(name: str) -> Callable[..., object]:
    """Look up a registered estimator; raises ``KeyError`` listing the known names."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}") from None


# --------------------------------------------------------------------------------------------------
# group statistics
# --------------------------------------------------------------------------------------------------


def _stat_dtype(x: Tensor) -> torch.dtype:
    # Upcast half precision / integer rewards to float32; keep float64 if given (tests, numerics).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids ``[N]`` to dense indices ``[N]`` in ``0..num_groups-1``.

    Dense index ``k`` corresponds to the ``k``-th smallest distinct id (``torch.unique`` is sorted), so
    per-group outputs such as NoisyGRPO's gain are ordered by increasing group id.
    """
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
    uniq, inverse = torch.unique(group_ids, sorted=True, return_inverse=True)
    return inverse, int(uniq.numel())


def group_mean_std(
    x: Tensor, index: Tensor, num_groups: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-group mean, unbiased (Bessel) std, count and a "constant group" flag.

    Shapes: ``x`` ``[N]`` float, ``index`` ``[N]`` dense long -> four ``[num_groups]`` tensors.
    A group of one member has std 0 (no Bessel division by zero). ``constant`` is True where all
    members are exactly equal, so callers can return an exact 0 there instead of ``tiny / eps``
    (``mean`` of e.g. three 0.1's is not bit-exactly 0.1).
    """
    dt = _stat_dtype(x)
    x = x.to(dt)
    count = torch.zeros(num_groups, dtype=dt, device=x.device).index_add_(0, index, torch.ones_like(x))
    total = torch.zeros(num_groups, dtype=dt, device=x.device).index_add_(0, index, x)
    mean = total / count.clamp_min(1)
    dev2 = (x - mean[index]) ** 2
    ss = torch.zeros(num_groups, dtype=dt, device=x.device).index_add_(0, index, dev2)
    std = (ss / (count - 1).clamp_min(1)).sqrt()
    gmax = torch.full((num_groups,), float("-inf"), dtype=dt, device=x.device).scatter_reduce(
        0, index, x, reduce="amax", include_self=True
    )
    gmin = torch.full((num_groups,), float("inf"), dtype=dt, device=x.device).scatter_reduce(
        0, index, x, reduce="amin", include_self=True
    )
    constant = gmax == gmin
    std = torch.where(constant, torch.zeros_like(std), std)
    return mean, std, count, constant


def group_normalise(x: Tensor, index: Tensor, num_groups: int, eps: float) -> Tensor:
    """``GN(x) = (x - mean_g) / (std_g + eps)``, unbiased std, exact 0 in constant groups.

    Shapes: ``x`` ``[N]``, ``index`` ``[N]`` dense (from :func:`group_index`) -> ``[N]``.
    """
    mean, std, _, constant = group_mean_std(x, index, num_groups)
    xc = x.to(mean.dtype) - mean[index]
    out = xc / (std[index] + eps)
    return torch.where(constant[index], torch.zeros_like(out), out)


# --------------------------------------------------------------------------------------------------
# GRPO / Dr.GRPO
# --------------------------------------------------------------------------------------------------


@register_advantage("grpo")
def group_advantage(rewards: Tensor, group_ids: Tensor, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """Group-relative outcome advantage.

    Source: GRPO arXiv 2402.03300 (eq. for outcome supervision); ``scale="none"`` is Dr.GRPO
    arXiv 2503.20783; ``scale="batch"`` follows TRL ``huggingface/trl:trl/trainer/grpo_trainer.py``
    (``scale_rewards="batch"``) and "Tricks or Traps" (Lite PPO, arXiv 2508.08221): group mean, batch std.

    Args:
        rewards: ``[N]`` scalar reward per completion (any float/int dtype).
        group_ids: ``[N]`` long, completions of one prompt share an id.
        scale: ``"group"``: ``(r - mean_g) / (std_g + eps)``;
            ``"batch"``: ``(r - mean_g) / (std_B + eps)`` where ``std_B`` is the unbiased std of the raw
            rewards over the whole batch ``[N]`` (TRL's choice: ``rewards.std()``, not the std of the
            group-centred rewards);
            ``"none"``: ``r - mean_g`` (Dr.GRPO).
        eps: 1e-6 (EasyR1 lineage: PAPO, DUPL) or 1e-4 (TRL, NoisyGRPO).

    Returns:
        ``[N]`` advantages, float32 (float64 if rewards are float64). All stds are unbiased (Bessel).
        Every member of a group whose rewards are all equal gets exactly 0, whatever ``scale``.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D")
    index, g = group_index(group_ids)
    mean, std, _, constant = group_mean_std(rewards, index, g)
    r = rewards.to(mean.dtype)
    centred = r - mean[index]
    if scale == "group":
        adv = centred / (std[index] + eps)
    elif scale == "batch":
        std_b = r.std(unbiased=True) if r.numel() > 1 else r.new_zeros(())
        adv = centred / (std_b + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return torch.where(constant[index], torch.zeros_like(adv), adv)


@register_advantage("drgrpo")
def _drgrpo_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, **_: object) -> Tensor:
    """Dr.GRPO (arXiv 2503.20783): group-centred rewards without std division. ``[N] -> [N]``."""
    return group_advantage(rewards, group_ids, scale="none", eps=eps)


# --------------------------------------------------------------------------------------------------
# NoisyGRPO
# --------------------------------------------------------------------------------------------------


@register_advantage("noisy_grpo")
def noisy_grpo_advantage(
    rewards: Tensor,
    noise_levels: Tensor,
    group_ids: Tensor,
    p_alpha: float = 0.01,
    R: float = 0.1,
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """NoisyGRPO's Bayesian (Kalman-style) advantage fusing the reward with a noise-level prior.

    Source: arXiv 2510.21122; Artanic30/NoisyGRPO (advantage computation, as coded)::

        z_sem = GN(r);  z_n = GN(1 - n);  GN(x) = (x - mean_g) / (std_g + eps), std unbiased
        P = p_alpha / (var_g(r) + p_alpha);  K = clamp(P / (P + R), 0, 1)
        A = GN((1 - K) * z_sem + K * z_n)

    ``var_g(r)`` is the *unbiased* group variance of the rewards (the square of the same std used in
    GN): that is what reproduces the spec's check value K = 0.2256 for rewards (1, 1, 0, 0) (biased
    variance 0.25 would give 0.2778). The K-vs-std check values hold for either, with var = std^2.

    Args:
        rewards: ``[N]`` rewards.
        noise_levels: ``[N]`` noise level ``n`` in [0, 1] each completion was generated at (0 = clean).
        group_ids: ``[N]`` long.
        p_alpha, R: prior variance and measurement-noise constants (defaults as released).
        eps: GN denominator epsilon (1e-4 as released).

    Returns:
        ``(A [N], K [num_groups])``; ``K[k]`` is the gain of the k-th smallest group id.
        A group with all-equal rewards has ``var = 0`` so ``K = 1/(1+R)`` and its advantage is driven by
        the noise prior alone (non-zero unless the noise levels are all equal too).
    """
    if not (rewards.shape == noise_levels.shape == group_ids.shape) or rewards.dim() != 1:
        raise ValueError("rewards, noise_levels and group_ids must be 1-D of equal length")
    index, g = group_index(group_ids)
    _, std, _, _ = group_mean_std(rewards, index, g)
    var = std**2
    z_sem = group_normalise(rewards, index, g, eps)
    z_n = group_normalise(1.0 - noise_levels.to(z_sem.dtype), index, g, eps)
    P = p_alpha / (var + p_alpha)
    K = (P / (P + R)).clamp(0.0, 1.0)
    Ki = K[index]
    fused = (1.0 - Ki) * z_sem + Ki * z_n
    adv = group_normalise(fused, index, g, eps)
    return adv, K


# --------------------------------------------------------------------------------------------------
# DUPL / VOGUE advantage shaping
# --------------------------------------------------------------------------------------------------


def _as_token_adv(adv: Tensor, like: Tensor) -> Tensor:
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    return adv.to(torch.promote_types(adv.dtype, like.dtype)).expand_as(like)


def dupl_bonus(
    adv: Tensor,
    u: Tensor,
    mask: Tensor,
    alpha: float,
    beta: float,
) -> Tensor:
    """One DUPL uncertainty bonus ``g = min(|A| / beta, alpha * u) >= 0`` per token (0 off-mask).

    Source: arXiv 2510.01444 (DUPL/VOGUE); ruiiu/DUPL ``verl/trainer/core_algos.py``
    (``compute_entropy_advantage_shaping``: ``psi = min(alpha * H.detach(), |A| / kappa) * mask``; the
    KL term: ``min(|w * kl|, |A| / 2) * sign(w * kl)`` with ``w * kl >= 0`` by default).

    The bonus is *unsigned* and is added as ``A + g`` (it is not multiplied by ``sign(A)`` in the
    released code). Since ``0 <= g <= |A| / beta`` (``|A| / 2`` for the default beta = 2), a positive A
    grows by at most half, a negative A shrinks towards 0 by at most half (the penalty on uncertain
    tokens is softened), the sign never flips, and ``g = 0`` where ``A = 0``.
    ``u`` is a stop-gradient uncertainty: it is detached and clamped at 0 here.

    Shapes: ``adv`` ``[B]`` or ``[B, T]``; ``u`` ``[B, T]``; ``mask`` ``[B, T]`` -> ``[B, T]``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    a = _as_token_adv(adv, u)
    g = torch.minimum(a.abs() / beta, alpha * u.detach().to(a.dtype).clamp_min(0.0))
    return torch.where(mask.bool().expand_as(g), g, torch.zeros_like(g))


def dupl_shape(
    adv: Tensor,
    u_out: Tensor,
    u_per: Tensor | None,
    mask: Tensor,
    alpha_o: float = 0.4,
    beta_o: float = 2.0,
    alpha_p: float = 1.0,
    beta_p: float = 2.0,
    sequential: bool = False,
) -> Tensor:
    """DUPL per-token shaped advantage (spec section 7).

    Source: arXiv 2510.01444; ruiiu/DUPL ``verl/trainer/core_algos.py``
    (``compute_grpo_outcome_advantage_dupl``)::

        g_out = min(|A| / beta_o, alpha_o * u_out);  g_per = min(|A| / beta_p, alpha_p * u_per)
        A_raw_hat = A + g_out                 (u_per is None: raw branch)
        A_noi_hat = A + g_out + g_per         (u_per given: noisy branch)

    Sign: the bonuses are added unsigned, exactly as the spec writes ``A + g`` with ``g >= 0``; the
    released code does *not* multiply them by ``sign(A)`` (checked in ruiiu/DUPL core_algos.py), so on a
    negative A they reduce its magnitude. Each bonus is ``<= |A| / beta`` (so with beta = 2 never more
    than |A|/2, never a sign flip, 0 where A = 0). With both bonuses on a negative A the sum can at
    most bring A to 0, never past it.

    ``sequential=False`` (default, spec): both bonuses are computed from the unshaped |A|.
    ``sequential=True`` (released code order): ``A' = A + g_per``, then ``g_out`` is computed from
    ``|A'|`` and added to ``A'``.

    Shapes: ``adv`` ``[B]`` (per sequence, broadcast over T) or ``[B, T]``; ``u_out``, ``u_per``,
    ``mask`` ``[B, T]``. Returns ``[B, T]``; off-mask entries are the broadcast, unshaped A.
    """
    a = _as_token_adv(adv, u_out)
    if u_per is None:
        return a + dupl_bonus(a, u_out, mask, alpha_o, beta_o)
    g_per = dupl_bonus(a, u_per, mask, alpha_p, beta_p)
    if sequential:
        a1 = a + g_per
        return a1 + dupl_bonus(a1, u_out, mask, alpha_o, beta_o)
    return a + g_per + dupl_bonus(a, u_out, mask, alpha_o, beta_o)
