"""Token-level visual dependency: per-token signals and the weights methods derive from them.

Pure tensor functions (no model, no I/O) for the token-level perception-aware family (docs/METHODS.md):
a *signal* says, per completion token, how much the policy's prediction depends on the image (from
the policy on the image and on a counterfactual view of it); a *selection* keeps the top fraction of
tokens by the signal (or by entropy) for the policy gradient; a *scale* multiplies token or sequence
advantages by a factor derived from the signal.

Notation: ``lp`` ``[B, T]`` log-probs of the sampled tokens under the image, ``lp_view`` the same tokens
under the counterfactual view; ``mask`` ``[B, T]`` the completion mask (1 on real tokens). Every
function returns float32 (float64 for float64 input) and never reads masked positions' values into a
result at a valid position; masked positions of the outputs are 0 unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "abs_log_ratio",
    "full_kl",
    "full_kl_from_log_probs",
    "jsd_and_entropies",
    "jsd_and_entropies_from_log_probs",
    "minmax_per_response",
    "pgpo_token_scale",
    "response_mean",
    "sampled_k3",
    "selected_token_rescale",
    "tor_token_weights",
    "top_fraction_mask",
    "truncated_entropy",
    "truncated_entropy_from_log_probs",
    "vepo_score",
    "vppo_sequence_scale",
]


def _up(x: Tensor) -> Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


# --------------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------------


def sampled_k3(lp: Tensor, lp_view: Tensor, clamp_min: float = 0.0, clamp_max: float = 10.0) -> Tensor:
    """Sampled-token k3 estimate of ``KL(pi(.|I) || pi(.|I'))`` per token, ``[B, T] -> [B, T]``.

    ``d = clamp(lp_view - lp, -20, 20)``, ``k3 = clamp(exp(d) - d - 1, clamp_min, clamp_max)``. The
    defaults ``[0, 10]`` are VPPO's released code (huaixuheqing/VPPO-RL ``verl/workers/actor/dp_actor.py``,
    ``low_var_kl`` between ``aug_log_probs`` and the rollout policy's ``old_log_probs``). 0 where the
    token's log-prob does not depend on the image (``lp_view == lp``).
    """
    d = (_up(lp_view) - _up(lp)).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(clamp_min, clamp_max)


def abs_log_ratio(lp: Tensor, lp_view: Tensor) -> Tensor:
    """``|log pi(o_t|I) - log pi(o_t|I')|`` per token (ToR's perception score, arXiv 2603.25077 Eq. 8)."""
    return (_up(lp) - _up(lp_view)).abs()


def _chunks(T: int, chunk: int) -> list[tuple[int, int]]:
    if chunk <= 0 or chunk >= T:
        return [(0, T)]
    return [(s, min(s + chunk, T)) for s in range(0, T, chunk)]


def full_kl_from_log_probs(lp: Tensor, lq: Tensor) -> Tensor:
    """``KL(P || Q) = sum_v p (log p - log q)`` per row of log-probs ``[..., V] x2 -> [...]``, clamped at 0 (rounding).

    VPPO's paper definition of token visual dependency (arXiv 2510.09285, Eq. 3) with ``Q`` the policy
    on the perturbed image. ``Policy.score`` computes it in the model's output head, a chunk of tokens
    at a time (``train/token_pieces.py``); :func:`full_kl` is the same from whole logits.
    """
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def jsd_and_entropies_from_log_probs(lp: Tensor, lq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Jensen-Shannon divergence and both entropies per row of log-probs ``[..., V] x2 -> (jsd, H(P), H(Q))``.

    ``JSD = (KL(P||M) + KL(Q||M)) / 2`` with ``M = (P + Q) / 2`` (VEPO, Leonnnnnn929/VEPO
    ``verl/utils/jsd_masking.py`` ``compute_jsd_and_entropy_from_logits``; they take ``log(M + 1e-8)``,
    we ``log M`` exactly), clamped at 0.
    """
    p, q = lp.exp(), lq.exp()
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    jsd = (0.5 * (p * (lp - lm)).sum(-1) + 0.5 * (q * (lq - lm)).sum(-1)).clamp_min(0.0)
    return jsd, -(p * lp).sum(-1), -(q * lq).sum(-1)


def truncated_entropy_from_log_probs(lp: Tensor, top_p: float = 1.0) -> Tensor:
    """Entropy of the top-p truncated, renormalised distribution per row of log-probs ``[..., V] -> [...]``.

    The kept set is what top-p sampling draws from: the most probable tokens whose cumulative
    probability before them is below ``top_p`` (at least one). ``top_p = 1``: the full entropy. ToR's
    reasoning-token score (arXiv 2603.25077 Eq. 5, ``top_p = 0.95``; the paper does not say whether it
    renormalises; we do, as the sampling distribution is renormalised).
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p < 1.0:
        sorted_lp, _ = lp.sort(dim=-1, descending=True)
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
        lp = torch.log_softmax(sorted_lp.masked_fill(~(before < top_p), float("-inf")), dim=-1)
    p = lp.exp()
    return -(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum(-1)


def _log_softmax_chunks(logits: Tensor, chunk: int):
    """``log_softmax`` of ``[..., T, V]`` logits, ``chunk`` positions at a time, each upcast on its own."""
    for s, e in _chunks(logits.shape[-2], chunk):
        yield torch.log_softmax(_up(logits[..., s:e, :]), dim=-1)


def _same_shape(logits: Tensor, logits_view: Tensor) -> None:
    if logits.shape != logits_view.shape:
        raise ValueError(f"shape mismatch {tuple(logits.shape)} vs {tuple(logits_view.shape)}")


def full_kl(logits: Tensor, logits_view: Tensor, chunk: int = 64) -> Tensor:
    """:func:`full_kl_from_log_probs` of ``softmax(logits)`` and ``softmax(logits_view)``, ``[B, T, V] x2 -> [B, T]``.

    Computed ``chunk`` positions at a time, each upcast on its own, so no full float32 ``[B, T, V]``
    copy is made.
    """
    _same_shape(logits, logits_view)
    parts = [full_kl_from_log_probs(lp, lq)
             for lp, lq in zip(_log_softmax_chunks(logits, chunk), _log_softmax_chunks(logits_view, chunk))]
    return torch.cat(parts, dim=-1)


def jsd_and_entropies(logits: Tensor, logits_view: Tensor, chunk: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`jsd_and_entropies_from_log_probs` from whole logits, ``[B, T, V] x2 -> (jsd, H(P), H(Q))`` ``[B, T]``.

    Chunked over T like :func:`full_kl`.
    """
    _same_shape(logits, logits_view)
    parts = [jsd_and_entropies_from_log_probs(lp, lq)
             for lp, lq in zip(_log_softmax_chunks(logits, chunk), _log_softmax_chunks(logits_view, chunk))]
    return tuple(torch.cat([part[k] for part in parts], dim=-1) for k in range(3))


def truncated_entropy(logits: Tensor, top_p: float = 1.0, chunk: int = 64) -> Tensor:
    """:func:`truncated_entropy_from_log_probs` from whole logits, ``[B, T, V] -> [B, T]`` (chunked over T)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return torch.cat([truncated_entropy_from_log_probs(lp, top_p) for lp in _log_softmax_chunks(logits, chunk)], -1)


# --------------------------------------------------------------------------------------------------
# per-response statistics
# --------------------------------------------------------------------------------------------------


def minmax_per_response(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - min_i) / max(max_i - min_i, eps)`` over each response's valid tokens, in ``[0, 1]``; 0 on padding."""
    x = _up(values)
    valid = mask.bool()
    lo = x.masked_fill(~valid, float("inf")).amin(-1, keepdim=True)
    hi = x.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    out = (x - lo) / (hi - lo).clamp_min(eps)
    return out.masked_fill(~valid, 0.0).clamp(0.0, 1.0)


def response_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` over each response's valid tokens ``[B]``, and whether it has any ``[B]``."""
    m = _up(mask)
    count = m.sum(-1)
    return (_up(values) * m).sum(-1) / count.clamp_min(1.0), count > 0


def vepo_score(jsd: Tensor, entropy: Tensor, entropy_view: Tensor, mask: Tensor, alpha: float = 0.7,
               eps: float = 1e-8) -> Tensor:
    """VEPO's token score (released formula "D"), ``[B, T]`` in ``[0, 1]``.

    ``s = (1 - (1 - J)^alpha (1 - G)^(1 - alpha)) * H``, where ``J``, ``G`` and ``H`` are the per-response
    min-max normalised JSD, absolute entropy gap ``|H(Q) - H(P)|`` and entropy ``H(P)`` (Leonnnnnn929/VEPO
    ``verl/utils/jsd_masking.py`` ``compute_jsd_mask_scores``, ``score_type=D``; ``run_train.sh``
    ``JSD_MASK_ALPHA=0.7``): a soft "or" of the two visual signals, gated by the token's uncertainty.
    """
    j = minmax_per_response(jsd, mask, eps)
    g = minmax_per_response((_up(entropy_view) - _up(entropy)).abs(), mask, eps)
    h = minmax_per_response(entropy, mask, eps)
    score = (1.0 - (1.0 - j).pow(alpha) * (1.0 - g).pow(1.0 - alpha)) * h
    return score * _up(mask)


# --------------------------------------------------------------------------------------------------
# selections
# --------------------------------------------------------------------------------------------------


def top_fraction_mask(values: Tensor, mask: Tensor, fraction: float, granularity: str = "response") -> Tensor:
    """Keep the top ``fraction`` of valid tokens by ``values``: a bool ``[B, T]`` mask.

    ``granularity="response"``: ``ceil(L_i * fraction)`` tokens of each response ``i`` (``L_i`` its valid
    tokens; VPPO's Token-level Gradient Filtering, huaixuheqing/VPPO-RL ``dp_actor.py``; VEPO's top-p mask).
    ``"batch"``: ``ceil(N * fraction)`` of all ``N`` valid tokens of the batch (ToR's thresholds over the
    rollout batch). Exactly that many are kept; tokens tied at the threshold are taken in (row,
    position) order (a stable sort), as the released sorts take them in sort order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    valid = mask.bool()
    x = _up(values)
    if granularity == "response":
        k = torch.ceil(valid.sum(-1).to(x.dtype) * fraction).long()
        order = x.masked_fill(~valid, float("-inf")).sort(dim=-1, descending=True, stable=True).indices
        rank_kept = torch.arange(x.shape[-1], device=x.device).expand_as(x) < k.unsqueeze(-1)
        out = torch.zeros_like(valid)
        out.scatter_(-1, order, rank_kept)
        return out & valid
    if granularity == "batch":
        flat = x[valid]
        k = int(math.ceil(flat.numel() * fraction))
        out = torch.zeros_like(valid)
        if k > 0:
            keep = torch.zeros(flat.numel(), dtype=torch.bool, device=x.device)
            keep[flat.sort(descending=True, stable=True).indices[:k]] = True
            out[valid] = keep
        return out
    raise ValueError(f"granularity must be response or batch, got {granularity!r}")


def tor_token_weights(entropy_set: Tensor | None, signal_set: Tensor | None, entropy_weight: float = 1.0,
                      signal_weight: float = 0.5) -> Tensor:
    """ToR's token weights: ``gamma_r`` on reasoning (entropy) tokens, ``gamma_p`` on the perception tokens
    that are not reasoning tokens, 0 elsewhere (arXiv 2603.25077; defaults ``gamma_r = 1``, ``gamma_p =
    0.5``). With one set only, its weight on it and 0 elsewhere (VPPO's binary gradient mask is
    ``signal_set`` with weight 1). Float32 ``[B, T]``.
    """
    if entropy_set is None and signal_set is None:
        raise ValueError("tor_token_weights needs at least one token set")
    ref = entropy_set if entropy_set is not None else signal_set
    w = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
    if entropy_set is not None:
        w = w + entropy_weight * entropy_set.float()
    if signal_set is not None:
        only = signal_set.bool() & ~entropy_set.bool() if entropy_set is not None else signal_set.bool()
        w = w + signal_weight * only.float()
    return w


def selected_token_rescale(weights: Tensor, mask: Tensor, group: Tensor) -> Tensor:
    """Per-row factor ``N_tok / N_sel`` of each row's group (``group`` ``[B]``, e.g. its PPO mini-batch).

    Multiplying the token weights by it turns a token mean over all valid tokens into a mean over the
    selected ones (VEPO, Leonnnnnn929/VEPO ``core_algos.py``: ``masked_mean(loss, eos_mask * jsd_mask)``).
    ``N_sel`` counts tokens with a non-zero weight. Groups without a selected token get factor 1. ``[B]``.
    """
    m = _up(mask)
    sel = ((weights != 0) & mask.bool()).to(m.dtype)
    ids = torch.unique(group, return_inverse=True)[1].to(m.device)
    n = int(ids.max()) + 1 if ids.numel() else 0
    tok = torch.zeros(n, dtype=m.dtype, device=m.device).index_add(0, ids, m.sum(-1))
    chosen = torch.zeros(n, dtype=m.dtype, device=m.device).index_add(0, ids, sel.sum(-1))
    factor = torch.where(chosen > 0, tok / chosen.clamp_min(1.0), torch.ones_like(tok))
    return factor[ids]


# --------------------------------------------------------------------------------------------------
# advantage scales
# --------------------------------------------------------------------------------------------------


def vppo_sequence_scale(signal: Tensor, mask: Tensor, group: Tensor, scale_min: float = 0.9) -> Tensor:
    """VPPO's Trajectory-level Advantage Shaping factor per response ``[B]`` (arXiv 2510.09285).

    As huaixuheqing/VPPO-RL ``dp_actor.py``: ``S_i`` = the response's mean token dependency;
    ``n_i = clamp((S_i - min) / (max - min), 0, 1)`` with ``min``/``max`` over the valid responses of
    its ``group`` (released: the per-device PPO mini-batch); ``beta_max = scale_min + (1 - scale_min) /
    (mean(n) + 1e-8)``; factor ``= scale_min + n_i (beta_max - scale_min)``, so that the factors of a
    group average 1. Factor 1 for a group with fewer than two valid responses or ``max - min <= 1e-6``,
    and for responses without tokens. Released difference: their ``mean(n)`` is over each update
    micro-batch; ours over the same group as ``min``/``max`` (the result does not depend on the split).
    """
    scores, valid = response_mean(signal, mask)
    factor = torch.ones_like(scores)
    for g in torch.unique(group):
        rows = (group.to(scores.device) == g) & valid
        if int(rows.sum()) <= 1:
            continue
        s = scores[rows]
        lo, hi = s.min(), s.max()
        if float(hi - lo) <= 1e-6:
            continue
        n = ((s - lo) / (hi - lo)).clamp(0.0, 1.0)
        beta_max = scale_min + (1.0 - scale_min) / (n.mean() + 1e-8)
        factor[rows] = scale_min + n * (beta_max - scale_min)
    return factor


def pgpo_token_scale(signal: Tensor, mask: Tensor, threshold: float = 0.4, boost: float = 2.0,
                     threshold_mode: str = "absolute", low_floor: float = 0.0, mass_normalize: bool = True,
                     eps: float = 1e-8) -> Tensor:
    """PGPO's threshold-gated, mass-conserving token weights ``[B, T]`` (arXiv 2604.01840, Eq. 6-7).

    ``I = minmax_i(log(1 + max(S, 0)))`` per response; below the threshold ``tau`` the weight is
    ``I / tau`` (floored at ``low_floor``), above it ``1 + beta (I - tau) / (1 - tau)``; with
    ``mass_normalize`` each response's weights are rescaled to sum to its length (a response whose
    weights sum to ~0 keeps weight 1). ``threshold_mode="quantile"``: ``tau`` is the response's
    ascending ``I`` at index ``min(floor(L tau), L - 1)`` (the authors' development code, with
    ``low_floor = 0.1`` and no mass normalisation; as read by zsxm1998/awesome-perception-aware-rlvr
    ``examples/reproduction/pgpo/README.md``). 0 on padding.
    """
    valid = mask.bool()
    I = minmax_per_response(torch.log1p(_up(signal).clamp_min(0.0)), mask, eps)
    if threshold_mode == "absolute":
        tau = torch.full_like(I[..., :1], threshold)
    elif threshold_mode == "quantile":
        lengths = valid.sum(-1, keepdim=True)
        index = torch.minimum((lengths.to(I.dtype) * threshold).long(), (lengths - 1).clamp_min(0))
        ascending = I.masked_fill(~valid, float("inf")).sort(dim=-1).values
        tau = torch.where(lengths > 0, ascending.gather(-1, index), torch.zeros_like(I[..., :1]))
    else:
        raise ValueError(f"threshold_mode must be absolute or quantile, got {threshold_mode!r}")
    below = I / tau.clamp_min(eps)
    if low_floor > 0.0:
        below = below.clamp_min(low_floor)
    above = 1.0 + boost * (I - tau) / (1.0 - tau).clamp_min(eps)
    w = torch.where(I < tau, below, above).masked_fill(~valid, 0.0)
    if mass_normalize:
        total = w.sum(-1, keepdim=True)
        length = valid.sum(-1, keepdim=True).to(w.dtype)
        w = torch.where(total > eps, w * length / total.clamp_min(eps), valid.to(w.dtype))
    return w.masked_fill(~valid, 0.0)
