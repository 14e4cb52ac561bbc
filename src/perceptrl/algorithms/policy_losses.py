"""Policy-gradient baselines beside PPO's token-level clipped surrogate: GSPO, CISPO and RLOO.

Pure tensor functions; a per-token loss ``[B, T]`` is aggregated by the caller (``losses.aggregate``)
like the clipped surrogate. Each was checked against TRL 1.16's implementation on identical tensors
(tests/test_policy_baselines.py writes TRL's formulas out from its source; TRL is not imported).

- :func:`sequence_clipped_surrogate`: GSPO (arXiv 2507.18071) with ``level="mean"``: one importance
  ratio per sequence, ``s_i = exp(mean_t(lp - lp_old))``, clipped like PPO's; TRL
  ``importance_sampling_level="sequence"``. ``level="sum"``: ``exp(sum_t(lp - lp_old))``, the
  sequence-level ratio of TRL's ``RLOOTrainer`` loss.
- :func:`cispo_loss`: CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE with a clipped, stop-gradient
  importance weight, ``-sg(min(rho, max_ratio)) A lp``; TRL ``loss_type="cispo"``.
- :func:`rloo_advantage`: RLOO (arXiv 2402.14740): ``A_i = r_i - mean_{j != i} r_j`` in its group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .advantages import group_index


def _seq_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str) -> Tensor:
    m = mask.to(logp.dtype)
    summed = ((logp - old_logp.detach()) * m).sum(-1, keepdim=True)
    if level == "mean":
        return summed / m.sum(-1, keepdim=True).clamp_min(1.0)
    if level == "sum":
        return summed
    raise ValueError(f"level must be mean or sum, got {level!r}")


def sequence_clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                               eps_low: float, eps_high: float, level: str = "mean"
                               ) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate on a sequence-level importance ratio, as a per-token loss ``[B, T]``.

    ``s_i = exp(clamp(log_ratio_i, -20, 20))`` with ``log_ratio_i`` the mean (GSPO) or sum (RLOO as in
    TRL) over the sequence's valid tokens of ``lp - lp_old``; ``l_i = -min(s_i A_i, clip(s_i, 1 - eps_low,
    1 + eps_high) A_i)``, the same value on every token of sequence ``i``, so that
    ``seq_mean_token_mean`` aggregation gives ``mean_i l_i`` (GSPO's objective; TRL ``loss_type="grpo"``)
    and ``token_mean`` the length-weighted mean (TRL ``"dapo"``). The gradient flows through ``s_i``:
    ``d s_i = s_i * mean_t(d lp_t)`` (GSPO's sequence-level gradient). ``advantages`` ``[B]`` (or
    ``[B, T]``, of which each row's first valid value is used). Stats: ``clip_frac_low`` / ``high`` as
    (count, sequences) and the mean sequence ratio.
    """
    adv = advantages if advantages.dim() == 1 else _first_valid(advantages, mask)
    adv = adv.detach().to(torch.promote_types(logp.dtype, adv.dtype)).unsqueeze(-1)
    ratio = torch.exp(_seq_log_ratio(logp, old_logp, mask, level).clamp(-20.0, 20.0)).to(adv.dtype)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))
    with torch.no_grad():
        valid = mask.bool().any(-1, keepdim=True)
        r = ratio.detach()
        stats = {
            "seq_clip_low_count": ((adv < 0) & (r < 1.0 - eps_low) & valid).sum().float(),
            "seq_clip_high_count": ((adv > 0) & (r > 1.0 + eps_high) & valid).sum().float(),
            "seq_ratio_sum": torch.where(valid, r.float(), torch.zeros_like(r.float())).sum(),
            "seq_count": valid.sum().float(),
        }
    return loss.expand(-1, logp.shape[-1]), stats


def _first_valid(advantages: Tensor, mask: Tensor) -> Tensor:
    idx = mask.long().argmax(-1, keepdim=True)
    return advantages.gather(-1, idx).squeeze(-1)


def cispo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, max_ratio: float = 5.0,
               min_ratio: float | None = None) -> tuple[Tensor, Tensor]:
    """CISPO per-token loss ``-sg(clip(rho, min_ratio, max_ratio)) * A * lp`` and the clipped weight.

    ``rho = exp(clamp(lp - lp_old, -20, 20))``. TRL 1.16 (``loss_type="cispo"``) clamps the weight from
    above only, at ``epsilon_high`` taken as the absolute cap (recommended 5.0, after ScaleRL arXiv
    2510.13786); MiniMax-M1 also allows a lower bound (``min_ratio``; None: none). Every token keeps a
    gradient ``-w A d lp`` (nothing is clipped away, unlike PPO). ``advantages`` ``[B]`` or ``[B, T]``.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    adv = adv.detach().to(torch.promote_types(logp.dtype, adv.dtype))
    w = torch.exp((logp - old_logp.detach()).clamp(-20.0, 20.0)).clamp(min=min_ratio, max=max_ratio).detach()
    return -w.to(adv.dtype) * adv * logp, w


def rloo_advantage(rewards: Tensor, group_ids: Tensor, normalize: bool = False, eps: float = 1e-4) -> Tensor:
    """Leave-one-out advantage ``A_i = r_i - (sum_g r - r_i) / (n_g - 1)`` per row ``[R]``.

    As TRL 1.16 ``RLOOTrainer`` (and EasyR1 ``compute_rloo_outcome_advantage``); a group of one has no
    baseline and gets 0 (TRL: NaN set to 0). ``normalize``: TRL's ``normalize_advantages``,
    ``(A - mean) / (std + 1e-4)`` over the whole batch (unbiased std). Float32 (float64 kept).
    """
    r = rewards.double() if rewards.dtype == torch.float64 else rewards.float()
    gid, n_groups = group_index(group_ids)
    gid = gid.to(r.device)
    total = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, gid, r)
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, gid, torch.ones_like(r))
    n = count[gid]
    adv = torch.where(n > 1, r - (total[gid] - r) / (n - 1).clamp_min(1.0), torch.zeros_like(r))
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + eps)
    return adv
