"""The policy update: loss terms summed over micro-batches with global denominators.

Each loss term is a function ``term(ctx) -> (scalar loss, stats)`` of a micro-batch context.
The surrogate and the reference KL are always available; recipes add terms (PAPO's
perception KL, entropy losses) by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from perceptrl.algorithms.losses import aggregate, clipped_surrogate, kl_penalty
from perceptrl.models.policy import Policy
from perceptrl.train.rollout import Rollout


@dataclass
class MicroBatch:
    """One micro-batch of the update: row slice, current log-probs and what terms need."""

    rows: torch.Tensor  # [b] indices into the rollout
    logprobs: torch.Tensor  # [b, T] with gradient
    old_logprobs: torch.Tensor  # [b, T] detached
    advantages: torch.Tensor  # [b] or [b, T]
    mask: torch.Tensor  # [b, T] float
    entropy: torch.Tensor | None  # [b, T] full-vocabulary entropy (no gradient) if requested
    extra: dict[str, torch.Tensor]  # precomputed per-row tensors sliced to this micro-batch
    agg: Callable[[torch.Tensor], torch.Tensor]  # aggregate [b, T] with the update's global denominators
    policy: Policy
    rollout: Rollout


LossTerm = Callable[[MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def surrogate_term(eps_low: float, eps_high: float, dual_clip_c: float | None) -> LossTerm:
    def term(mb: MicroBatch):
        per_token, stats = clipped_surrogate(
            mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask, eps_low, eps_high, dual_clip_c
        )
        return mb.agg(per_token), stats

    return term


def reference_kl_term(beta: float, kind: str) -> LossTerm:
    def term(mb: MicroBatch):
        kl = kl_penalty(mb.logprobs, mb.extra["ref_logprobs"], kind)
        value = mb.agg(kl)
        return beta * value, {"kl_ref": value.detach()}

    return term


def entropy_bonus_term(coef: float) -> LossTerm:
    """Subtract ``coef`` times the sampled-token entropy estimate ``-lp`` (keeps exploring)."""

    def term(mb: MicroBatch):
        value = mb.agg(-mb.logprobs)
        return -coef * value, {}

    return term


@dataclass
class UpdateSettings:
    loss_agg_mode: str
    micro_batch_size: int
    max_grad_norm: float
    max_len: int
    temperature: float = 1.0
    need_entropy: bool = True
    terms: list[LossTerm] = field(default_factory=list)


def run_update(policy: Policy, optimizer, rollout: Rollout, settings: UpdateSettings) -> dict[str, float]:
    """One optimizer step over the whole rollout, split into micro-batches.

    The gradient is that of the whole update batch: each micro-batch's loss is aggregated with
    the batch's global token and sequence counts, and the micro-batch losses are summed.
    """
    comp = rollout.completions
    mask = comp.mask.float()
    n_rows = mask.shape[0]
    global_tokens = float(mask.sum())
    global_seqs = float((mask.sum(-1) > 0).sum())
    advantages = rollout.advantages
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    entropy_sum, loss_total = 0.0, 0.0

    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, n_rows, settings.micro_batch_size):
        rows = torch.arange(start, min(start + settings.micro_batch_size, n_rows))
        mb_mask = mask[rows]
        scored = policy.score(
            rollout.prompts, rollout.update_rows[rows], comp.ids[rows], comp.mask[rows],
            temperature=settings.temperature, with_entropy=settings.need_entropy,
        )
        logprobs = scored["logprobs"]
        old = rollout.extra["old_logprobs"][rows] if "old_logprobs" in rollout.extra else logprobs.detach()

        def agg(values, _m=mb_mask):
            return aggregate(values, _m, settings.loss_agg_mode, global_tokens, global_seqs, settings.max_len)

        mb = MicroBatch(
            rows=rows, logprobs=logprobs, old_logprobs=old, advantages=advantages[rows], mask=mb_mask,
            entropy=scored.get("entropy"), extra={k: v[rows] for k, v in rollout.extra.items()},
            agg=agg, policy=policy, rollout=rollout,
        )
        loss = torch.zeros((), device=logprobs.device)
        share = float(mb_mask.sum()) / max(global_tokens, 1.0)
        for term in settings.terms:
            value, stats = term(mb)
            loss = loss + value
            for key, stat in stats.items():
                if key.endswith("_count") or key.endswith("_sum"):
                    continue
                sums[key] = sums.get(key, 0.0) + float(stat) * share
                weights[key] = weights.get(key, 0.0) + share
        loss.backward()
        loss_total += float(loss.detach())
        if mb.entropy is not None:
            entropy_sum += float((mb.entropy * mb_mask).sum())

    grad_norm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), settings.max_grad_norm)
    metrics = {"loss": loss_total, "grad_norm": float(grad_norm)}
    if torch.isfinite(grad_norm):
        optimizer.step()
    else:
        metrics["skipped_nonfinite_grad"] = 1.0
    optimizer.zero_grad(set_to_none=True)
    metrics.update({k: sums[k] / max(weights[k], 1e-12) for k in sums})
    if settings.need_entropy:
        metrics["entropy"] = entropy_sum / max(global_tokens, 1.0)
    return metrics


@torch.no_grad()
def score_no_grad(policy: Policy, rollout: Rollout, instance_rows: torch.Tensor, micro_batch_size: int,
                  temperature: float = 1.0, with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs (and entropy) of the rollout's completions under other prompts, without gradient."""
    comp = rollout.completions
    parts: dict[str, list[torch.Tensor]] = {}
    was_training = policy.model.training
    policy.model.eval()
    for start in range(0, len(rollout), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        out = policy.score(rollout.prompts, instance_rows[rows], comp.ids[rows], comp.mask[rows],
                           temperature=temperature, with_entropy=with_entropy)
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
    policy.model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}
