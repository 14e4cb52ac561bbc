"""A recipe: the pieces one method plugs into the RL loop, assembled from the config.

A method is a choice along a few independent axes (ALGORITHMS.md section 8), each a small piece:
- a rollout *plan* (``plans.py``): generating views, update view or branch, extra scoring views;
- a *sampler* (``filters.py``): one round, or DAPO's dynamic sampling over rounds;
- *preparers* (``filters.py``): overlong punishment and masking, applied to the sampled batch;
- an advantage *estimator* and optional token *shapers* (``estimators.py``);
- *loss terms* (``terms.py``): surrogate (PPO's, or GSPO's / CISPO's / RLOO's), reference KL, entropy
  bonus, PAPO's perception terms;
- the token-level perception-aware pieces (``token_pieces.py``; docs/METHODS.md): a per-token
  visual-dependency signal from a counterfactual view, token selection and advantage scaling from it
  (VPPO, PGPO, ToR, VEPO), and DVRP's robustness term.
``build_recipe(config)`` picks them; there is no trainer subclass per method, and a hybrid
(PAPO on DAPO, DUPL on DAPO, PAPO plus NoisyRollout) is just another choice of pieces.

The loop asks the recipe six questions each step: which views generate completions
(``gen_specs``), which extra views are scored (``scoring_views``), how prompts are sampled
and filtered (``sample``), which extra forwards run before the update (``precompute``), what
the advantages are (``advantages``) and which loss terms make the update (``update_settings``).
Every answer is a function of the rollout step (counted from 1 as the released trainers count
``global_step``), so a resumed run makes the same choices.
"""

from __future__ import annotations

from typing import Callable

import torch

from perceptrl.algorithms.schedules import make_schedule
from perceptrl.config import Config, canonical_recipe, noisy_rollout_split
from perceptrl.train.estimators import DuplShaper, GroupEstimator, NoisyGrpoEstimator, RlooEstimator
from perceptrl.train.filters import DynamicSampling, OverlongMask, OverlongPenalty, single_round
from perceptrl.train.plans import (
    BranchSchedule,
    CleanPlan,
    DuplPaperPlan,
    DuplReleasedPlan,
    LadderPlan,
    NoisyRolloutPlan,
    Plan,
)
from perceptrl.train.rollout import GenSpec, Rollout
from perceptrl.train.terms import (
    PapoPerception,
    cispo_term,
    entropy_bonus_term,
    reference_kl_term,
    sampled_entropy_term,
    sequence_surrogate_term,
    surrogate_term,
)
from perceptrl.train.token_pieces import TokenWeightedEstimator, build_token_pieces
from perceptrl.train.update import LossTerm, Shaper, UpdateSettings


class Recipe:
    """A composition of pieces; holds no method-specific logic of its own."""

    def __init__(self, config: Config, plan: Plan, estimator, sampler=single_round, preparers=(),
                 terms: list[LossTerm] | None = None, shapers: list[Shaper] | None = None, extras=(),
                 name: str | None = None):
        self.config = config
        self.name = name or canonical_recipe(config.recipe)
        self.plan = plan
        self.estimator = estimator
        self.sampler = sampler
        self.preparers = list(preparers)  # objects with prepare(rollout, step)
        self.terms = list(terms or [])
        self.shapers = list(shapers or [])
        self.extras = list(extras)  # pieces with scoring_views(step) / precompute(policy, rollout, step)

    # -- rollout -------------------------------------------------------------
    def gen_specs(self, step: int) -> list[GenSpec]:
        return self.plan.gen_specs(step)

    def scoring_views(self, step: int) -> dict:
        views = dict(self.plan.scoring_views(step))
        for piece in self.extras:
            views.update(piece.scoring_views(step))
        return views

    def sample(self, next_prompts: Callable[[int], list], rollout_once: Callable[[list], Rollout], n: int,
               step: int) -> Rollout:
        rollout = self.sampler(next_prompts, rollout_once, n)
        for piece in self.preparers:
            piece.prepare(rollout, step)
        self.plan.prepare(rollout, step)
        return rollout

    def precompute(self, policy, rollout: Rollout, step: int) -> None:
        self.plan.precompute(policy, rollout, step)
        for piece in self.extras:
            piece.precompute(policy, rollout, step)

    # -- advantage -----------------------------------------------------------
    def advantages(self, rollout: Rollout, step: int) -> torch.Tensor:
        return self.estimator(rollout, step)

    # -- update --------------------------------------------------------------
    def loss_terms(self, step: int) -> list[LossTerm]:
        return self.terms

    def update_settings(self, step: int) -> UpdateSettings:
        c = self.config
        terms = self.loss_terms(step)
        return UpdateSettings(
            loss_agg_mode=c.algorithm.loss_agg_mode,
            micro_batch_size=c.train.micro_batch_size,
            max_grad_norm=c.train.max_grad_norm,
            max_len=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature,
            entropy_grad=any(getattr(piece, "needs_entropy_grad", False) for piece in [*terms, *self.shapers]),
            keep_hidden=any(getattr(piece, "needs_hidden", False) for piece in [*terms, *self.shapers]),
            terms=terms,
            shapers=self.shapers,
        )


def build_plan(config: Config) -> Plan:
    r, t = config.rollout, config.train
    if r.plan == "noisy_rollout":
        nr = config.noisy_rollout
        params = {"sigmoid": {"lam": nr.lam, "s_mid": nr.s_mid}, "constant": {"value": 1.0},
                  "linear": {"start": 1.0, "end": 0.0}}[nr.schedule]
        n1, n2 = noisy_rollout_split(config)
        return NoisyRolloutPlan(n1, n2, nr.t_max, make_schedule(nr.schedule, t.max_steps, **params))
    if r.plan == "noise_ladder":
        ng = config.noisy_grpo
        return LadderPlan(r.n, ng.levels, ng.clean_first_level)
    if r.plan == "dupl":
        d = config.dupl
        branch = BranchSchedule(d.branch_schedule, t.max_steps, d.branch_prob, t.seed)
        if d.variant == "paper":
            return DuplPaperPlan(r.n, d.sigma, branch)
        return DuplReleasedPlan(r.n, d.sigma, branch, t.micro_batch_size, r.temperature, d.view_per_rollout)
    return CleanPlan(r.n)


def policy_loss_term(config: Config) -> LossTerm:
    """The policy-gradient term ``policy_loss.type`` names (PPO's clipped surrogate by default)."""
    a, pl = config.algorithm, config.policy_loss
    if pl.type == "gspo":
        return sequence_surrogate_term(a.eps_low, a.eps_high, level="mean")
    if pl.type == "sequence_sum":
        return sequence_surrogate_term(a.eps_low, a.eps_high, level="sum")
    if pl.type == "cispo":
        return cispo_term(pl.cispo_max_ratio)
    return surrogate_term(a.eps_low, a.eps_high, a.dual_clip_c)


def build_recipe(config: Config, world_size: int = 1) -> Recipe:
    """Assemble the pieces the config asks for (``world_size``: processes sharing each step's prompts)."""
    a, p, f, d = config.algorithm, config.papo, config.filters, config.dupl
    plan = build_plan(config)

    if a.adv_estimator == "noisy_grpo":
        estimator = NoisyGrpoEstimator(config.noisy_grpo.p_alpha, config.noisy_grpo.R, a.adv_eps)
    elif a.adv_estimator == "rloo":
        estimator = RlooEstimator(normalize=a.adv_scale == "batch")
    else:
        estimator = GroupEstimator("none" if a.adv_estimator == "drgrpo" else a.adv_scale, a.adv_eps)
    shapers: list[Shaper] = []
    if a.adv_estimator == "dupl":
        shapers.append(DuplShaper(d.variant, d.alpha_p, d.beta_p, d.alpha_o, d.beta_o, d.use_u_per, d.use_u_out))

    terms: list[LossTerm] = [policy_loss_term(config)]
    if a.kl_beta > 0:
        terms.append(reference_kl_term(a.kl_beta, a.kl_type, a.kl_bias_correction, a.kl_clamp))
    if a.entropy_coef > 0:
        terms.append(entropy_bonus_term(a.entropy_coef))
    extras = []
    if p.gamma > 0 or p.eta1 > 0 or p.eta2 > 0:
        papo = PapoPerception(p.gamma, p.eta1, p.eta2, p.mask_patch, p.mask_prob, p.recompute_masked,
                              p.kl_clamp_max, config.train.micro_batch_size, config.rollout.temperature)
        terms.append(papo)
        extras.append(papo)
    token_extras, weighting, token_terms = build_token_pieces(config, world_size)
    extras += token_extras
    terms += token_terms
    if weighting is not None:
        estimator = TokenWeightedEstimator(estimator, weighting)
    if config.policy_loss.sampled_entropy_coef:
        terms.append(sampled_entropy_term(config.policy_loss.sampled_entropy_coef))

    sampler = single_round
    if f.dynamic_sampling:
        # round_prompts counts all processes, like data.rollout_batch_size: each generates its share
        sampler = DynamicSampling(f.accuracy_low, f.accuracy_high, f.max_tries, f.round_prompts // world_size)
    preparers = []
    if f.overlong_penalty:
        max_len = config.rollout.max_new_tokens
        cache = f.overlong_cache if f.overlong_cache is not None else max(1, int(0.2 * max_len))
        preparers.append(OverlongPenalty(max_len, cache))
    if f.overlong_mask:
        preparers.append(OverlongMask())

    return Recipe(config, plan, estimator, sampler, preparers, terms, shapers, extras)
