"""Held-out accuracy of a policy: batched generation, scored by the project verifier.

It lives in ``train`` because the training loops evaluate before and after training, and imports
point down (``eval`` builds its reports on these functions).

- :func:`generate_completions`: completions for many samples, ``repeats`` per sample, one
  processor pass and one ``generate`` call per chunk of ``batch_size`` prompts, optionally on
  replaced images (a probe) and seeded per chunk (sampling is then a pure function of the seed,
  the samples and ``batch_size``);
- :func:`generate_answers`: the texts only (the original helper, kept for callers);
- :func:`accuracy_report`, :func:`evaluate_greedy`: the greedy evaluation the training loops run
  before, during and after training (signature and keys unchanged);
- :class:`PolicyGenerator`: the callable that :func:`perceptrl.eval.runner.run_evaluation` uses
  to generate; tests substitute a stub with the same call signature.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from perceptrl.data.types import Sample
from perceptrl.models.policy import Policy

__all__ = [
    "Generations",
    "PolicyGenerator",
    "accuracy_report",
    "chunk_seed",
    "evaluate_greedy",
    "generate_answers",
    "generate_completions",
]


@dataclass
class Generations:
    """Completions of ``len(texts)`` samples, ``repeats`` each: ``texts[i][j]`` is sample ``i``'s
    ``j``-th completion; ``lengths`` (tokens, end-of-turn included) and ``truncated`` (no
    end-of-turn within the token budget) are aligned with it."""

    texts: list[list[str]]
    lengths: list[list[int]] = field(default_factory=list)
    truncated: list[list[bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def flat_texts(self) -> list[str]:
        return [t for row in self.texts for t in row]


def chunk_seed(seed: int, *keys: int) -> int:
    """A torch seed for one generate call, independent of how many random draws came before."""
    return int(np.random.SeedSequence([int(seed) % 2**63, *[int(k) for k in keys]]).generate_state(1)[0])


@torch.no_grad()
def generate_completions(
    policy: Policy,
    samples: Sequence[Sample],
    template,
    max_new_tokens: int,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    repeats: int = 1,
    images: Sequence[Sequence[Any]] | None = None,
    seed: int | None = None,
    view: Callable[[Any, int], Any] | None = None,
) -> Generations:
    """Completions per sample (``repeats`` each), ``batch_size`` prompts per ``generate`` call.

    Args:
        images: per-sample image lists to use instead of ``sample.images`` (e.g. masked or blank
            images for a perception probe); the prompt text is unchanged.
        seed: with ``do_sample``, the torch generator is seeded per chunk with
            ``chunk_seed(seed, first_sample_index)`` (the global torch RNG is restored after);
            without it, sampling uses the global RNG as it stands.
        view: ``view(image, sample_index)`` perturbs each image (applied after ``images``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images is not None and len(images) != len(samples):
        raise ValueError(f"got {len(images)} image lists for {len(samples)} samples")
    was_training = policy.model.training
    policy.model.eval()
    result = Generations([], [], [])
    device = policy.device
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            chunk_images = [list(images[start + i]) if images is not None else list(s.images) for i, s in enumerate(chunk)]
            if view is not None:
                chunk_images = [[view(img, start + i) for img in imgs] for i, imgs in enumerate(chunk_images)]
            encoded = policy.encode([template.instruction(s.problem) for s in chunk], chunk_images)
            rows = torch.arange(len(chunk)).repeat_interleave(repeats)
            if do_sample and seed is not None:
                with torch.random.fork_rng(devices=fork_devices):
                    torch.manual_seed(chunk_seed(seed, start))
                    out = policy.generate(encoded, rows, max_new_tokens, temperature=temperature, top_p=top_p,
                                          do_sample=True)
            else:
                out = policy.generate(encoded, rows, max_new_tokens, temperature=temperature, top_p=top_p,
                                      do_sample=do_sample)
            decoded = policy.decode(out.ids, out.mask)
            lengths = out.mask.sum(-1).tolist()
            truncated = out.truncated.tolist()
            for i in range(len(chunk)):
                span = slice(i * repeats, (i + 1) * repeats)
                result.texts.append(decoded[span])
                result.lengths.append([int(x) for x in lengths[span]])
                result.truncated.append([bool(x) for x in truncated[span]])
    finally:
        policy.model.train(was_training)
    return result


def generate_answers(
    policy: Policy, samples: list[Sample], template, max_new_tokens: int, batch_size: int = 64,
    do_sample: bool = False, temperature: float = 1.0, repeats: int = 1, view=None,
) -> list[list[str]]:
    """Completions per sample (``repeats`` each). ``view(image, index)`` perturbs images if given."""
    return generate_completions(
        policy, samples, template, max_new_tokens, batch_size, do_sample=do_sample, temperature=temperature,
        repeats=repeats, view=view,
    ).texts


def accuracy_report(samples: list[Sample], scores: list[float]) -> dict[str, float]:
    """Overall, per-family and vision-dependent vs text-only mean accuracy."""
    report: dict[str, float] = {}
    by_key: dict[str, list[float]] = defaultdict(list)
    for sample, score in zip(samples, scores):
        by_key[f"family/{sample.family}"].append(score)
        by_key["vision_dependent" if sample.vision_dependent else "text_only"].append(score)
    report["accuracy"] = sum(scores) / max(len(scores), 1)
    for key, values in sorted(by_key.items()):
        report[f"accuracy/{key}"] = sum(values) / len(values)
    return report


def evaluate_greedy(policy: Policy, samples: list[Sample], template, reward_fn, max_new_tokens: int, batch_size: int = 64) -> dict:
    """Greedy accuracy (``accuracy``, ``accuracy/<group>``) and ``format_rate`` on ``samples``."""
    texts = [t[0] for t in generate_answers(policy, samples, template, max_new_tokens, batch_size)]
    scored = reward_fn(texts, samples)
    report = accuracy_report(samples, scored["accuracy"])
    report["format_rate"] = sum(scored["format"]) / max(len(texts), 1)
    return report


class PolicyGenerator:
    """``generator(samples, images, repeats=, do_sample=, seed=) -> Generations`` for a policy.

    The interface :func:`perceptrl.eval.runner.run_evaluation` needs; any object with this call
    signature (e.g. a stub that reads the images itself) can stand in for a model.
    """

    def __init__(self, policy: Policy, template, max_new_tokens: int, batch_size: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0):
        self.policy = policy
        self.template = template
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.top_p = float(top_p)

    def __call__(self, samples: Sequence[Sample], images: Sequence[Sequence[Any]], *, repeats: int = 1,
                 do_sample: bool = False, seed: int | None = None) -> Generations:
        return generate_completions(
            self.policy, samples, self.template, self.max_new_tokens, self.batch_size, do_sample=do_sample,
            temperature=self.temperature, top_p=self.top_p, repeats=repeats, images=images, seed=seed,
        )
