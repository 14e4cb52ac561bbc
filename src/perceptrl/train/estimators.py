"""Advantage estimators on a rollout: sequence-level ones, and DUPL's token-level shaper.

- :class:`GroupEstimator`: GRPO / Dr.GRPO group-normalised advantage over each advantage group
  (a plan's groups: all of a prompt's rollouts, or DUPL's clean and noisy groups apart).
- :class:`NoisyGrpoEstimator`: NoisyGRPO's Kalman fusion of reward and noise-level prior.
- :class:`RlooEstimator`: RLOO's leave-one-out baseline (TRL 1.16 ``RLOOTrainer``, EasyR1 ``rloo``).
- :class:`DuplShaper`: DUPL's per-token bonuses. It runs *inside* the update
  (``UpdateSettings.shapers``), where the update's own forward already has what it needs (entropy,
  the output head's input, log-probs of the rollout policy), so the paper's full-vocabulary
  quantities cost one extra no-grad forward on the noisy-branch rows only, and the released ones
  none beyond the ``T(x)`` re-scoring.
"""

from __future__ import annotations

import torch

from perceptrl.algorithms.advantages import dupl_shape, group_advantage, noisy_grpo_advantage
from perceptrl.algorithms.losses import masked_sum
from perceptrl.algorithms.policy_losses import rloo_advantage
from perceptrl.algorithms.uncertainty import sampled_token_entropy, sym_kl_pointwise
from perceptrl.timing import timed
from perceptrl.train.rollout import Rollout
from perceptrl.train.update import MicroBatch


class GroupEstimator:
    """``A = (r - mean_g) / (std_g + eps)`` (``scale``: group | batch | none = Dr.GRPO)."""

    def __init__(self, scale: str, eps: float):
        self.scale, self.eps = scale, eps

    def __call__(self, rollout: Rollout, step: int) -> torch.Tensor:
        return group_advantage(rollout.scores["reward"], rollout.group_ids, scale=self.scale, eps=self.eps)


class NoisyGrpoEstimator:
    """NoisyGRPO (arXiv 2510.21122): ``A = GN((1 - K) GN(r) + K GN(1 - n))`` per group.

    ``n`` is each row's noise level (``rollout.tags["noise_level"]``, set by the ladder plan).
    Logs the mean Kalman gain over groups.
    """

    def __init__(self, p_alpha: float, R: float, eps: float):
        self.p_alpha, self.R, self.eps = p_alpha, R, eps

    def __call__(self, rollout: Rollout, step: int) -> torch.Tensor:
        adv, gain = noisy_grpo_advantage(
            rollout.scores["reward"], rollout.tags["noise_level"], rollout.group_ids,
            p_alpha=self.p_alpha, R=self.R, eps=self.eps,
        )
        rollout.stats["noisy_grpo/kalman_gain"] = float(gain.mean())
        return adv.float()


class DuplShaper:
    """DUPL (arXiv 2510.01444; ruiiu/DUPL) advantage shaping, per token, in the update.

    Rows on the noisy branch (``rollout.tags["noisy_branch"] == 1``) get
    ``A_noi_hat = A + g_out + g_per``, the others ``A_raw_hat = A + g_out`` with
    ``g_out = min(|A| / beta_o, alpha_o u_out)`` and ``g_per = min(|A| / beta_p, alpha_p u_per)``.

    ``variant="paper"``: ``u_out`` is the full-vocabulary entropy under the row's own update view
    (``x`` for raw rows, ``x'`` for noisy rows), ``u_per`` the full-vocabulary symmetric KL between
    the policy under ``x`` and under ``x'`` (the noisy rows are updated on ``x'``: the update's forward
    keeps their output head's input under ``x'``, ``MicroBatch.hidden``; one no-grad forward under
    ``x`` then computes the KL inside its output head, chunk by chunk, with no ``[rows, T, V]``
    logits ever held). Both bonuses use the unshaped |A|.
    ``variant="released"``: every row is updated on ``x``; ``u_per`` is the pointwise form on the
    sampled token from ``lp_raw`` (the rollout policy's log-probs on ``x``) and ``lp_noisy``
    (``extra["noisy_logprobs"]``, re-scored under ``T(x)``); ``u_out = -p log p`` of the sampled
    token under ``T(x)`` when the step's draw picked the noisy branch, else under ``x``; and, as
    their ``compute_grpo_outcome_advantage_dupl``, ``g_out`` is computed from ``A + g_per``.
    """

    def __init__(self, variant: str, alpha_p: float, beta_p: float, alpha_o: float, beta_o: float,
                 use_u_per: bool = True, use_u_out: bool = True):
        self.variant = variant
        self.alpha_p, self.beta_p, self.alpha_o, self.beta_o = alpha_p, beta_p, alpha_o, beta_o
        self.use_u_per, self.use_u_out = use_u_per, use_u_out
        self.needs_hidden = variant == "paper" and use_u_per

    def __call__(self, mb: MicroBatch):
        noisy = mb.rollout.tags["noisy_branch"][mb.rows].bool().to(mb.mask.device)
        if self.variant == "paper":
            u_out, u_per = self._paper(mb, noisy)
        else:
            u_out, u_per = self._released(mb, noisy)
        if not self.use_u_out:
            u_out = torch.zeros_like(u_out)
        shape = dict(alpha_o=self.alpha_o, beta_o=self.beta_o, alpha_p=self.alpha_p, beta_p=self.beta_p)
        raw = dupl_shape(mb.advantages, u_out, None, mb.mask, **shape)
        if u_per is not None and self.use_u_per and noisy.any():
            shaped_noisy = dupl_shape(mb.advantages, u_out, u_per, mb.mask, sequential=self.variant == "released", **shape)
            shaped = torch.where(noisy.unsqueeze(-1), shaped_noisy, raw)
        else:
            shaped = raw
        m = mb.mask
        base = shaped.new_zeros(m.shape) + (mb.advantages.unsqueeze(-1) if mb.advantages.dim() == 1 else mb.advantages)
        stats = {
            "dupl/u_out": (masked_sum(u_out, m), m.sum()),
            "dupl/bonus": (masked_sum(shaped - base, m), m.sum()),
            "dupl/adv_shaped_abs": (masked_sum(shaped.abs(), m), m.sum()),
        }
        if u_per is not None and noisy.any():
            nm = m * noisy.unsqueeze(-1)
            stats["dupl/u_per"] = (masked_sum(u_per, nm), nm.sum())
        return shaped.float(), stats

    def _paper(self, mb: MicroBatch, noisy: torch.Tensor):
        if mb.entropy is None:
            raise RuntimeError("DUPL paper variant needs the update's full-vocabulary entropy (need_entropy)")
        u_out = mb.entropy.detach().float()
        if not (self.use_u_per and noisy.any()):
            return u_out, None
        if mb.hidden is None:
            raise RuntimeError("DUPL paper variant with u_per needs the update's hidden states (keep_hidden)")
        u_per = torch.zeros_like(u_out)
        rollout, comp = mb.rollout, mb.rollout.completions
        picked = mb.rows[noisy.cpu()]
        local = noisy.nonzero().flatten()
        clean_rows = rollout.rows_for_view("clean")
        # The noisy rows were scored under x' by the update; one no-grad forward under x computes, in its
        # output head, the KL between its distribution and the one of the update's head input under x'.
        with torch.no_grad(), timed("scoring/extra_views"):  # a no-grad forward inside the update
            u_per[local] = mb.policy.score(rollout.prompts, clean_rows[picked], comp.ids[picked], comp.mask[picked],
                                           temperature=mb.temperature, kl_hidden=mb.hidden[local])["sym_kl"]
        return u_out, u_per

    def _released(self, mb: MicroBatch, noisy: torch.Tensor):
        lp_raw = mb.old_logprobs.detach()
        if not noisy.any():
            return sampled_token_entropy(lp_raw), None
        lp_noisy = mb.extra["noisy_logprobs"]
        u_out = sampled_token_entropy(torch.where(noisy.unsqueeze(-1), lp_noisy, lp_raw))
        return u_out, sym_kl_pointwise(lp_raw, lp_noisy)


class RlooEstimator:
    """RLOO (arXiv 2402.14740): ``A_i = r_i - mean_{j != i in its group} r_j``.

    ``normalize``: TRL's ``normalize_advantages`` (``(A - mean) / (std + 1e-4)`` over the batch; here over
    this process's rows, TRL's over the gathered generation batch). Config: ``algorithm.adv_estimator: rloo``
    with ``adv_scale: none`` (plain) or ``batch`` (normalised).
    """

    def __init__(self, normalize: bool = False):
        self.normalize = normalize

    def __call__(self, rollout: Rollout, step: int) -> torch.Tensor:
        return rloo_advantage(rollout.scores["reward"], rollout.group_ids, normalize=self.normalize)
