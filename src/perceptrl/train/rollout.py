"""Rollouts: which image views generate which completions, and the batch they produce.

A *rollout plan* says, for every prompt, which views generate how many completions
(``GenSpec``), and which view each completion is conditioned on in the update. Every
(prompt, view) pair is an *instance*; all instances of a step are run through the processor
once, in one call, and every completion row points at the instances it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from perceptrl.data.types import Sample
from perceptrl.models.policy import Completions, EncodedPrompts, Policy

# A view maps (image, seed) to a perturbed image of the same size; None is the clean image.
ViewFn = Callable[[Any, int], Any]


@dataclass
class GenSpec:
    """``count`` completions of every prompt generated from ``view`` (None = clean image).

    ``group`` names the advantage group inside a prompt (DUPL's paper variant normalises its
    clean and noisy groups separately); ``tags`` are per-row values an estimator may need
    (for example NoisyGRPO's noise level).
    """

    name: str
    count: int
    view: ViewFn | None = None
    group: str = "main"
    update_view: str = "clean"  # instance the update conditions on: "clean" or "self"
    tags: dict[str, float] = field(default_factory=dict)


@dataclass
class Rollout:
    """Everything one step generated and scored. Rows are completions, ``R`` of them."""

    samples: list[Sample]  # P prompts
    prompts: EncodedPrompts  # all instances, encoded once
    instance_of: dict[tuple[int, str], int]  # (prompt index, view name) -> instance row
    completions: Completions  # R rows; completions.rows = generating instance
    prompt_index: torch.Tensor  # [R] which prompt
    group_ids: torch.Tensor  # [R] advantage group
    update_rows: torch.Tensor  # [R] instance the update conditions on
    gen_view: list[str]  # [R] name of the generating view
    tags: dict[str, torch.Tensor] = field(default_factory=dict)  # [R] per-row values
    texts: list[str] = field(default_factory=list)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # reward, accuracy, format: [R]
    advantages: torch.Tensor | None = None  # [R] or [R, T]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # precomputed [R, T] tensors
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.completions.ids.shape[0]

    def rows_for_view(self, view: str) -> torch.Tensor:
        """Instance rows of ``view`` for every completion (same prompt)."""
        return torch.tensor([self.instance_of[(int(p), view)] for p in self.prompt_index.tolist()])


def build_instances(
    samples: list[Sample], views: dict[str, ViewFn | None], seed_of: Callable[[int, str], int]
) -> tuple[list[int], list[str], list[list[Any]]]:
    """Every (prompt, view) pair with its images; a view is applied once per prompt."""
    prompt_of, view_of, images = [], [], []
    for p, sample in enumerate(samples):
        for name, view in views.items():
            prompt_of.append(p)
            view_of.append(name)
            if view is None:
                images.append(list(sample.images))
            else:
                images.append([view(img, seed_of(p, f"{name}/{k}")) for k, img in enumerate(sample.images)])
    return prompt_of, view_of, images


def collect_rollout(
    policy: Policy,
    samples: list[Sample],
    specs: list[GenSpec],
    template,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed_of: Callable[[int, str], int],
    scoring_views: dict[str, ViewFn] | None = None,
) -> Rollout:
    """Encode every needed view once, then generate all completions in one call."""
    views: dict[str, ViewFn | None] = {"clean": None}
    for spec in specs:
        views.setdefault(spec.name, spec.view)
    for name, view in (scoring_views or {}).items():
        views.setdefault(name, view)
    prompt_of, view_of, images = build_instances(samples, views, seed_of)
    texts = [template.instruction(samples[p].problem) for p in prompt_of]
    encoded = policy.encode(texts, images)
    instance_of = {(p, v): i for i, (p, v) in enumerate(zip(prompt_of, view_of))}

    gen_rows, prompt_index, group_names, update_rows, gen_view = [], [], [], [], []
    tag_values: dict[str, list[float]] = {k: [] for spec in specs for k in spec.tags}
    for p in range(len(samples)):
        for spec in specs:
            for _ in range(spec.count):
                gen_rows.append(instance_of[(p, spec.name)])
                prompt_index.append(p)
                group_names.append((p, spec.group))
                update_view = spec.name if spec.update_view == "self" else spec.update_view
                update_rows.append(instance_of[(p, update_view)])
                gen_view.append(spec.name)
                for key in tag_values:
                    tag_values[key].append(float(spec.tags.get(key, 0.0)))
    group_lookup: dict[tuple[int, str], int] = {}
    group_ids = [group_lookup.setdefault(g, len(group_lookup)) for g in group_names]

    completions = policy.generate(encoded, gen_rows, max_new_tokens, temperature=temperature, top_p=top_p)
    return Rollout(
        samples=samples,
        prompts=encoded,
        instance_of=instance_of,
        completions=completions,
        prompt_index=torch.tensor(prompt_index),
        group_ids=torch.tensor(group_ids),
        update_rows=torch.tensor(update_rows),
        gen_view=gen_view,
        tags={k: torch.tensor(v) for k, v in tag_values.items()},
        texts=policy.decode(completions.ids, completions.mask),
    )


def score_rollout(rollout: Rollout, reward_fn) -> None:
    """Fill ``rollout.scores`` with reward, accuracy and format, one value per completion."""
    samples = [rollout.samples[int(p)] for p in rollout.prompt_index.tolist()]
    scored = reward_fn(rollout.texts, samples)
    rollout.scores = {k: torch.tensor(v, dtype=torch.float32) for k, v in scored.items()}

