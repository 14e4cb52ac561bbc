"""Rollouts: which image views generate which completions, and the batch they produce.

A *rollout plan* says, for every prompt, which views generate how many completions
(``GenSpec``), and which view each completion is conditioned on in the update. Every
(prompt, view) pair is an *instance*; all instances of a step are run through the processor
once, in one call, and every completion row points at the instances it needs.

A rollout can be cut down to some of its rows (``Rollout.subset``) and several rollouts can be
joined into one (``merge_rollouts``): DAPO's dynamic sampling generates in rounds and keeps only
the informative groups of each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from perceptrl.timing import timed
from perceptrl.data.types import Sample
from perceptrl.models.policy import Completions, EncodedPrompts, Policy

# A view maps (image, seed) to a perturbed image of the same size, or to None to remove the image from
# the prompt (a text-only counterfactual); a view of None is the clean image.
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
class ScoringView:
    """A view the completions are only re-scored under (teacher-forced), never generated from.

    ``per_rollout``: draw the view afresh for every completion of a prompt (DUPL's released code
    draws ``T(x)`` per row) instead of once per prompt (PAPO's mask, shared by the group). The
    instances are then named ``"<name>#<slot>"``.
    """

    view: ViewFn
    per_rollout: bool = False


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
    slot: torch.Tensor | None = None  # [R] position of the row among its prompt's completions
    update_mask: torch.Tensor | None = None  # [R] bool: rows the update trains on (None = all)
    pad_token_id: int = 0

    def __len__(self) -> int:
        return self.completions.ids.shape[0]

    def rows_for_view(self, view: str) -> torch.Tensor:
        """Instance rows of ``view`` for every completion (same prompt; per-rollout views by slot)."""
        slots = self.slot.tolist() if self.slot is not None else [0] * len(self)
        out = []
        for p, k in zip(self.prompt_index.tolist(), slots):
            key = (int(p), view)
            out.append(self.instance_of[key] if key in self.instance_of else self.instance_of[(int(p), f"{view}#{k}")])
        return torch.tensor(out, dtype=torch.long)

    def update_indices(self) -> torch.Tensor:
        """Rows that make the update, in order."""
        if self.update_mask is None:
            return torch.arange(len(self))
        return self.update_mask.nonzero().flatten()

    def keep_for_update(self, keep: torch.Tensor) -> None:
        """Restrict the update to rows where ``keep`` [R] is true (and-ed with earlier choices)."""
        keep = keep.bool().cpu()
        self.update_mask = keep if self.update_mask is None else self.update_mask & keep

    def subset(self, rows: torch.Tensor | list[int]) -> "Rollout":
        """A rollout of the given rows only; prompts and instances no row needs are dropped."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        old_prompts = sorted(set(self.prompt_index[rows].tolist()))
        p_map = {old: new for new, old in enumerate(old_prompts)}
        by_instance = sorted(self.instance_of.items(), key=lambda kv: kv[1])
        kept = [(key, i) for key, i in by_instance if key[0] in p_map]
        i_map = {old: new for new, (_, old) in enumerate(kept)}
        inst_idx = [i for _, i in kept]

        def remap(t: torch.Tensor, mapping: dict[int, int]) -> torch.Tensor:
            return torch.tensor([mapping[int(x)] for x in t.tolist()], dtype=torch.long)

        comp = self.completions
        completions = Completions(
            ids=comp.ids[rows], mask=comp.mask[rows], rows=remap(comp.rows[rows], i_map),
            truncated=comp.truncated[rows], logprobs=None if comp.logprobs is None else comp.logprobs[rows],
        )
        return Rollout(
            samples=[self.samples[p] for p in old_prompts],
            prompts=_select_instances(self.prompts, inst_idx),
            instance_of={(p_map[p], v): i_map[i] for (p, v), i in kept},
            completions=completions,
            prompt_index=remap(self.prompt_index[rows], p_map),
            group_ids=_dense(self.group_ids[rows]),
            update_rows=remap(self.update_rows[rows], i_map),
            gen_view=[self.gen_view[r] for r in rows.tolist()],
            tags={k: v[rows] for k, v in self.tags.items()},
            texts=[self.texts[r] for r in rows.tolist()] if self.texts else [],
            scores={k: v[rows] for k, v in self.scores.items()},
            advantages=None if self.advantages is None else self.advantages[rows],
            extra={k: v[rows] for k, v in self.extra.items()},
            stats=dict(self.stats),
            slot=None if self.slot is None else self.slot[rows],
            update_mask=None if self.update_mask is None else self.update_mask[rows],
            pad_token_id=self.pad_token_id,
        )


def _dense(ids: torch.Tensor) -> torch.Tensor:
    """Renumber ids ``0..k-1`` in order of first appearance."""
    lookup: dict[int, int] = {}
    return torch.tensor([lookup.setdefault(int(g), len(lookup)) for g in ids.tolist()], dtype=torch.long)


def _select_instances(prompts: EncodedPrompts, idx: list[int]) -> EncodedPrompts:
    rows = torch.tensor(idx, dtype=torch.long, device=prompts.input_ids.device)
    return EncodedPrompts(
        input_ids=prompts.input_ids[rows],
        attention_mask=prompts.attention_mask[rows],
        token_tensors={k: v[rows] for k, v in prompts.token_tensors.items()},
        image_chunks={k: [v[i] for i in idx] for k, v in prompts.image_chunks.items()},
    )


def _pad_to(t: torch.Tensor, length: int, value: float, left: bool) -> torch.Tensor:
    extra = length - t.shape[1]
    if extra == 0:
        return t
    return F.pad(t, (extra, 0) if left else (0, extra), value=value)


def merge_rollouts(rollouts: list[Rollout]) -> Rollout:
    """Join rollouts of one step into one: prompts, instances, rows and groups are renumbered.

    Prompts are re-padded on the left to the longest, completions on the right; per-row
    ``[R, T]`` tensors (``extra``, per-token advantages) are padded with zeros.
    """
    if len(rollouts) == 1:
        return rollouts[0]
    pad = rollouts[0].pad_token_id
    P = max(r.prompts.prompt_length for r in rollouts)
    T = max(r.completions.ids.shape[1] for r in rollouts)
    samples, instance_of, texts, gen_view = [], {}, [], []
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "input_ids", "attention_mask", "prompt_index", "group_ids", "update_rows", "slot", "update_mask")}
    completions = []  # each rollout's, rows renumbered into the merged prompts
    token_tensors: dict[str, list[torch.Tensor]] = {}
    image_chunks: dict[str, list[torch.Tensor]] = {}
    p_off = i_off = g_off = 0
    for r in rollouts:
        enc, comp = r.prompts, r.completions
        parts["input_ids"].append(_pad_to(enc.input_ids, P, pad, left=True))
        parts["attention_mask"].append(_pad_to(enc.attention_mask, P, 0, left=True))
        for k, v in enc.token_tensors.items():
            token_tensors.setdefault(k, []).append(_pad_to(v, P, 0, left=True))
        for k, chunks in enc.image_chunks.items():
            image_chunks.setdefault(k, []).extend(chunks)
        completions.append(dataclasses.replace(comp, rows=comp.rows + i_off))
        parts["prompt_index"].append(r.prompt_index + p_off)
        parts["group_ids"].append(_dense(r.group_ids) + g_off)
        parts["update_rows"].append(r.update_rows + i_off)
        parts["slot"].append(r.slot if r.slot is not None else torch.zeros(len(r), dtype=torch.long))
        parts["update_mask"].append(r.update_mask if r.update_mask is not None else torch.ones(len(r), dtype=torch.bool))
        instance_of.update({(p + p_off, v): i + i_off for (p, v), i in r.instance_of.items()})
        samples.extend(r.samples)
        texts.extend(r.texts)
        gen_view.extend(r.gen_view)
        p_off += len(r.samples)
        i_off += len(enc)
        g_off += int(_dense(r.group_ids).max()) + 1 if len(r) else 0

    def cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        """Per-row tensors joined: ``[R]`` as they are, ``[R, T]`` padded with zeros; None if any is."""
        if any(t is None for t in tensors):
            return None
        return torch.cat([_pad_to(t, T, 0, left=False) if t.dim() == 2 else t for t in tensors])

    def cat_rows(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        keys = set(dicts[0]).intersection(*dicts[1:])
        return {k: cat([d[k] for d in dicts]) for k in keys}

    advantages = cat([r.advantages for r in rollouts])
    update_mask = torch.cat(parts["update_mask"])
    return Rollout(
        samples=samples,
        prompts=EncodedPrompts(
            torch.cat(parts["input_ids"]), torch.cat(parts["attention_mask"]),
            {k: torch.cat(v) for k, v in token_tensors.items()}, image_chunks,
        ),
        instance_of=instance_of,
        completions=Completions.concat(completions, pad),
        prompt_index=torch.cat(parts["prompt_index"]),
        group_ids=torch.cat(parts["group_ids"]),
        update_rows=torch.cat(parts["update_rows"]),
        gen_view=gen_view,
        tags=cat_rows([r.tags for r in rollouts]),
        texts=texts,
        scores=cat_rows([r.scores for r in rollouts]),
        advantages=advantages,
        extra=cat_rows([r.extra for r in rollouts]),
        stats={},
        slot=torch.cat(parts["slot"]),
        update_mask=None if bool(update_mask.all()) else update_mask,
        pad_token_id=pad,
    )


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
                viewed = [view(img, seed_of(p, f"{name}/{k}")) for k, img in enumerate(sample.images)]
                images.append([img for img in viewed if img is not None])  # None: the view removes the image
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
    scoring_views: dict[str, ViewFn | ScoringView] | None = None,
    row_seeds: bool = False,
    engine=None,
) -> Rollout:
    """Encode every needed view once, then generate all completions in one call.

    ``row_seeds``: batch-invariant sampling; completion ``k`` of prompt ``p`` draws its noise from
    ``seed_of(p, "sample#k")`` (``perceptrl.models.sampling``), so it does not depend on the other
    rows generated with it. ``engine``: the rollout engine (``perceptrl.models.engines``; None =
    ``policy.generate``).
    """
    views: dict[str, ViewFn | None] = {"clean": None}
    for spec in specs:
        views.setdefault(spec.name, spec.view)
    per_prompt = sum(spec.count for spec in specs)
    for name, scoring in (scoring_views or {}).items():
        scoring = scoring if isinstance(scoring, ScoringView) else ScoringView(scoring)
        if scoring.per_rollout:
            for k in range(per_prompt):
                views.setdefault(f"{name}#{k}", scoring.view)
        else:
            views.setdefault(name, scoring.view)
    with timed("data"):
        prompt_of, view_of, images = build_instances(samples, views, seed_of)
        texts = [template.instruction(samples[p].problem) for p in prompt_of]
    with timed("processor"):
        encoded = policy.encode(texts, images)
    instance_of = {(p, v): i for i, (p, v) in enumerate(zip(prompt_of, view_of))}

    gen_rows, prompt_index, group_names, update_rows, gen_view, slots = [], [], [], [], [], []
    tag_values: dict[str, list[float]] = {k: [] for spec in specs for k in spec.tags}
    for p in range(len(samples)):
        slot = 0
        for spec in specs:
            for _ in range(spec.count):
                gen_rows.append(instance_of[(p, spec.name)])
                prompt_index.append(p)
                group_names.append((p, spec.group))
                update_view = spec.name if spec.update_view == "self" else spec.update_view
                update_rows.append(instance_of[(p, update_view)])
                gen_view.append(spec.name)
                slots.append(slot)
                slot += 1
                for key in tag_values:
                    tag_values[key].append(float(spec.tags.get(key, 0.0)))
    group_lookup: dict[tuple[int, str], int] = {}
    group_ids = [group_lookup.setdefault(g, len(group_lookup)) for g in group_names]

    seeds = None
    if row_seeds:
        seeds = torch.tensor([seed_of(p, f"sample#{k}") for p, k in zip(prompt_index, slots)], dtype=torch.int64)
    with timed("generate"):
        if engine is None:
            extra = {} if seeds is None else {"row_seeds": seeds}
            completions = policy.generate(encoded, gen_rows, max_new_tokens, temperature=temperature, top_p=top_p,
                                          **extra)
        else:
            completions = engine.generate(encoded, gen_rows, max_new_tokens, temperature, top_p, seeds,
                                          texts=texts, images=images)
    with timed("reward"):  # detokenising is part of computing the reward
        texts = policy.decode(completions.ids, completions.mask)
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
        texts=texts,
        slot=torch.tensor(slots),
        pad_token_id=int(policy.pad_token_id),
    )


def score_rollout(rollout: Rollout, reward_fn) -> None:
    """Fill ``rollout.scores`` with reward, accuracy and format, one value per completion."""
    samples = [rollout.samples[int(p)] for p in rollout.prompt_index.tolist()]
    scored = reward_fn(rollout.texts, samples)
    rollout.scores = {k: torch.tensor(v, dtype=torch.float32) for k, v in scored.items()}
