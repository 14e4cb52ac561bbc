"""Loss terms of the update, one per job; a recipe's loss is the sum of its terms.

A term is ``term(mb) -> (scalar loss, stats)`` of a :class:`~perceptrl.train.update.MicroBatch`
(see ``update.py`` for how stats are reduced). A term that trains on the full-vocabulary entropy
says so with a ``needs_entropy_grad`` attribute: the update's scoring pass then returns it with its
gradient (computed chunk by chunk inside the model's output head, ``perceptrl.models.logits``).

- :func:`surrogate_term`: clipped surrogate with clip-higher and dual clip (every recipe).
- :func:`reference_kl_term`: ``beta * agg(KL(pi || pi_ref))``, k1/k2/k3, optional TRL bias correction.
- :func:`entropy_bonus_term`: ``- coef * agg(H)``, full-vocabulary entropy with gradient.
- :class:`PapoPerception`: PAPO's perception KL (maximised) and double entropy loss, with the
  masked view it needs (a scoring view plus a no-grad forward, or a forward with gradient).
- :func:`sequence_surrogate_term`: GSPO's sequence-level ratio and clipping (and TRL's RLOO loss).
- :func:`cispo_term`: CISPO's clipped, stop-gradient importance weight on a REINFORCE loss.
- :func:`sampled_entropy_term`: ``+ coef * token_mean(-lp)``, a sampled-token entropy penalty (VPPO).
"""

from __future__ import annotations

import torch

from perceptrl.algorithms.losses import (
    clipped_surrogate,
    importance_ratio,
    kl_penalty,
    masked_mean,
    perception_kl,
)
from perceptrl.algorithms.policy_losses import cispo_loss, sequence_clipped_surrogate
from perceptrl.train.update import LossTerm, MicroBatch, score_no_grad
from perceptrl.vision.views import make_view


def surrogate_term(eps_low: float, eps_high: float, dual_clip_c: float | None) -> LossTerm:
    """PPO clipped surrogate (spec section 1), aggregated with the update's mode.

    Stats (per optimizer step, over the mini-batch's tokens on every process): ``clip_frac_low``,
    ``clip_frac_high``, ``dual_clip_frac``, ``ratio_mean``, ``ppo_kl`` (mean of ``lp_old - lp``, verl's
    name) as (sum, token count) pairs, so that they are exact token fractions, and ``ratio_max``.
    """

    def term(mb: MicroBatch):
        per_token, s = clipped_surrogate(
            mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask, eps_low, eps_high, dual_clip_c
        )
        if "tis_weight" in mb.extra:  # rollout.tis_cap: truncated IS weight (train.rollout_correction)
            per_token = per_token * mb.extra["tis_weight"]
        tokens = s["token_count"]
        stats = {
            "clip_frac_low": (s["clip_low_count"], tokens),
            "clip_frac_high": (s["clip_high_count"], tokens),
            "dual_clip_frac": (s["dual_clip_count"], tokens),
            "ratio_mean": (s["ratio_sum"], tokens),
            "ppo_kl": (s["ppo_kl_sum"], tokens),
            "ratio_max": s["ratio_max"],
        }
        return mb.agg(per_token), stats

    return term


def reference_kl_term(beta: float, kind: str, bias_correction: bool = False, clamp: bool = True) -> LossTerm:
    """``+ beta * agg(KL)`` to the frozen reference; ``bias_correction`` multiplies k3 by the
    importance ratio (TRL's ``use_bias_correction_kl``; gradient flows through the ratio);
    ``clamp``: EasyR1's clamps of k3 (false: unclamped, as TRL)."""

    def term(mb: MicroBatch):
        ratio = importance_ratio(mb.logprobs, mb.old_logprobs) if bias_correction else None
        kl = kl_penalty(mb.logprobs, mb.extra["ref_logprobs"], kind, ratio=ratio, clamp=clamp)
        return beta * mb.agg(kl), {"kl_ref": masked_mean(kl.detach(), mb.mask)}

    return term


def entropy_bonus_term(coef: float) -> LossTerm:
    """Subtract ``coef * token_mean(H)``, the full-vocabulary entropy of ``softmax(logits / temperature)``
    (keeps exploring).

    Always ``token_mean`` over the mini-batch, whatever the surrogate's aggregation, as released:
    NoisyRollout's ``dp_actor.py`` subtracts ``entropy_coeff * masked_mean(entropy, response_mask)``
    (``entropy_coeff: 1.0e-3`` in its ``training_scripts/config.yaml``).
    The entropy and its gradient come from the update's scoring pass (``needs_entropy_grad``), where
    the logits exist one chunk of tokens at a time, in the forward and the backward pass alike.
    """

    def term(mb: MicroBatch):
        if mb.entropy is None:
            raise RuntimeError("entropy_bonus_term needs the update's entropy with its gradient (entropy_grad)")
        return -coef * mb.token_mean(mb.entropy), {}

    term.needs_entropy_grad = True
    return term


class PapoPerception:
    """PAPO (arXiv 2507.06448; MikeWangWZHL/PAPO): implicit perception loss and double entropy.

    ``loss += -gamma * token_mean(KLprcp) + eta1 * token_mean(-lp) + eta2 * token_mean(-lp_mask)``
    with ``KLprcp = clamp(exp(d) - d - 1, -10, 10)``, ``d = clamp(lp_mask - lp, -20, 20)``
    (``algorithms.losses.perception_kl``). ``lp_mask`` scores the same sampled tokens under the
    masked image, one mask per prompt (shared by its G rollouts, seeded per prompt and step).

    By default ``lp_mask`` is computed once per rollout batch, before the update, without
    gradient (``RECOMPUTE_AUG_LOG_PROBS = False`` in their code): the gradient flows only through
    ``lp`` and the ``eta2`` term has none. ``recompute_masked`` re-scores the masked view inside
    the update, with gradient (one more forward and backward per micro-batch).
    Logged: ``papo/kl_prcp``, ``papo/entropy`` (``-lp``) and ``papo/masked_entropy`` (``-lp_mask``),
    the signals of "KL_prcp hacking" together with ``clip_frac_high``.
    """

    view_name = "papo_masked"

    def __init__(self, gamma: float, eta1: float, eta2: float, patch: int, prob: float,
                 recompute_masked: bool, kl_clamp_max: float | None, micro_batch_size: int, temperature: float):
        self.gamma, self.eta1, self.eta2 = gamma, eta1, eta2
        self.view = make_view("mask_patches", patch=patch, p=prob)
        self.recompute = recompute_masked
        self.clamp_max = kl_clamp_max
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature

    def scoring_views(self, step: int) -> dict:
        return {self.view_name: self.view}

    def precompute(self, policy, rollout, step: int) -> None:
        if not self.recompute:
            rows = rollout.rows_for_view(self.view_name)
            rollout.extra["masked_logprobs"] = score_no_grad(
                policy, rollout, rows, self.micro_batch_size, self.temperature
            )["logprobs"]

    def masked_logprobs(self, mb: MicroBatch) -> torch.Tensor:
        if not self.recompute:
            return mb.extra["masked_logprobs"]
        rows = mb.rollout.rows_for_view(self.view_name)[mb.rows]
        comp = mb.rollout.completions
        return mb.policy.score(mb.rollout.prompts, rows, comp.ids[mb.rows], comp.mask[mb.rows],
                               temperature=mb.temperature)["logprobs"]

    def __call__(self, mb: MicroBatch):
        lp = mb.logprobs
        lp_mask = self.masked_logprobs(mb)
        kl = perception_kl(lp, lp_mask, self.clamp_max)
        loss = -self.gamma * mb.token_mean(kl)
        if self.eta1:
            loss = loss + self.eta1 * mb.token_mean(-lp)
        if self.eta2:
            loss = loss + self.eta2 * mb.token_mean(-lp_mask)
        stats = {
            "papo/kl_prcp": masked_mean(kl.detach(), mb.mask),
            "papo/entropy": masked_mean(-lp.detach(), mb.mask),
            "papo/masked_entropy": masked_mean(-lp_mask.detach(), mb.mask),
        }
        return loss, stats


def sequence_surrogate_term(eps_low: float, eps_high: float, level: str = "mean") -> LossTerm:
    """Clipped surrogate on one importance ratio per sequence, aggregated with the update's mode.

    ``level="mean"``: GSPO (arXiv 2507.18071; TRL ``importance_sampling_level="sequence"``), whose
    released clip range is ``3e-4 / 4e-4`` and whose objective is the mean over sequences
    (``seq_mean_token_mean``). ``level="sum"``: TRL 1.16 ``RLOOTrainer``'s loss, the ratio of summed
    log-probs, mean over sequences. Stats: ``clip_frac_low`` / ``clip_frac_high`` and ``ratio_mean`` as
    fractions of sequences (the token-level surrogate's are fractions of tokens).
    """

    def term(mb: MicroBatch):
        per_token, s = sequence_clipped_surrogate(mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask,
                                                  eps_low, eps_high, level)
        if "tis_weight" in mb.extra:  # rollout.tis_cap, per token, as TRL weighs every loss type's tokens
            per_token = per_token * mb.extra["tis_weight"]
        seqs = s["seq_count"]
        stats = {"clip_frac_low": (s["seq_clip_low_count"], seqs), "clip_frac_high": (s["seq_clip_high_count"], seqs),
                 "ratio_mean": (s["seq_ratio_sum"], seqs)}
        return mb.agg(per_token), stats

    return term


def cispo_term(max_ratio: float = 5.0, min_ratio: float | None = None) -> LossTerm:
    """CISPO (MiniMax-M1, arXiv 2506.13585; TRL ``loss_type="cispo"``): ``agg(-sg(min(rho, max)) A lp)``.

    Stats: ``clip_frac_high`` (tokens whose weight was capped), ``ratio_mean`` (of the raw ratio).
    """

    def term(mb: MicroBatch):
        per_token, _ = cispo_loss(mb.logprobs, mb.old_logprobs, mb.advantages, max_ratio, min_ratio)
        if "tis_weight" in mb.extra:  # rollout.tis_cap (train.rollout_correction)
            per_token = per_token * mb.extra["tis_weight"]
        m = mb.mask.bool()
        ratio = importance_ratio(mb.logprobs.detach(), mb.old_logprobs).float()
        tokens = m.sum().float()
        stats = {"clip_frac_high": (((ratio > max_ratio) & m).sum().float(), tokens),
                 "ratio_mean": (ratio[m].sum(), tokens)}
        return mb.agg(per_token), stats

    return term


def sampled_entropy_term(coef: float) -> LossTerm:
    """``+ coef * token_mean(-lp)``: the sampled-token entropy estimate as a penalty (coef > 0, lowers the
    entropy of the sampled tokens) or bonus (coef < 0). VPPO's released ``use_entropy_penalty`` (huaixuheqing/
    VPPO-RL ``dp_actor.py``: ``-masked_mean(log_probs)``, ``entropy_penalty_coef`` 0.06 in train_vppo_7b.sh),
    always a token mean over the mini-batch."""

    def term(mb: MicroBatch):
        value = mb.token_mean(-mb.logprobs)
        return coef * value, {"sampled_entropy": masked_mean(-mb.logprobs.detach(), mb.mask)}

    return term
