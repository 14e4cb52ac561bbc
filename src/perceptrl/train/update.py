"""The policy update: PPO mini-batches, each one optimizer step, with global denominators.

A rollout step's prompts are split, in order, into mini-batches of ``train.global_batch_size``
prompts (whole prompts, so whole groups; :func:`minibatch_rows`), and :func:`update_minibatches`
takes one optimizer step per mini-batch, ``train.ppo_epochs`` times over (EasyR1 / verl; spec
section 1). :func:`run_update` is one such step: its loss terms are summed over micro-batches with
the mini-batch's global denominators.

Each loss term is a function ``term(mb) -> (scalar loss, stats)`` of a micro-batch; the terms
themselves live in ``perceptrl.train.terms``. Only the rows the rollout marks for the update
(``Rollout.update_mask``) are trained on; the denominators count those rows only.

``lp_old`` and advantage shaping. With one mini-batch and one epoch the policy that takes the
optimizer step is the one that generated the rollout: ``lp_old = lp.detach()`` costs nothing, and
*advantage shapers* (DUPL), which turn per-sequence advantages into per-token ones from quantities
of the rollout policy (entropy, log-probs), run inside that same forward pass. With more than one
optimizer step, mini-batch 2 on meets an updated policy: :func:`score_old_policy` then runs one
no-grad forward per micro-batch before the first step, giving ``lp_old`` and everything the
shapers need, under the rollout policy. The shaped advantages are kept in
``rollout.extra["token_advantages"]`` and read by every optimizer step.

A stat is either a scalar (averaged over micro-batches weighted by their share of tokens), a
``(numerator, denominator)`` pair (summed separately, then divided), for means over a subset, or,
for keys ending in ``_max``, a maximum. Stats are merged over processes, so that every process
holds the step's global values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from perceptrl.algorithms.losses import aggregate
from perceptrl.timing import timed
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
    """Accumulate term stats over micro-batches (and processes; see the module docstring)."""

    def __init__(self) -> None:
        self.num: dict[str, float] = {}
        self.den: dict[str, float] = {}
        self.max: dict[str, float] = {}

    def add(self, stats: dict, share: float) -> None:
        for key, stat in stats.items():
            if key.endswith("_count") or key.endswith("_sum"):
                continue
            if key.endswith("_max"):
                self.max[key] = max(self.max.get(key, -math.inf), float(stat))
                continue
            if isinstance(stat, tuple):
                num, den = float(stat[0]), float(stat[1])
            else:
                num, den = float(stat) * share, share
            self.num[key] = self.num.get(key, 0.0) + num
            self.den[key] = self.den.get(key, 0.0) + den

    def result(self, dist: Distributed | None = None) -> dict[str, float]:
        num, den, top = self.num, self.den, self.max
        if dist is not None and dist.enabled:  # a process may lack a key (e.g. no noisy-branch row here)
            num, den, top = {}, {}, {}
            for n, d, m in dist.gather_objects((self.num, self.den, self.max)):
                for key in n:
                    num[key] = num.get(key, 0.0) + n[key]
                    den[key] = den.get(key, 0.0) + d[key]
                for key in m:
                    top[key] = max(top.get(key, -math.inf), m[key])
        out = {k: num[k] / den[k] for k in num if den[k] > 0}
        out.update({k: v for k, v in top.items() if math.isfinite(v)})
        return out


def minibatch_rows(rollout: Rollout, prompts_per_minibatch: int, n_minibatches: int) -> list[torch.Tensor]:
    """The rollout's rows cut, in prompt order, into ``n_minibatches`` mini-batches of whole prompts.

    Mini-batch ``k`` holds the rows of prompts ``[k * m, (k + 1) * m)`` (``m = prompts_per_minibatch``,
    this process's share of ``train.global_batch_size``): all of a prompt's completions, so all its
    advantage groups, stay together. Their number is fixed by the config, not by the rollout, so
    every process takes the same optimizer steps; a mini-batch may be empty on a process that has
    fewer prompts (DAPO's dynamic sampling short of prompts): it then runs zero-weight micro-batches.
    """
    prompt = rollout.prompt_index
    return [((prompt >= k * prompts_per_minibatch) & (prompt < (k + 1) * prompts_per_minibatch)).nonzero().flatten()
            for k in range(n_minibatches)]


def _update_rows_of(rollout: Rollout, rows: torch.Tensor | None) -> torch.Tensor:
    """The rows of a mini-batch (``rows``; None = the whole rollout) that make the update, in order."""
    update_rows = rollout.update_indices()
    return update_rows if rows is None else update_rows[torch.isin(update_rows, rows)]


def run_update(policy: Policy, optimizer, rollout: Rollout, settings: UpdateSettings,
               dist: Distributed | None = None, rows: torch.Tensor | None = None) -> dict[str, float]:
    """One optimizer step over the update rows of one mini-batch (``rows``; None = the whole rollout).

    The gradient is that of the whole mini-batch: each micro-batch's loss is aggregated with the
    mini-batch's global token and sequence counts, and the micro-batch losses are summed. With
    several processes (``dist``) the counts, the loss and the gradients are summed over processes
    too (``perceptrl.train.distributed``): the mini-batch is the union of theirs.
    """
    dist = dist or Distributed()
    comp = rollout.completions
    mask = comp.mask.float()
    update_rows = _update_rows_of(rollout, rows)
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
    if shaping and rows is not None and len(update_rows) < len(rollout.update_indices()):
        raise RuntimeError("advantage shapers run in the update only when one optimizer step takes the whole "
                           "rollout; with several mini-batches call score_old_policy first")
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
        micro = update_rows[start : start + settings.micro_batch_size]
        mb_mask = mask[micro]
        with timed("update/forward"):
            scored = policy.score(
                rollout.prompts, rollout.update_rows[micro], comp.ids[micro], comp.mask[micro],
                temperature=settings.temperature, with_entropy=settings.need_entropy,
                entropy_grad=settings.entropy_grad, keep_hidden=settings.keep_hidden,
            )
        logprobs = scored["logprobs"]
        old = rollout.extra["old_logprobs"][micro] if "old_logprobs" in rollout.extra else logprobs.detach()

        def agg(values, _m=mb_mask):
            return aggregate(values, _m, settings.loss_agg_mode, global_tokens, global_seqs, settings.max_len)

        def token_mean(values, _m=mb_mask):
            return aggregate(values, _m, "token_mean", global_tokens, global_seqs, settings.max_len)

        device = logprobs.device  # rewards and advantages are made on the CPU; the model may be on a GPU
        mb = MicroBatch(
            rows=micro, logprobs=logprobs, old_logprobs=old.to(device), advantages=advantages[micro].to(device),
            mask=mb_mask.to(device), entropy=scored.get("entropy"),
            extra={k: v[micro].to(device) for k, v in rollout.extra.items()},
            agg=agg, token_mean=token_mean, policy=policy, rollout=rollout,
            temperature=settings.temperature, hidden=scored.get("hidden"),
        )
        share = float(mb_mask.sum()) / global_tokens
        if shaping:
            for shaper in settings.shapers:
                mb.advantages, shaper_stats = shaper(mb)
                stats.add(shaper_stats, share)
            shaped[micro] = mb.advantages.detach().float()
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
    metrics.update(stats.result(dist))
    if settings.need_entropy:
        metrics["entropy"] = entropy_sum / global_tokens
    return metrics


@torch.no_grad()
def score_old_policy(policy: Policy, rollout: Rollout, settings: UpdateSettings, minibatches: list[torch.Tensor],
                     dist: Distributed | None = None) -> dict[str, float]:
    """``lp_old`` (and shaped advantages) under the rollout policy, before the first optimizer step.

    Run when more than one optimizer step follows. Each mini-batch is cut into the same
    micro-batches as in :func:`run_update`, so the first step's ``lp`` equals ``lp_old`` exactly
    (ratio 1). Fills ``rollout.extra["old_logprobs"]`` and, when the recipe has advantage shapers,
    ``rollout.extra["token_advantages"]`` from this forward pass (DUPL's shaper, unchanged: it reads
    ``mb.entropy``, ``mb.hidden`` and ``mb.old_logprobs`` of the rollout policy). Returns the
    shapers' stats, merged over processes.
    """
    comp = rollout.completions
    mask = comp.mask.float()
    shaping = bool(settings.shapers) and "token_advantages" not in rollout.extra
    keep_hidden = shaping and any(getattr(s, "needs_hidden", False) for s in settings.shapers)
    need_entropy = shaping and settings.need_entropy
    old = torch.zeros(comp.ids.shape, dtype=torch.float32, device=comp.ids.device)
    shaped = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device) if shaping else None
    total_tokens = float(mask[rollout.update_indices()].sum())
    stats = _Stats()
    was_training = policy.model.training
    policy.model.eval()
    for mb_rows in minibatches:
        update_rows = _update_rows_of(rollout, mb_rows)
        for start in range(0, len(update_rows), settings.micro_batch_size):
            rows = update_rows[start : start + settings.micro_batch_size]
            scored = policy.score(
                rollout.prompts, rollout.update_rows[rows], comp.ids[rows], comp.mask[rows],
                temperature=settings.temperature, with_entropy=need_entropy, keep_hidden=keep_hidden,
            )
            lp = scored["logprobs"]
            if old.dtype != lp.dtype or old.device != lp.device:
                old = old.to(device=lp.device, dtype=lp.dtype)
            old[rows] = lp
            if not shaping:
                continue
            device = lp.device
            mb = MicroBatch(
                rows=rows, logprobs=lp, old_logprobs=lp, advantages=rollout.advantages[rows].to(device),
                mask=mask[rows].to(device), entropy=scored.get("entropy"),
                extra={k: v[rows].to(device) for k, v in rollout.extra.items()},
                agg=_no_loss, token_mean=_no_loss, policy=policy, rollout=rollout,
                temperature=settings.temperature, hidden=scored.get("hidden"),
            )
            share = float(mask[rows].sum()) / max(total_tokens, 1.0)
            for shaper in settings.shapers:
                mb.advantages, shaper_stats = shaper(mb)
                stats.add(shaper_stats, share)
            shaped[rows] = mb.advantages.detach().float()
            del mb, scored
    policy.model.train(was_training)
    rollout.extra["old_logprobs"] = old
    if shaping:
        rollout.extra["token_advantages"] = shaped
    return stats.result(dist)


def _no_loss(values: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("no loss is aggregated in the no-grad pass before the update")


def update_minibatches(policy: Policy, optimizer, scheduler, rollout: Rollout, settings: UpdateSettings,
                       dist: Distributed | None, minibatches: list[torch.Tensor], epochs: int = 1,
                       update: Callable | None = None, after_step: Callable[[int], None] | None = None,
                       ) -> list[dict[str, float]]:
    """Take one optimizer step per mini-batch, ``epochs`` times over; returns each step's metrics.

    A step whose loss or gradient is not finite is skipped (``skipped_nonfinite_grad``: parameters
    and optimizer state untouched, the LR schedule does not advance) and the next mini-batch still
    runs: its gradient comes from other data. The LR schedule (``scheduler``, may be None) advances
    once per optimizer step taken. ``update``: the step function (default :func:`run_update`);
    ``after_step(k)`` runs after step ``k`` (1-based) when more steps follow.
    """
    update = update or run_update
    total = len(minibatches) * epochs
    steps: list[dict[str, float]] = []
    for _ in range(epochs):
        for rows in minibatches:
            metrics = update(policy, optimizer, rollout, settings, dist, rows=rows)
            if not metrics.get("skipped_nonfinite_grad") and scheduler is not None:
                scheduler.step()
            steps.append(metrics)
            if after_step is not None and len(steps) < total:
                after_step(len(steps))
    return steps


#: Stats logged for the first optimizer step of a rollout step and, apart, for the later ones: from the
#: second mini-batch on the policy has moved, and clipping acts (the first has ratio 1 by construction).
FIRST_VS_LATER = ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean", "ppo_kl")


def combine_step_metrics(steps: list[dict[str, float]]) -> dict[str, float]:
    """One rollout step's update metrics from its optimizer steps' (averaged; ``*_max`` the maximum).

    With several steps, also ``<stat>/first_mb`` (the first optimizer step) and ``<stat>/later_mbs``
    (the mean of the others) for :data:`FIRST_VS_LATER`; ``update/optimizer_steps`` counts the steps
    taken and ``update/skipped_minibatches`` the skipped ones.
    """
    out: dict[str, float] = {}
    keys = list(dict.fromkeys(k for m in steps for k in m))
    for key in keys:
        values = [m[key] for m in steps if key in m]
        if key == "skipped_nonfinite_grad":
            continue
        out[key] = max(values) if key.endswith("_max") or key.endswith("/max") else sum(values) / len(values)
    skipped = sum(1 for m in steps if m.get("skipped_nonfinite_grad"))
    out["update/optimizer_steps"] = float(len(steps) - skipped)
    out["update/skipped_minibatches"] = float(skipped)
    if len(steps) > 1:
        for key in FIRST_VS_LATER:
            later = [m[key] for m in steps[1:] if key in m]
            if key in steps[0] and later:
                out[f"{key}/first_mb"] = steps[0][key]
                out[f"{key}/later_mbs"] = sum(later) / len(later)
    return out


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
