"""The policy update: loss terms summed over micro-batches with global denominators.

Each loss term is a function ``term(mb) -> (scalar loss, stats)`` of a micro-batch; the terms
themselves live in ``perceptrl.train.terms``. Only the rows the rollout marks for the update
(``Rollout.update_mask``) are trained on; the denominators count those rows only.

*Advantage shapers* (DUPL) turn per-sequence advantages into per-token ones from quantities of
the update's own forward pass (entropy, log-probs): on the first pass over a rollout the policy
is still the one that generated it, so this costs no extra forward. The shaped advantages are
kept in ``rollout.extra["token_advantages"]`` and reused by later PPO epochs.

A stat is either a scalar (averaged over micro-batches weighted by their share of tokens) or a
``(numerator, denominator)`` pair (summed separately, then divided), for means over a subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from perceptrl.algorithms.losses import aggregate
from perceptrl.bench.timer import timed
from perceptrl.models.policy import Policy
from perceptrl.train.distributed import Distributed
from perceptrl.train.rollout import Rollout


@dataclass
class MicroBatch:
    """One micro-batch of the update: row slice, current log-probs and what terms need."""

    rows: torch.Tensor  # [b] indices into the rollout
    logprobs: torch.Tensor  # [b, T] with gradient
    old_logprobs: torch.Tensor  # [b, T] detached (rollout policy)
    advantages: torch.Tensor  # [b] or [b, T]
    mask: torch.Tensor  # [b, T] float
    entropy: torch.Tensor | None  # [b, T] full-vocabulary entropy if requested (with gradient if entropy_grad)
    extra: dict[str, torch.Tensor]  # precomputed per-row tensors sliced to this micro-batch
    agg: Callable[[torch.Tensor], torch.Tensor]  # aggregate [b, T] with the update's global denominators
    token_mean: Callable[[torch.Tensor], torch.Tensor]  # global token_mean, whatever the aggregation mode
    policy: Policy
    rollout: Rollout
    temperature: float = 1.0
    hidden: torch.Tensor | None = None  # [b, T, H] the output head's input (detached) if keep_hidden


LossTerm = Callable[[MicroBatch], tuple[torch.Tensor, dict]]
Shaper = Callable[[MicroBatch], tuple[torch.Tensor, dict]]  # -> per-token advantages [b, T], stats


@dataclass
class UpdateSettings:
    loss_agg_mode: str
    micro_batch_size: int
    max_grad_norm: float
    max_len: int
    temperature: float = 1.0
    need_entropy: bool = True
    entropy_grad: bool = False  # a term trains on the full-vocabulary entropy (its needs_entropy_grad)
    keep_hidden: bool = False  # a piece reads MicroBatch.hidden (its needs_hidden)
    terms: list[LossTerm] = field(default_factory=list)
    shapers: list[Shaper] = field(default_factory=list)


class _Stats:
    """Accumulate term stats over micro-batches (see the module docstring)."""

    def __init__(self) -> None:
        self.num: dict[str, float] = {}
        self.den: dict[str, float] = {}

    def add(self, stats: dict, share: float) -> None:
        for key, stat in stats.items():
            if key.endswith("_count") or key.endswith("_sum"):
                continue
            if isinstance(stat, tuple):
                num, den = float(stat[0]), float(stat[1])
            else:
                num, den = float(stat) * share, share
            self.num[key] = self.num.get(key, 0.0) + num
            self.den[key] = self.den.get(key, 0.0) + den

    def result(self) -> dict[str, float]:
        return {k: self.num[k] / self.den[k] for k in self.num if self.den[k] > 0}


def run_update(policy: Policy, optimizer, rollout: Rollout, settings: UpdateSettings,
               dist: Distributed | None = None) -> dict[str, float]:
    """One optimizer step over the rollout's update rows, split into micro-batches.

    The gradient is that of the whole update batch: each micro-batch's loss is aggregated with
    the batch's global token and sequence counts, and the micro-batch losses are summed. With
    several processes (``dist``) the counts, the loss and the gradients are summed over processes
    too (``perceptrl.train.distributed``): the update batch is the union of theirs.
    """
    dist = dist or Distributed()
    comp = rollout.completions
    mask = comp.mask.float()
    update_rows = rollout.update_indices()
    update_mask = mask[update_rows]
    global_tokens = dist.all_reduce_sum(float(update_mask.sum()))
    global_seqs = dist.all_reduce_sum(float((update_mask.sum(-1) > 0).sum()))
    metrics: dict[str, float] = {"update/rows": float(len(update_rows))}
    if global_tokens == 0:  # nothing to train on (e.g. every group filtered out)
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()  # a no-op without gradients; keeps the optimizer and its LR schedule in step
        metrics.update(loss=0.0, grad_norm=0.0)
        return metrics

    shaped = rollout.extra.get("token_advantages")
    shaping = bool(settings.shapers) and shaped is None
    if shaping:
        shaped = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    advantages = shaped if shaped is not None and not shaping else rollout.advantages
    stats = _Stats()
    entropy_sum, loss_total = 0.0, 0.0

    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    starts = list(range(0, len(update_rows), settings.micro_batch_size))
    n_micro = dist.micro_batches(len(starts))  # the same on every process; gradients sync on the last
    for k in range(n_micro):
        dist.set_grad_sync(policy.model, k == n_micro - 1)
        if k >= len(starts):  # fewer update rows here than on another process
            _idle_micro_batch(policy, rollout, dist)
            continue
        start = starts[k]
        rows = update_rows[start : start + settings.micro_batch_size]
        mb_mask = mask[rows]
        with timed("update/forward"):
            scored = policy.score(
                rollout.prompts, rollout.update_rows[rows], comp.ids[rows], comp.mask[rows],
                temperature=settings.temperature, with_entropy=settings.need_entropy,
                entropy_grad=settings.entropy_grad, keep_hidden=settings.keep_hidden,
            )
        logprobs = scored["logprobs"]
        old = rollout.extra["old_logprobs"][rows] if "old_logprobs" in rollout.extra else logprobs.detach()

        def agg(values, _m=mb_mask):
            return aggregate(values, _m, settings.loss_agg_mode, global_tokens, global_seqs, settings.max_len)

        def token_mean(values, _m=mb_mask):
            return aggregate(values, _m, "token_mean", global_tokens, global_seqs, settings.max_len)

        mb = MicroBatch(
            rows=rows, logprobs=logprobs, old_logprobs=old, advantages=advantages[rows], mask=mb_mask,
            entropy=scored.get("entropy"), extra={k: v[rows] for k, v in rollout.extra.items()},
            agg=agg, token_mean=token_mean, policy=policy, rollout=rollout,
            temperature=settings.temperature, hidden=scored.get("hidden"),
        )
        share = float(mb_mask.sum()) / global_tokens
        if shaping:
            for shaper in settings.shapers:
                mb.advantages, shaper_stats = shaper(mb)
                stats.add(shaper_stats, share)
            shaped[rows] = mb.advantages.detach().float()
        loss = torch.zeros((), device=logprobs.device)
        for term in settings.terms:
            value, term_stats = term(mb)
            loss = loss + value
            stats.add(term_stats, share)
        if loss.requires_grad:  # e.g. only terms on precomputed tensors: nothing to differentiate
            with timed("update/backward"):
                dist.backward(loss)
        loss_total += float(loss.detach())
        if mb.entropy is not None:
            entropy_sum += float((mb.entropy.detach() * mb_mask).sum())
        del mb, scored, logprobs

    if shaping:
        rollout.extra["token_advantages"] = shaped
    loss_total, entropy_sum = dist.all_reduce_sum(loss_total), dist.all_reduce_sum(entropy_sum)
    with timed("update/optimizer"):
        grad_norm = dist.clip_grad_norm_(policy.model, settings.max_grad_norm)
        metrics.update(loss=loss_total, grad_norm=float(grad_norm))
        if torch.isfinite(grad_norm) and math.isfinite(loss_total):  # a NaN loss with finite gradients too
            optimizer.step()
        else:
            metrics["skipped_nonfinite_grad"] = 1.0
        optimizer.zero_grad(set_to_none=True)
    metrics.update(stats.result())
    if settings.need_entropy:
        metrics["entropy"] = entropy_sum / global_tokens
    return metrics


def _idle_micro_batch(policy: Policy, rollout: Rollout, dist: Distributed) -> None:
    """A zero-weight forward and backward on one row: keeps this process in step with the others."""
    comp = rollout.completions
    scored = policy.score(rollout.prompts, rollout.update_rows[:1], comp.ids[:1], comp.mask[:1])
    dist.backward(scored["logprobs"].sum() * 0.0)


@torch.no_grad()
def score_no_grad(policy: Policy, rollout: Rollout, instance_rows: torch.Tensor, micro_batch_size: int,
                  temperature: float = 1.0, with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs (and entropy) ``[R, T]`` of the completions under other instances, no gradient.

    Only rows in the update are scored (the others are never read); their entries are 0.
    """
    comp = rollout.completions
    rows_all = rollout.update_indices()
    out: dict[str, torch.Tensor] = {}
    was_training = policy.model.training
    policy.model.eval()
    for start in range(0, len(rows_all), micro_batch_size):
        rows = rows_all[start : start + micro_batch_size]
        scored = policy.score(rollout.prompts, instance_rows[rows], comp.ids[rows], comp.mask[rows],
                              temperature=temperature, with_entropy=with_entropy)
        for key, value in scored.items():
            if key not in out:
                out[key] = torch.zeros(comp.ids.shape, dtype=value.dtype, device=value.device)
            out[key][rows] = value
    policy.model.train(was_training)
    if not out:  # no update rows: keep the shapes callers expect
        out["logprobs"] = torch.zeros(comp.ids.shape, device=comp.ids.device)
    return out
