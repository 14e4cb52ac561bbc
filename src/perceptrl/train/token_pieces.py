"""Recipe pieces of the token-level perception-aware family (docs/METHODS.md).

The shared mechanism is a per-token *visual-dependency signal* of the rollout policy and a way to use
it. Three pieces, each chosen by its own config section, make a method a YAML file:

- :class:`TokenSignal` (``token_signal``): a counterfactual view (any ``vision.views`` view, or the image
  removed) scored once per rollout step, before the update and without gradient, together with the
  clean view under the same (rollout) policy; from the two it computes the per-token signal (VPPO's
  sampled k3 or full-vocabulary KL, ToR's ``|log p - log q|``, VEPO's fused JSD / entropy-gap score)
  and, when a selection needs it, the rollout policy's entropy. Stored as ``rollout.extra``
  ``token_signal`` / ``token_entropy`` ``[R, T]``.
- :class:`TokenWeighting` (``token_select`` + ``token_scale``): per-token weights ``w >= 0`` from
  them: keep the top fraction of tokens (VPPO's gradient filter, VEPO, ToR's two weighted sets),
  scale per completion (VPPO's trajectory advantage shaping) or per token (PGPO), optionally
  renormalise to a mean over the selected tokens (VEPO).
- :class:`TokenWeightedEstimator`: the advantage becomes ``A_i * w_{i,t}`` ``[R, T]``. For ``w >= 0``
  the clipped surrogate (dual clip included) of ``w A`` is ``w`` times that of ``A``, so this is exactly
  the released codes' "multiply the token's policy loss by its weight", with the loss's denominators
  unchanged, and it needs nothing from the update: every optimizer step of the rollout step reads the
  same weights, computed from the rollout policy.

Plus :class:`DvrpRobustness`, DVRP's KL to an annealed noised view (a scoring view and a loss term;
DVRP's masked-view term is PAPO's piece). Full-vocabulary quantities are computed in the model's output
head, a chunk of tokens at a time (``models/logits.py``, a ``VocabReduction``): the counterfactual view is
scored first and keeps its head input ``[rows, T, H]``; the clean forward's head then reduces both views'
log-probs per chunk. Nothing of the vocabulary's size outlives a chunk.
"""

from __future__ import annotations

import math

import torch

from perceptrl.algorithms.losses import masked_mean, perception_kl
from perceptrl.models.logits import VocabReduction
from perceptrl.algorithms.token_signals import (
    abs_log_ratio,
    full_kl_from_log_probs,
    jsd_and_entropies_from_log_probs,
    pgpo_token_scale,
    response_mean,
    sampled_k3,
    selected_token_rescale,
    tor_token_weights,
    top_fraction_mask,
    truncated_entropy_from_log_probs,
    vepo_score,
    vppo_sequence_scale,
)
from perceptrl.timing import timed
from perceptrl.train.rollout import Rollout, ScoringView
from perceptrl.train.update import MicroBatch, score_no_grad
from perceptrl.vision.views import make_view

FULL_VOCAB_METRICS = ("kl_full", "vepo")


class RemoveImage:
    """The "image removed" counterfactual: the prompt keeps its text and loses its image(s).

    A view returning None drops the image (``rollout.build_instances``), so the instance is encoded
    without image tokens: ``pi(o_t | q, o_<t)``, ToR's ``pi(o_t | emptyset, q)`` and PGPO's text-only
    ("blind") distribution. PGPO's paper masks the attention to the image tokens instead; removing
    them gives the same text-only conditioning with the text at other positions.
    """

    name = "no_image"

    def __call__(self, image, seed):
        return None


def make_token_view(view_cfg):
    """The view of a ``TokenViewConfig``: a ``vision.views.View`` or :class:`RemoveImage`."""
    if view_cfg.name == "no_image":
        return RemoveImage()
    return make_view(view_cfg.name, **view_cfg.params())


class TokenSignal:
    """The per-token visual dependency of the rollout policy (see module doc), one forward pair per step.

    ``metric``: ``k3`` (sampled-token k3 of ``KL(pi(.|I) || pi(.|I'))`` clamped to ``[0, 10]``; VPPO's and
    PGPO's released form), ``abs_log_ratio`` (ToR), ``kl_full`` (VPPO's paper form), ``vepo``.
    ``need_entropy``: also keep the rollout policy's entropy of each token (``entropy_top_p < 1``: of
    the top-p truncated distribution). Logged: ``token_signal/mean`` (and VEPO's ``token_signal/jsd``,
    ``token_signal/entropy_gap``).
    """

    view_name = "token_view"

    def __init__(self, metric: str, view, per_rollout: bool, micro_batch_size: int, temperature: float,
                 need_entropy: bool = False, entropy_top_p: float = 1.0, vepo_alpha: float = 0.7):
        self.metric, self.view, self.per_rollout = metric, view, per_rollout
        self.micro_batch_size, self.temperature = micro_batch_size, temperature
        self.need_entropy, self.entropy_top_p, self.vepo_alpha = need_entropy, entropy_top_p, vepo_alpha
        self.reduction = self._reduction()

    def _reduction(self) -> VocabReduction | None:
        """What the clean forward's output head computes per chunk beyond log-probs (None: nothing).

        From the clean view's log-probs ``lp`` and, for the full-vocabulary metrics, the counterfactual
        view's ``lq`` (both ``[chunk, V]`` at the sampling temperature): VPPO's ``KL(P||Q)``; VEPO's JSD
        and both entropies; ToR's top-p truncated entropy of ``P``.
        """
        pair = self.metric in FULL_VOCAB_METRICS
        top_p_entropy = self.need_entropy and self.entropy_top_p < 1.0
        if not (pair or top_p_entropy):
            return None
        columns = {"kl_full": ("kl_full",), "vepo": ("jsd", "entropy_clean", "entropy_view")}.get(self.metric, ())
        columns += ("entropy_top_p",) if top_p_entropy else ()
        metric, top_p = self.metric, self.entropy_top_p

        def reduce(lp, lq):
            out = []
            if metric == "kl_full":
                out.append(full_kl_from_log_probs(lp, lq))
            elif metric == "vepo":
                out.extend(jsd_and_entropies_from_log_probs(lp, lq))
            if top_p_entropy:
                out.append(truncated_entropy_from_log_probs(lp, top_p))
            return out

        return VocabReduction(columns, reduce, pair=pair)

    def scoring_views(self, step: int) -> dict:
        if self.metric == "none":  # entropy only: no counterfactual view
            return {}
        return {self.view_name: ScoringView(self.view, self.per_rollout)}

    @torch.no_grad()
    def precompute(self, policy, rollout: Rollout, step: int) -> None:
        comp = rollout.completions
        update = rollout.update_indices()
        clean = rollout.update_rows
        view = rollout.rows_for_view(self.view_name) if self.metric != "none" else clean
        signal = torch.zeros(comp.ids.shape, dtype=torch.float32, device=comp.ids.device)
        entropy = torch.zeros_like(signal) if self.need_entropy else None
        extra: dict[str, torch.Tensor] = {}
        size = self.micro_batch_size
        was_training = policy.model.training
        policy.model.eval()
        with timed("scoring/token_signal"):
            for start in range(0, len(update), size):
                rows = update[start : start + size]
                parts = self._score(policy, rollout, clean[rows], view[rows], comp.ids[rows], comp.mask[rows])
                if "signal" in parts:
                    signal[rows] = parts.pop("signal").to(signal.device, signal.dtype)
                if entropy is not None:
                    entropy[rows] = parts.pop("entropy").to(entropy.device, entropy.dtype)
                for key, value in parts.items():
                    extra.setdefault(key, torch.zeros_like(signal))[rows] = value.to(signal.device, signal.dtype)
        policy.model.train(was_training)
        if self.metric != "none":
            rollout.extra["token_signal"] = signal
        if entropy is not None:
            rollout.extra["token_entropy"] = entropy
        mask = _update_mask(rollout)
        if self.metric != "none":
            rollout.stats["token_signal/mean"] = float(masked_mean(signal, mask)) if mask.any() else 0.0
        for key, value in extra.items():
            rollout.stats[f"token_signal/{key}"] = float(masked_mean(value, mask)) if mask.any() else 0.0

    def _score(self, policy, rollout: Rollout, clean_rows, view_rows, ids, mask) -> dict[str, torch.Tensor]:
        t, reduction = self.temperature, self.reduction
        pair = reduction is not None and reduction.pair
        b = None
        if self.metric != "none":  # first: its head input is the second distribution of a pair reduction
            b = policy.score(rollout.prompts, view_rows, ids, mask, temperature=t, keep_hidden=pair)
        a = policy.score(rollout.prompts, clean_rows, ids, mask, temperature=t,
                         with_entropy=self.need_entropy and self.entropy_top_p >= 1.0,
                         kl_hidden=b["hidden"] if pair else None, reduce=reduction)
        out: dict[str, torch.Tensor] = {}
        if self.metric == "none":
            pass
        elif self.metric == "k3":
            out["signal"] = sampled_k3(a["logprobs"], b["logprobs"])
        elif self.metric == "abs_log_ratio":
            out["signal"] = abs_log_ratio(a["logprobs"], b["logprobs"])
        elif self.metric == "kl_full":
            out["signal"] = a["kl_full"]
        elif self.metric == "vepo":
            jsd, h, hv = a["jsd"], a["entropy_clean"], a["entropy_view"]
            out["signal"] = vepo_score(jsd, h, hv, mask, self.vepo_alpha)
            out["jsd"], out["entropy_gap"] = jsd, (hv - h).abs()
        else:
            raise ValueError(f"unknown token signal metric {self.metric!r}")
        if self.need_entropy:
            out["entropy"] = a["entropy_top_p"] if self.entropy_top_p < 1.0 else a["entropy"]
        return out


def _update_mask(rollout: Rollout) -> torch.Tensor:
    """``[R, T]`` float: completion tokens of the rows that make the update."""
    mask = rollout.completions.mask.float()
    keep = torch.zeros(len(rollout), dtype=mask.dtype, device=mask.device)
    keep[rollout.update_indices().to(mask.device)] = 1.0
    return mask * keep.unsqueeze(-1)


class TokenWeighting:
    """Per-token weights ``[R, T]`` from the signal (and entropy) of :class:`TokenSignal` (see module doc).

    ``signal_fraction`` / ``entropy_fraction`` (None: unused): keep the top fraction of tokens by the
    signal / by entropy, per completion or over the rollout batch (``granularity``); the kept tokens
    weigh ``signal_weight`` / ``entropy_weight`` (a token in both: ``entropy_weight``, ToR), the others
    0. ``scale``: ``vppo`` multiplies each completion by its trajectory factor (over each PPO
    mini-batch, ``vppo_scope="minibatch"``, or the whole rollout), ``pgpo`` each token by its weight.
    ``normalize="selected"``: divide by the share of selected tokens of the row's mini-batch, so that
    the token mean over all tokens becomes one over the selected ones (VEPO). ``prompts_per_minibatch``:
    this process's share of ``train.global_batch_size`` (mini-batch ``k`` holds prompts ``k*m..``).
    Logged: ``token_select/fraction`` (tokens with weight > 0), ``token_select/weight_mean``, the signal
    on kept and dropped tokens, and ``token_scale/factor_{mean,min,max}``.
    """

    def __init__(self, signal_fraction: float | None = None, entropy_fraction: float | None = None,
                 granularity: str = "response", signal_weight: float = 1.0, entropy_weight: float = 1.0,
                 normalize: str = "all", scale: str = "none", scale_params: dict | None = None,
                 prompts_per_minibatch: int | None = None):
        self.signal_fraction, self.entropy_fraction = signal_fraction, entropy_fraction
        self.granularity, self.signal_weight, self.entropy_weight = granularity, signal_weight, entropy_weight
        self.normalize, self.scale, self.scale_params = normalize, scale, dict(scale_params or {})
        self.prompts_per_minibatch = prompts_per_minibatch

    def minibatch_of(self, rollout: Rollout) -> torch.Tensor:
        """``[R]`` the PPO mini-batch of each row (``update.minibatch_rows``: prompts in order)."""
        if not self.prompts_per_minibatch:
            return torch.zeros(len(rollout), dtype=torch.long)
        return rollout.prompt_index // self.prompts_per_minibatch

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        mask = _update_mask(rollout)
        signal = rollout.extra.get("token_signal")
        stats = rollout.stats
        w = mask.clone()
        if self.signal_fraction is not None or self.entropy_fraction is not None:
            ent_set = sig_set = None
            if self.entropy_fraction is not None:
                ent_set = top_fraction_mask(rollout.extra["token_entropy"], mask, self.entropy_fraction, self.granularity)
            if self.signal_fraction is not None:
                sig_set = top_fraction_mask(signal, mask, self.signal_fraction, self.granularity)
            w = tor_token_weights(ent_set, sig_set, self.entropy_weight, self.signal_weight).to(mask.device) * mask
            if signal is not None:
                kept, dropped = mask * (w > 0), mask * (w == 0)
                stats["token_select/signal_kept"] = float(masked_mean(signal, kept)) if kept.any() else 0.0
                stats["token_select/signal_dropped"] = float(masked_mean(signal, dropped)) if dropped.any() else 0.0
        if self.scale == "vppo":
            group = self.minibatch_of(rollout) if self.scale_params.get("scope", "minibatch") == "minibatch" else \
                torch.zeros(len(rollout), dtype=torch.long)
            factor = vppo_sequence_scale(signal, mask, group, self.scale_params.get("scale_min", 0.9))
            w = w * factor.unsqueeze(-1).to(w.dtype)
            _, valid = response_mean(signal, mask)
            self._factor_stats(factor[valid], stats)
        elif self.scale == "pgpo":
            p = self.scale_params
            token_w = pgpo_token_scale(signal, mask, p.get("threshold", 0.4), p.get("boost", 2.0),
                                       p.get("threshold_mode", "absolute"), p.get("low_floor", 0.0),
                                       p.get("mass_normalize", True))
            w = w * token_w.to(w.dtype)
            self._factor_stats(token_w[mask.bool()], stats)
        if self.normalize == "selected":
            w = w * selected_token_rescale(w, mask, self.minibatch_of(rollout)).unsqueeze(-1).to(w.dtype)
        w = (w * mask).float()
        n = float(mask.sum())
        stats["token_select/fraction"] = float(((w > 0) & mask.bool()).sum()) / n if n else 0.0
        stats["token_select/weight_mean"] = float(masked_mean(w, mask)) if n else 0.0
        return w

    @staticmethod
    def _factor_stats(values: torch.Tensor, stats: dict) -> None:
        if values.numel():
            stats.update({"token_scale/factor_mean": float(values.mean()), "token_scale/factor_min": float(values.min()),
                          "token_scale/factor_max": float(values.max())})


class TokenWeightedEstimator:
    """``A_{i,t} = A_i * w_{i,t}``: any sequence-level estimator, weighted per token by :class:`TokenWeighting`."""

    def __init__(self, base, weighting: TokenWeighting):
        self.base, self.weighting = base, weighting

    def __call__(self, rollout: Rollout, step: int) -> torch.Tensor:
        adv = self.base(rollout, step)
        weights = self.weighting(rollout).to(adv.device)
        adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
        return (adv.float() * weights).float()


class DvrpRobustness:
    """DVRP's robustness term (arXiv 2601.06801): ``+ lambda_rob * token_mean(KL)`` to a noised view.

    The noised view is ``ddpm(t)`` with ``t = int(t_init * sigmoid(gamma * (0.5 - s / S)))`` (capped at
    ``t_max``), one per prompt, annealed over the run (``s`` the rollout step from 1, ``S`` the total;
    zsxm1998/awesome-perception-aware-rlvr ``verl/trainer/config.py`` ``noise_t_init``/``noise_gamma``, its
    reading of the paper's Eq. 6; NoisyRollout's 1,000-step schedule, as the paper says). The KL is the
    sampled-token k3 of PAPO (``d = clamp(lp_noised - lp, -20, 20)``, clamped to ``[-10, 10]``), with the
    noised log-probs scored once per rollout step without gradient, so it pulls the policy on the image
    towards the noised one. ``entropy_coef`` adds ``token_mean(-lp_noised)`` (DVRP's lambda_ent on this
    view; constant for the update). Logged: ``dvrp/robustness_kl``, ``dvrp/noised_entropy``, ``dvrp/t``.
    """

    view_name = "dvrp_noised"

    def __init__(self, coef: float, entropy_coef: float, t_init: float, gamma: float, t_max: int, total_steps: int,
                 micro_batch_size: int, temperature: float):
        self.coef, self.entropy_coef = coef, entropy_coef
        self.t_init, self.gamma, self.t_max, self.total_steps = t_init, gamma, t_max, max(total_steps, 1)
        self.micro_batch_size, self.temperature = micro_batch_size, temperature

    def noise_step(self, step: int) -> int:
        progress = step / self.total_steps
        t = self.t_init / (1.0 + math.exp(-self.gamma * (0.5 - progress)))
        return max(0, min(int(t), self.t_max))

    def scoring_views(self, step: int) -> dict:
        return {self.view_name: make_view("ddpm", t=self.noise_step(step))}

    def precompute(self, policy, rollout: Rollout, step: int) -> None:
        rows = rollout.rows_for_view(self.view_name)
        rollout.extra["dvrp_noised_logprobs"] = score_no_grad(
            policy, rollout, rows, self.micro_batch_size, self.temperature)["logprobs"]
        rollout.stats["dvrp/t"] = float(self.noise_step(step))

    def __call__(self, mb: MicroBatch):
        lp_noised = mb.extra["dvrp_noised_logprobs"]
        kl = perception_kl(mb.logprobs, lp_noised)
        loss = self.coef * mb.token_mean(kl)
        if self.entropy_coef:
            loss = loss + self.entropy_coef * mb.token_mean(-lp_noised)
        return loss, {"dvrp/robustness_kl": masked_mean(kl.detach(), mb.mask),
                      "dvrp/noised_entropy": masked_mean(-lp_noised.detach(), mb.mask)}


def build_token_pieces(config, world_size: int = 1):
    """The token-level pieces the config asks for: ``(extras, weighting or None, terms)``."""
    sig, sel, sca, dv = config.token_signal, config.token_select, config.token_scale, config.dvrp
    t_cfg, r_cfg = config.train, config.rollout
    extras, terms = [], []
    weighting = None
    uses_signal = sel.signal_fraction is not None or sca.method != "none"
    need_entropy = sel.entropy_fraction is not None
    if sig.metric != "none" or need_entropy:
        extras.append(TokenSignal(
            sig.metric, make_token_view(sig.view), sig.per_rollout,
            t_cfg.micro_batch_size, r_cfg.temperature, need_entropy, sel.entropy_top_p, sig.vepo_alpha,
        ))
    if uses_signal or need_entropy:
        global_batch = t_cfg.global_batch_size or config.data.rollout_batch_size
        scale_params = {
            "vppo": {"scale_min": sca.vppo_min, "scope": sca.vppo_scope},
            "pgpo": {"threshold": sca.pgpo_threshold, "boost": sca.pgpo_boost, "threshold_mode": sca.pgpo_threshold_mode,
                     "low_floor": sca.pgpo_low_floor, "mass_normalize": sca.pgpo_mass_normalize},
        }.get(sca.method, {})
        weighting = TokenWeighting(sel.signal_fraction, sel.entropy_fraction, sel.granularity, sel.signal_weight,
                                   sel.entropy_weight, sel.normalize, sca.method, scale_params,
                                   max(global_batch // max(world_size, 1), 1))
    if dv.robustness_coef > 0 or dv.entropy_coef > 0:
        dvrp = DvrpRobustness(dv.robustness_coef, dv.entropy_coef, dv.t_init, dv.gamma, dv.t_max, t_cfg.max_steps,
                              t_cfg.micro_batch_size, r_cfg.temperature)
        extras.append(dvrp)
        terms.append(dvrp)
    return extras, weighting, terms
