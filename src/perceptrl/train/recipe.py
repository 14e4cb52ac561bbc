"""A recipe: the pieces one method plugs into the RL loop, built from the config.

The loop asks the recipe six questions each step: which views generate completions
(``gen_specs``), which extra views are scored (``scoring_views``), how prompts are sampled
and filtered (``sample``), which extra forwards run before the update (``precompute``), what
the advantages are (``advantages``) and which loss terms make the update (``update_settings``).
"""

from __future__ import annotations

from typing import Callable

import torch

from perceptrl.algorithms.advantages import group_advantage
from perceptrl.config import Config
from perceptrl.train.rollout import GenSpec, Rollout
from perceptrl.train.update import UpdateSettings, entropy_bonus_term, reference_kl_term, surrogate_term


class Recipe:
    """GRPO and its loss/advantage options; methods extend it by configuration."""

    def __init__(self, config: Config):
        self.config = config

    # -- rollout -------------------------------------------------------------
    def gen_specs(self, step: int) -> list[GenSpec]:
        return [GenSpec("clean", self.config.rollout.n)]

    def scoring_views(self, step: int) -> dict:
        return {}

    def sample(self, next_prompts: Callable[[int], list], rollout_once: Callable[[list], Rollout], n: int) -> Rollout:
        return rollout_once(next_prompts(n))

    def precompute(self, policy, rollout: Rollout, step: int) -> None:
        return None

    # -- advantage -----------------------------------------------------------
    def advantages(self, rollout: Rollout, step: int) -> torch.Tensor:
        a = self.config.algorithm
        return group_advantage(rollout.scores["reward"], rollout.group_ids, scale=a.adv_scale, eps=a.adv_eps)

    # -- update --------------------------------------------------------------
    def loss_terms(self, step: int) -> list:
        a = self.config.algorithm
        terms = [surrogate_term(a.eps_low, a.eps_high, a.dual_clip_c)]
        if a.kl_beta > 0:
            terms.append(reference_kl_term(a.kl_beta, a.kl_type))
        if a.entropy_coef > 0:
            terms.append(entropy_bonus_term(a.entropy_coef))
        return terms

    def update_settings(self, step: int) -> UpdateSettings:
        c = self.config
        return UpdateSettings(
            loss_agg_mode=c.algorithm.loss_agg_mode,
            micro_batch_size=c.train.micro_batch_size,
            max_grad_norm=c.train.max_grad_norm,
            max_len=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature,
            terms=self.loss_terms(step),
        )


def build_recipe(config: Config) -> Recipe:
    return Recipe(config)
