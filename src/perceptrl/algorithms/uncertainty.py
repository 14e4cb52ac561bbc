"""DUPL / VOGUE per-token uncertainty measures (stop-gradient quantities for advantage shaping).

Source: arXiv 2510.01444 (DUPL, first released as VOGUE); ruiiu/DUPL ``verl/trainer/core_algos.py``.
Paper forms use full-vocabulary distributions (``sym_kl_full``, :func:`perceptrl.algorithms.losses.
entropy_from_logits`); the released code uses sampled-token pointwise forms (``sym_kl_pointwise``,
``sampled_token_entropy``). All functions return float32 (float64 if given), detached by default.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .losses import entropy_from_logits

__all__ = ["sym_kl_full", "sym_kl_pointwise", "sampled_token_entropy", "full_entropy"]


def _up(x: Tensor) -> Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def _sym_kl_chunk(lp_logits: Tensor, lq_logits: Tensor) -> Tensor:
    lp = torch.log_softmax(_up(lp_logits), dim=-1)
    lq = torch.log_softmax(_up(lq_logits), dim=-1)
    # (KL(P||Q) + KL(Q||P)) / 2 = sum_v (p - q)(log p - log q) / 2; each summand >= 0.
    return 0.5 * ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)


def sym_kl_full(logits_p: Tensor, logits_q: Tensor, chunk: int = 128, detach: bool = True) -> Tensor:
    """Full-vocabulary symmetric KL ``(KL(P||Q) + KL(Q||P)) / 2`` per position (DUPL paper's u_per).

    Source: arXiv 2510.01444, perceptual uncertainty with ``P = pi(.|q, x, o_<t)``,
    ``Q = pi(.|q, x', o_<t)``.

    Shapes: ``logits_p``, ``logits_q`` ``[B, T, V]`` (any float dtype; each T-chunk is upcast to float32
    on its own, so no full ``[B, T, V]`` float32 copy is made) -> ``[B, T]`` float32, >= 0.
    ``chunk``: positions per chunk along T (<= 0: no chunking). ``detach``: stop-gradient (default, as
    DUPL uses it only to shape the advantage).
    """
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"shape mismatch {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    if detach:
        logits_p, logits_q = logits_p.detach(), logits_q.detach()
    T = logits_p.shape[-2]
    if chunk <= 0 or chunk >= T:
        return _sym_kl_chunk(logits_p, logits_q)
    parts = [
        _sym_kl_chunk(logits_p[..., s : s + chunk, :], logits_q[..., s : s + chunk, :]) for s in range(0, T, chunk)
    ]
    return torch.cat(parts, dim=-1)


def sym_kl_pointwise(lp_p: Tensor, lp_q: Tensor, detach: bool = True) -> Tensor:
    """Released-code perceptual uncertainty on the sampled token: ``((p - q)(log p - log q)) / 2``.

    Source: ruiiu/DUPL ``verl/trainer/core_algos.py`` (``compute_grpo_outcome_advantage_dupl``: the
    forward and inverse ``F.kl_div`` terms on the sampled token's probabilities, averaged; we use the
    log-probs directly instead of ``log(p + 1e-8)``). ``p = exp(lp_p)`` under the clean image,
    ``q = exp(lp_q)`` under the noisy view. Always >= 0.

    Shapes: ``[B, T], [B, T] -> [B, T]`` float32.
    """
    a, b = _up(lp_p), _up(lp_q)
    if detach:
        a, b = a.detach(), b.detach()
    return 0.5 * (a.exp() - b.exp()) * (a - b)


def sampled_token_entropy(lp: Tensor, detach: bool = True) -> Tensor:
    """Released-code output uncertainty ``-p log p`` of the sampled token, ``p = exp(lp)``.

    Source: ruiiu/DUPL ``verl/trainer/core_algos.py: compute_token_entropy``. In ``[0, 1/e]``.
    Shapes: ``[B, T] -> [B, T]`` float32.
    """
    x = _up(lp)
    if detach:
        x = x.detach()
    return -x.exp() * x


def full_entropy(logits: Tensor, chunk: int = 128, detach: bool = True) -> Tensor:
    """DUPL paper's output uncertainty: full-vocabulary entropy ``[B, T, V] -> [B, T]`` (chunked)."""
    if detach:
        logits = logits.detach()
    return entropy_from_logits(logits, chunk_size=chunk)
