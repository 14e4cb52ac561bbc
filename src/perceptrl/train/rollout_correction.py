"""The rollout engine's log-probs against the training model's: mismatch statistics and TIS weights.

An engine other than the training model (vLLM) samples completion ``y`` from its own computation
of the policy, ``mu``, with other kernels and precision, while the update scores ``y`` with the
training model, ``pi``. Per sampled token, ``lp_rollout = log mu(y_t)`` (the engine reports it)
and ``lp_train = log pi_old(y_t)`` (the training model before the update, same prompt and image
view the token was generated from). This module

- logs how far apart they are, every step (verl's ``compute_offpolicy_metrics`` in
  ``verl/trainer/ppo/rollout_corr_helper.py``; TRL's ``sampling/sampling_logp_difference``):
  ``mismatch/kl`` = token mean of ``r - log r - 1`` with ``r = pi/mu`` (the k3 estimator of
  ``KL(mu || pi)``, >= 0; verl's ``k3_kl``), ``mismatch/k1`` = token mean of
  ``lp_rollout - lp_train`` (verl's ``kl``), ``mismatch/abs_diff_mean`` and ``_max``;
- with ``rollout.tis_cap = C``, gives every token the truncated importance weight
  ``w = min(exp(lp_train - lp_rollout), C)``, detached, which multiplies the token's
  policy-gradient loss (``train.terms.surrogate_term``): TRL's ``vllm_importance_sampling_correction``
  in ``token_truncate`` mode (``grpo_trainer.py``; cap 3 by default) and verl's token-level
  ``rollout_is`` (``compute_rollout_correction_weights``; threshold 2 by default), after Yao et
  al., "Your efficient RL framework secretly brings you off-policy RL training" (2025).
  ``log r`` is clamped to [-20, 20] before the exponential, as verl does.

``lp_rollout`` is the log-prob under the distribution the engine sampled from (vLLM's
``processed_logprobs``: temperature, top-p and the suppressed vision tokens applied), as in TRL
and verl; ``lp_train`` is the training model's tempered softmax over the whole vocabulary. So
with ``top_p < 1`` the mismatch also counts the nucleus cut, and it counts the probability the
model gives the vision special tokens (about 2% for an untrained tiny model, ~0 for a trained one).

Only the rows the update trains on are compared. With the ``hf`` engine the completions carry no
generation log-probs and nothing is computed.
"""

from __future__ import annotations

import torch

from perceptrl.train.rollout import Rollout
from perceptrl.train.update import score_no_grad

LOG_RATIO_BOUND = 20.0  # verl's SAFETY_BOUND on log(pi / mu) before exp


def mismatch_stats(lp_train: torch.Tensor, lp_rollout: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token means (over ``mask``) of the mismatch between ``[R, T]`` training and rollout log-probs."""
    mask = mask.float()
    n = float(mask.sum())
    if n == 0:
        return {}
    # float64 and expm1: r - log r - 1 ~ (log r)^2 / 2 is below float32's resolution for log r ~ 1e-4
    log_ratio = (lp_train.double() - lp_rollout.double()) * mask  # log(pi / mu)
    k3 = (torch.expm1(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)) - log_ratio) * mask
    diff = log_ratio.abs()
    return {
        "mismatch/kl": float(k3.sum()) / n,
        "mismatch/k1": float(-log_ratio.sum()) / n,
        "mismatch/abs_diff_mean": float(diff.sum()) / n,
        "mismatch/abs_diff_max": float(diff.max()),
    }


def tis_weights(lp_train: torch.Tensor, lp_rollout: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights ``min(exp(lp_train - lp_rollout), cap)`` ``[R, T]``, 0 off ``mask``, detached."""
    log_ratio = (lp_train - lp_rollout).detach().float().clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return torch.exp(log_ratio).clamp(max=cap) * mask.float()


def rollout_correction(policy, rollout: Rollout, micro_batch_size: int, temperature: float,
                       tis_cap: float | None = None) -> dict[str, float]:
    """Mismatch statistics of the rollout (and ``rollout.extra["tis_weight"]`` if ``tis_cap``).

    ``lp_train`` reuses ``rollout.extra["old_logprobs"]`` when it was computed under the
    generating views; otherwise one no-grad forward of the update rows under their generating
    views (NoisyRollout's noisy completions: the noisy image; the update still conditions them on
    the clean one, as the method asks: only the engine's error is corrected, not the plan's).
    """
    comp = rollout.completions
    if comp.logprobs is None:
        return {}
    old = rollout.extra.get("old_logprobs")
    if old is not None and torch.equal(comp.rows.cpu(), rollout.update_rows.cpu()):
        lp_train = old
    else:
        lp_train = score_no_grad(policy, rollout, comp.rows, micro_batch_size, temperature)["logprobs"]
    mask = torch.zeros(comp.mask.shape, dtype=torch.float32, device=lp_train.device)
    rows = rollout.update_indices().to(lp_train.device)
    mask[rows] = comp.mask.to(lp_train.device)[rows].float()
    lp_rollout = comp.logprobs.to(lp_train.device)
    stats = mismatch_stats(lp_train, lp_rollout, mask)
    if tis_cap is not None:
        weights = tis_weights(lp_train, lp_rollout, mask, tis_cap)
        rollout.extra["tis_weight"] = weights
        n = float(mask.sum())
        if n:
            capped = (torch.exp((lp_train - lp_rollout).float().clamp(max=LOG_RATIO_BOUND)) > tis_cap) & (mask > 0)
            stats["mismatch/tis_weight_mean"] = float(weights.sum()) / n
            stats["mismatch/tis_capped_frac"] = float(capped.sum()) / n
    return stats
