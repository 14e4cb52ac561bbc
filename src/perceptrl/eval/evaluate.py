"""Held-out accuracy of a policy: greedy decoding, scored by the project verifier."""

from __future__ import annotations

from collections import defaultdict

import torch

from perceptrl.data.types import Sample
from perceptrl.models.policy import Policy


@torch.no_grad()
def generate_answers(
    policy: Policy, samples: list[Sample], template, max_new_tokens: int, batch_size: int = 64,
    do_sample: bool = False, temperature: float = 1.0, repeats: int = 1, view=None,
) -> list[list[str]]:
    """Completions per sample (``repeats`` each). ``view(image, index)`` perturbs images if given."""
    was_training = policy.model.training
    policy.model.eval()
    texts: list[list[str]] = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = [[view(img, start + i) if view else img for img in s.images] for i, s in enumerate(chunk)]
            encoded = policy.encode([template.instruction(s.problem) for s in chunk], images)
            rows = torch.arange(len(chunk)).repeat_interleave(repeats)
            out = policy.generate(encoded, rows, max_new_tokens, temperature=temperature, do_sample=do_sample)
            decoded = policy.decode(out.ids, out.mask)
            texts.extend(decoded[i * repeats : (i + 1) * repeats] for i in range(len(chunk)))
    finally:
        policy.model.train(was_training)
    return texts


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
    texts = [t[0] for t in generate_answers(policy, samples, template, max_new_tokens, batch_size)]
    scored = reward_fn(texts, samples)
    report = accuracy_report(samples, scored["accuracy"])
    report["format_rate"] = sum(scored["format"]) / max(len(texts), 1)
    return report
