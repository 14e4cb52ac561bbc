"""Rollout plans: which views generate a step's completions, and which view each row is updated on.

A plan answers, for a given rollout step ``s`` (counted from 1 as the released trainers count
``global_step``; a pure function of it, so exact on resume):
- ``gen_specs(step)``: the generating views and their counts (``GenSpec``);
- ``scoring_views(step)``: views the completions are only re-scored under;
- ``prepare(rollout, step)``: once the rollout exists, which rows make the update and on which
  branch, plus the plan's per-step signals (noise strength, branch fraction);
- ``precompute(policy, rollout, step)``: no-grad forwards the plan's pieces need.

Plans: :class:`CleanPlan` (GRPO, DAPO, PAPO), :class:`NoisyRolloutPlan`, :class:`LadderPlan`
(NoisyGRPO), :class:`DuplPaperPlan` and :class:`DuplReleasedPlan`.
"""

from __future__ import annotations

import numpy as np
import torch

from perceptrl.algorithms.schedules import make_schedule
from perceptrl.train.rollout import GenSpec, Rollout, ScoringView
from perceptrl.train.update import score_no_grad
from perceptrl.vision.views import make_view


class Plan:
    """Base: G completions from the clean image, updated on the clean image."""

    def __init__(self, n: int):
        self.n = n

    def gen_specs(self, step: int) -> list[GenSpec]:
        return [GenSpec("clean", self.n)]

    def scoring_views(self, step: int) -> dict:
        return {}

    def prepare(self, rollout: Rollout, step: int) -> None:
        return None

    def precompute(self, policy, rollout: Rollout, step: int) -> None:
        return None


class CleanPlan(Plan):
    """GRPO's plan: ``rollout.n`` completions from the clean image."""


class NoisyRolloutPlan(Plan):
    """NoisyRollout (arXiv 2504.13055): ``n1`` rollouts from ``x``, ``n2`` from an annealed DDPM view.

    The noisy view is ``ddpm(t)`` with ``t = int(t_max * eta(s))`` (``t_max = 500``), one noisy
    image per prompt shared by its ``n2`` rollouts (as ``augment_batch`` in their code, before the
    prompt is repeated). Every row is scored and updated on the clean image, and all ``n1 + n2``
    rows form one advantage group. Logged: ``noisy_rollout/eta`` and ``noisy_rollout/t``.
    """

    def __init__(self, n1: int, n2: int, t_max: int, schedule):
        super().__init__(n1 + n2)
        self.n1, self.n2, self.t_max, self.schedule = n1, n2, t_max, schedule

    def noise_step(self, step: int) -> tuple[float, int]:
        eta = min(max(self.schedule(step), 0.0), 1.0)
        return eta, min(int(self.t_max * eta), 999)

    def gen_specs(self, step: int) -> list[GenSpec]:
        _, t = self.noise_step(step)
        specs = [GenSpec("clean", self.n1)] if self.n1 else []
        return specs + [GenSpec("noisy_rollout", self.n2, view=make_view("ddpm", t=t), tags={"noisy": 1.0})]

    def prepare(self, rollout: Rollout, step: int) -> None:
        eta, t = self.noise_step(step)
        rollout.stats.update({"noisy_rollout/eta": eta, "noisy_rollout/t": float(t)})


class LadderPlan(Plan):
    """NoisyGRPO (arXiv 2510.21122): one rollout group per prompt over a ladder of DDPM noise levels.

    Each level ``n`` generates ``G / len(levels)`` rollouts from ``ddpm(t = int(n * 1000))``; rows are
    tagged with ``noise_level`` for the Kalman advantage, and scored and updated on the clean image.
    ``clean_first_level``: level 0 uses the clean image itself (the spec: "the first is clean");
    their code applies ``ddpm(t=0)`` (noise std 0.0047) to it, which ``false`` reproduces.
    Logged: ``noisy_grpo/noise_level_mean`` and ``noisy_grpo/noise_level_max``.
    """

    def __init__(self, n: int, levels: list[float], clean_first_level: bool):
        super().__init__(n)
        self.levels = list(levels)
        self.per_level = n // len(self.levels)
        self.specs = []
        for level in self.levels:
            tags = {"noise_level": float(level)}
            if level == 0.0 and clean_first_level:
                self.specs.append(GenSpec("clean", self.per_level, tags=tags))
            else:
                view = make_view("ddpm", noise_level=float(level))
                self.specs.append(GenSpec(f"ladder_{level:g}", self.per_level, view=view, tags=tags))

    def gen_specs(self, step: int) -> list[GenSpec]:
        return self.specs

    def prepare(self, rollout: Rollout, step: int) -> None:
        levels = rollout.tags["noise_level"]
        rollout.stats.update({
            "noisy_grpo/noise_level_mean": float(levels.mean()),
            "noisy_grpo/noise_level_max": float(levels.max()) if len(levels) else 0.0,
        })


def prompt_positions(rollout: Rollout) -> list[int]:
    """Each prompt's global data position (``rollout.tags["data_position"]``, set by the loop).

    Per-prompt random draws are seeded by it, never by the prompt's index within one process, so a
    run draws the same whatever the number of processes (spec section 10). A rollout built without
    it (a unit test) counts its prompts from 0, as one process would.
    """
    if "data_position" not in rollout.tags:
        return list(range(len(rollout.samples)))
    positions = [0] * len(rollout.samples)
    for p, q in zip(rollout.prompt_index.tolist(), rollout.tags["data_position"].tolist()):
        positions[int(p)] = int(q)
    return positions


class BranchSchedule:
    """DUPL's branch probability ``p_noi(s)`` and its seeded Bernoulli draws (pure functions of the step).

    ``kind="linear"``: ``p_noi(s) = max(0, 1 - s / S)`` (the paper); ``kind="constant"``: ``value``
    (the fixed-0.5 ablation). Draws come from ``numpy`` seeded by ``(seed, step)``, and per-prompt
    draws (:meth:`draw_for_prompts`) also by the prompt's global data position.
    """

    def __init__(self, kind: str, total_steps: int, value: float, seed: int):
        self.schedule = make_schedule("dupl_linear", total_steps) if kind == "linear" else make_schedule(
            "constant", total_steps, value=value)
        self.seed = seed

    def p(self, step: int) -> float:
        return float(self.schedule(step))

    def draw(self, step: int, shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, 0xD0]))
        return rng.random(shape) < self.p(step)

    def draw_for_prompts(self, step: int, positions: list[int], n: int) -> np.ndarray:
        """``[len(positions), n]`` draws: row ``i`` from a generator seeded by ``(seed, step, positions[i])``."""
        p = self.p(step)
        rows = [np.random.default_rng(np.random.SeedSequence([self.seed, step, 0xD0, q])).random(n) < p
                for q in positions]
        return np.stack(rows) if rows else np.zeros((0, n), dtype=bool)


class DuplPaperPlan(Plan):
    """DUPL paper (Algorithm 1): G rollouts from ``x`` and G from ``x' = T(x)``, normalised apart.

    ``x'`` is drawn once per prompt (seeded per prompt and step) and shared by its G rollouts.
    For each pair ``i`` a Bernoulli(``p_noi(s)``) draw picks the noisy sample ``(x', o'_i)``
    (updated on ``x'``) or the clean one ``(x, o_i)``; the other is not trained on. The draws of a
    prompt are seeded by its global data position (:func:`prompt_positions`). Rows carry
    ``tags["noisy_branch"]``. Logged: ``dupl/p_noi`` and ``dupl/noisy_fraction``.
    """

    def __init__(self, n: int, sigma: float, branch: BranchSchedule):
        super().__init__(n)
        self.view = make_view("vogue", sigma=sigma)
        self.branch = branch

    def gen_specs(self, step: int) -> list[GenSpec]:
        return [
            GenSpec("clean", self.n, group="clean"),
            GenSpec("dupl_tx", self.n, view=self.view, group="noisy", update_view="self", tags={"noisy": 1.0}),
        ]

    def prepare(self, rollout: Rollout, step: int) -> None:
        pick_noisy = torch.from_numpy(self.branch.draw_for_prompts(step, prompt_positions(rollout), self.n))
        is_noisy = rollout.tags["noisy"].bool()
        pair = rollout.slot - self.n * is_noisy.long()  # clean rows are slots 0..G-1, noisy G..2G-1
        chosen = pick_noisy[rollout.prompt_index, pair]
        rollout.keep_for_update(chosen == is_noisy)
        rollout.tags["noisy_branch"] = is_noisy.float()
        rollout.stats.update({"dupl/p_noi": self.branch.p(step), "dupl/noisy_fraction": float(pick_noisy.float().mean())})


class DuplReleasedPlan(Plan):
    """DUPL as released (ruiiu/DUPL): G rollouts from ``x`` only, always updated on ``x``.

    One Bernoulli(``p_noi(s)``) draw per step picks the branch, seeded by the step alone, so it is
    the same on every process (their code draws once per data-parallel rank). When it picks the noisy one, the
    completions are re-scored under ``T(x)`` (teacher-forced, no gradient); otherwise no extra
    forward runs at all (nothing would read it). ``T(x)`` is drawn once per prompt and step, like
    every view here, so the re-scoring shares each prompt's forward among its G rows;
    ``per_rollout`` draws it afresh for every rollout as their ``_get_augmented_log_probs`` does
    (one unshared prompt forward per row). Logged: ``dupl/p_noi``, ``dupl/noisy_fraction`` (0 or 1).
    """

    view_name = "dupl_tx"

    def __init__(self, n: int, sigma: float, branch: BranchSchedule, micro_batch_size: int, temperature: float,
                 per_rollout: bool = False):
        super().__init__(n)
        self.view = make_view("vogue", sigma=sigma)
        self.branch = branch
        self.micro_batch_size, self.temperature = micro_batch_size, temperature
        self.per_rollout = per_rollout

    def noisy_step(self, step: int) -> bool:
        return bool(self.branch.draw(step, (1,))[0])

    def scoring_views(self, step: int) -> dict:
        return {self.view_name: ScoringView(self.view, self.per_rollout)} if self.noisy_step(step) else {}

    def prepare(self, rollout: Rollout, step: int) -> None:
        noisy = self.noisy_step(step)
        rollout.tags["noisy_branch"] = torch.full((len(rollout),), float(noisy))
        rollout.stats.update({"dupl/p_noi": self.branch.p(step), "dupl/noisy_fraction": float(noisy)})

    def precompute(self, policy, rollout: Rollout, step: int) -> None:
        if self.noisy_step(step):
            rows = rollout.rows_for_view(self.view_name)
            rollout.extra["noisy_logprobs"] = score_no_grad(
                policy, rollout, rows, self.micro_batch_size, self.temperature
            )["logprobs"]
