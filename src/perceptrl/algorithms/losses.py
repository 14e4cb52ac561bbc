"""Per-token policy-gradient loss terms and their aggregation into a scalar loss.

Pure tensor functions (no model, no I/O), in the style of verl's ``core_algos.py``. Per-token terms
are ``[B, T]``; the completion mask ``mask`` ``[B, T]`` (bool / int / float 0-1) marks real completion
tokens. Per-token terms are returned *unmasked*; :func:`aggregate` applies the mask.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.utils.checkpoint
from torch import Tensor

__all__ = [
    "LOSS_TERMS",
    "register_loss_term",
    "AGG_MODES",
    "importance_ratio",
    "clipped_surrogate",
    "aggregate",
    "count_tokens_and_seqs",
    "masked_sum",
    "masked_mean",
    "kl_penalty",
    "perception_kl",
    "entropy_from_logits",
    "chunked_entropy",
    "sampled_token_entropy_mc",
]

LOSS_TERMS: dict[str, Callable[..., object]] = {}


def register_loss_term(name: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator: register a per-token loss term under ``name`` in :data:`LOSS_TERMS`."""

    def deco(fn: Callable[..., object]) -> Callable[..., object]:
        if name in LOSS_TERMS and LOSS_TERMS[name] is not fn:
            raise ValueError(f"loss term {name!r} is already registered")
        LOSS_TERMS[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------------------------------


def _fmask(mask: Tensor, like: Tensor) -> Tensor:
    dt = like.dtype if like.is_floating_point() else torch.float32
    return mask.to(dt)


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    # where() instead of values * mask: a NaN/inf on a padding position must not leak into the loss
    # (0 * inf = nan), and the gradient there is an exact 0.
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask)`` over ``dim`` (all if None), NaN-safe on masked-out positions."""
    v = _masked(values, mask)
    return v.sum() if dim is None else v.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask) / max(sum(mask), 1)`` over ``dim`` (all if None)."""
    m = _fmask(mask, values)
    den = m.sum() if dim is None else m.sum(dim)
    return masked_sum(values, mask, dim) / den.clamp_min(1.0)


def count_tokens_and_seqs(mask: Tensor) -> tuple[float, float]:
    """The global denominators of :func:`aggregate` for one (update) batch ``mask`` ``[B, T]``.

    Returns ``(tokens, seqs)``: the total mask sum and the number of sequences with at least one
    unmasked token. Sum these over all micro-batches / processes of an update batch (e.g. with
    ``all_reduce``) and pass them as ``global_tokens`` / ``global_seqs``.
    """
    m = mask.to(torch.float32)
    return float(m.sum().item()), float((m.sum(-1) > 0).sum().item())


# --------------------------------------------------------------------------------------------------
# PPO-style clipped surrogate
# --------------------------------------------------------------------------------------------------


def importance_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """``rho = exp(clamp(logp - old_logp, -20, 20))``, ``[B, T] -> [B, T]``.

    Source: verl/EasyR1 ``core_algos.compute_policy_loss`` (the clamp keeps exp finite in bf16/fp32).
    """
    return torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))


@register_loss_term("clipped_surrogate")
def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip_c: float | None = 3.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric (clip-higher) ranges and optional dual clip, per token.

    Source: PPO arXiv 1707.06347; clip-higher DAPO arXiv 2503.14476; dual clip arXiv 1912.09729 as in
    volcengine/verl ``verl/trainer/ppo/core_algos.py`` (``compute_policy_loss``, ``clip_ratio_c = 3``)::

        l_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
        if A < 0 and c is not None: l_t = min(l_t, -c A)

    Args:
        logp, old_logp: ``[B, T]`` log-probs of the sampled tokens (``old_logp`` is detached here).
        advantages: ``[B, T]`` or ``[B]`` (broadcast over T); treated as constants (detached).
        mask: ``[B, T]`` completion mask (used only for the statistics).
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``.
        dual_clip_c: dual-clip constant ``c > 1``, or None to disable.

    Returns:
        ``(loss [B, T], stats)``: unmasked per-token loss, in ``promote_types(logp, advantages)`` dtype
        (bf16 log-probs with float32 advantages give a float32 loss); ``stats`` holds detached scalars
        ``clip_frac_low`` (A < 0 and rho < 1 - eps_low: the lower-clipped term is selected),
        ``clip_frac_high`` (A > 0 and rho > 1 + eps_high), ``dual_clip_frac`` (A < 0 and the -cA bound
        is selected, i.e. rho > c), ``ratio_mean``, ``ratio_max``, ``ppo_kl`` (the mean of
        ``old_logp - logp``, verl's ``ppo_kl``: a k1 estimate of KL(pi_old || pi) on the sampled tokens)
        (masked, over this call's tokens), and for global aggregation the raw numerators
        ``clip_low_count``, ``clip_high_count``, ``dual_clip_count``, ``ratio_sum``, ``ppo_kl_sum`` and the
        denominator ``token_count`` (mask sum).
    """
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    adv = adv.detach().to(torch.promote_types(logp.dtype, adv.dtype))
    ratio = importance_ratio(logp, old_logp.detach()).to(adv.dtype)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    if dual_clip_c is not None:
        loss_dual = torch.minimum(loss, -adv * dual_clip_c)
        loss = torch.where(adv < 0, loss_dual, loss)

    with torch.no_grad():
        m = mask.bool().expand_as(ratio)
        r = ratio.detach()
        a = adv.expand_as(r)
        low = (a < 0) & (r < 1.0 - eps_low) & m
        high = (a > 0) & (r > 1.0 + eps_high) & m
        if dual_clip_c is not None:
            dual = (a < 0) & (r > dual_clip_c) & m
        else:
            dual = torch.zeros_like(m)
        n = m.sum().to(torch.float32)
        den = n.clamp_min(1.0)
        r32 = r.to(torch.float32)
        ratio_sum = torch.where(m, r32, torch.zeros_like(r32)).sum()
        ratio_max = torch.where(m, r32, torch.full_like(r32, float("-inf"))).max() if r.numel() else r32.new_zeros(())
        log_ratio = (old_logp.detach() - logp.detach()).to(torch.float32).expand_as(r32)
        kl_sum = torch.where(m, log_ratio, torch.zeros_like(log_ratio)).sum()
        stats = {
            "clip_frac_low": low.sum().to(torch.float32) / den,
            "clip_frac_high": high.sum().to(torch.float32) / den,
            "dual_clip_frac": dual.sum().to(torch.float32) / den,
            "ratio_mean": ratio_sum / den,
            "ratio_max": torch.where(n > 0, ratio_max, torch.zeros_like(ratio_max)),
            "ppo_kl": kl_sum / den,
            "clip_low_count": low.sum().to(torch.float32),
            "clip_high_count": high.sum().to(torch.float32),
            "dual_clip_count": dual.sum().to(torch.float32),
            "ratio_sum": ratio_sum,
            "ppo_kl_sum": kl_sum,
            "token_count": n,
        }
    return loss, stats


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Aggregate per-token values ``[B, T]`` into a scalar loss (spec section 1).

    Modes (source):
      - ``token_mean``: ``sum_{i,t} v m / N_tok`` (DAPO arXiv 2503.14476; EasyR1/verl ``token-mean``).
      - ``seq_mean_token_mean``: ``sum_i (sum_t v m / sum_t m) / N_seq`` (GRPO arXiv 2402.03300).
      - ``seq_mean_token_sum_norm``: ``sum_{i,t} v m / (N_seq * L_max)`` (Dr.GRPO arXiv 2503.20783).

    Global denominators (for gradient accumulation / data parallelism). An *update batch* is the set
    of sequences whose gradients make one optimizer step, however it is split into micro-batches or
    processes. When the ``global_*`` arguments are given, calling ``aggregate`` on each micro-batch and
    *summing* the results (and their gradients) equals ``aggregate`` on the whole update batch:

      - ``global_tokens``: ``N_tok`` = the total mask sum (number of completion tokens) of the update
        batch. Used by ``token_mean`` only. Default: this call's mask sum.
      - ``global_seqs``: ``N_seq`` = the number of sequences of the update batch with at least one
        unmasked token (equal to the number of sequences unless some are fully masked, e.g. by overlong
        masking; a fully masked sequence then neither contributes nor dilutes). Used by both ``seq_*``
        modes. Default: this call's count of such sequences.
      - ``max_len``: ``L_max`` for ``seq_mean_token_sum_norm``: pass the *generation* max length
        (``max_new_tokens``), a constant over the run, as in Dr.GRPO's released code
        (sail-sg/understand-r1-zero: ``constant_normalizer = generate_max_length``). Default: this call's
        ``T`` (verl's ``seq-mean-token-sum-norm`` uses ``loss_mask.shape[-1]``), which depends on padding
        and so is *not* split-invariant: the trainer should always pass ``max_len``.

    :func:`count_tokens_and_seqs` computes the (local) counts; sum them over the update batch.
    With DDP, whose gradient all-reduce *averages* over processes, multiply the loss by the world size
    (or equivalently pass denominators divided by it) to get the global-batch gradient.
    Empty denominators are clamped to 1, so an all-masked batch gives 0, not NaN. The result is float32
    (float64 for float64 values), whatever the input dtype.
    """
    if values.shape != mask.shape:
        mask = mask.expand_as(values)
    # Sum in at least float32: a bf16 sum over thousands of tokens loses several digits.
    values = values.to(torch.promote_types(values.dtype, torch.float32))
    m = _fmask(mask, values)
    if mode == "token_mean":
        den = m.sum() if global_tokens is None else torch.as_tensor(global_tokens, dtype=m.dtype, device=m.device)
        return masked_sum(values, mask) / den.clamp_min(1.0)
    seq_tokens = m.sum(-1)
    n_seq = (seq_tokens > 0).sum().to(m.dtype) if global_seqs is None else torch.as_tensor(
        global_seqs, dtype=m.dtype, device=m.device
    )
    n_seq = n_seq.clamp_min(1.0)
    if mode == "seq_mean_token_mean":
        seq_mean = masked_sum(values, mask, dim=-1) / seq_tokens.clamp_min(1.0)
        return seq_mean.sum() / n_seq
    if mode == "seq_mean_token_sum_norm":
        L = values.shape[-1] if max_len is None else max_len
        return masked_sum(values, mask) / (n_seq * float(max(L, 1)))
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


# --------------------------------------------------------------------------------------------------
# KL terms
# --------------------------------------------------------------------------------------------------

_KL_ALIASES = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}


@register_loss_term("kl_penalty")
def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3", ratio: Tensor | None = None,
               clamp: bool = True) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate on the sampled tokens, ``[B, T] -> [B, T]``.

    Source: Schulman's "Approximating KL divergence" (k1/k2/k3) as coded in EasyR1
    (hiyouga/EasyR1 ``verl/trainer/core_algos.py``, ``compute_kl``), with ``d = ref_logp - logp``:
    k1 = ``-d``; k2 = ``d^2 / 2``; k3 = ``exp(d) - d - 1`` with ``d`` clamped to [-20, 20] and the result
    clamped to [-10, 10] (EasyR1's ``low_var_kl``). Aliases: ``kl``=k1, ``mse``=k2, ``low_var_kl``=k3.

    ``ratio``: optional ``[B, T]`` importance ratio ``pi_theta / pi_old`` (from :func:`importance_ratio`).
    When given, the k3 term is multiplied by it: TRL's ``use_bias_correction_kl`` (after DeepSeek-V3.2),
    which makes k3 an unbiased estimate under off-policy samples. Off by default (the seeds use plain
    k3). The ratio is used as given; pass it undetached to let the gradient flow through it, as TRL does.
    Ignored for k1/k2.

    ``clamp=False``: k3 without either clamp, as TRL computes it (so NoisyGRPO's released trainer,
    Artanic30/NoisyGRPO on TRL: ``torch.exp(ref - lp) - (ref - lp) - 1``).
    """
    k = _KL_ALIASES.get(kind)
    if k is None:
        raise ValueError(f"unknown KL kind {kind!r}; expected one of {sorted(_KL_ALIASES)}")
    d = ref_logp - logp
    if k == "k1":
        return -d
    if k == "k2":
        return 0.5 * d.square()
    if not clamp:
        out = torch.exp(d) - d - 1.0
    else:
        d = d.clamp(-20.0, 20.0)
        out = (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)
    if ratio is not None:
        out = out * ratio
    return out


@register_loss_term("perception_kl")
def perception_kl(logp: Tensor, masked_logp: Tensor, clamp_max: float | None = None) -> Tensor:
    """PAPO's implicit perception KL, per token, ``[B, T] -> [B, T]`` (to be *maximised*).

    Source: arXiv 2507.06448; MikeWangWZHL/PAPO ``verl/workers/actor/dp_actor.py`` (as coded; the paper
    writes the ratio the other way round)::

        d = clamp(lp_mask - lp, -20, 20);  KLprcp = clamp(exp(d) - d - 1, -10, 10)

    ``clamp_max``: the released code's off-by-default option to clamp KLprcp to ``[0, clamp_max]``
    (0.2 there) to curb "KL_prcp hacking". The trainer adds ``-gamma * token_mean(KLprcp)`` to the loss.
    """
    d = torch.clamp(masked_logp - logp, -20.0, 20.0)
    out = torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
    if clamp_max is not None:
        out = torch.clamp(out, 0.0, clamp_max)
    return out


# --------------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------------


def _entropy_chunk(logits: Tensor) -> Tensor:
    # Upcast only this chunk, to float32 (float64 stays float64).
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    p = torch.exp(x - lse)
    return lse.squeeze(-1) - (p * x).sum(-1)


def chunked_entropy(logits: Tensor, chunk_size: int = 256) -> Tensor:
    """Full-vocabulary entropy ``H_t = -sum_v p log p`` computed in float32, chunked over T.

    Shapes: ``[B, T, V] -> [B, T]`` (float32). Only a ``[B, chunk_size, V]`` float32 slice exists at a
    time (plus its softmax), so a bf16 ``[B, T, V]`` input never gets a full float32 copy
    (spec section 1). Uses ``H = logsumexp(x) - sum_v softmax(x) x`` (source: verl
    ``verl/utils/torch_functional.py: entropy_from_logits``). Differentiable: when the logits require
    grad, each chunk is activation-checkpointed (recomputed in backward) so that the float32
    intermediates are never held for all chunks at once. ``chunk_size <= 0``: no chunking.
    """
    if logits.dim() < 2:
        raise ValueError("logits must be [..., T, V]")
    T = logits.shape[-2]
    if chunk_size <= 0 or chunk_size >= T:
        return _entropy_chunk(logits)
    fn = _entropy_chunk
    if torch.is_grad_enabled() and logits.requires_grad:
        # Recompute each chunk in backward instead of keeping its float32 softmax alive until then:
        # otherwise the saved chunks would add up to a full [B, T, V] float32 tensor (or two).
        def fn(x: Tensor) -> Tensor:
            return torch.utils.checkpoint.checkpoint(_entropy_chunk, x, use_reentrant=False)

    parts = [fn(logits[..., s : s + chunk_size, :]) for s in range(0, T, chunk_size)]
    return torch.cat(parts, dim=-1)


def entropy_from_logits(logits: Tensor, chunk_size: int = 256) -> Tensor:
    """Full-vocabulary entropy per position, ``[B, T, V] -> [B, T]`` float32 (float64 for float64
    logits); see :func:`chunked_entropy`.

    Source: definition (Shannon entropy of the softmax); spec section 1 memory rule.
    """
    return chunked_entropy(logits, chunk_size=chunk_size)


def sampled_token_entropy_mc(logp: Tensor) -> Tensor:
    """Monte-Carlo entropy estimate from the sampled token, ``-lp_t``, ``[B, T] -> [B, T]``.

    Used for PAPO's double-entropy loss (``eta1 * token_mean(-lp) + eta2 * token_mean(-lp_mask)``).
    """
    return -logp
