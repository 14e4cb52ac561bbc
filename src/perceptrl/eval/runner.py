"""The evaluation behind ``perceptrl eval``: greedy accuracy, avg@k / pass@k, a perception probe and
POPE metrics, per family and for vision-dependent versus text-only families.

Everything here works on a list of :class:`~perceptrl.data.types.Sample` and a *generator*, a
callable ``generate(samples, images, *, repeats, do_sample, seed) -> Generations``
(:class:`perceptrl.train.heldout.PolicyGenerator` for a model; a stub in the tests), so the
logic is testable without a model.

Passes (each one batched call per chunk of prompts):

1. **greedy**: one greedy completion per sample on the clean image -> ``accuracy``;
2. **sampled** (``k >= 1``): ``k`` completions per sample at the generator's temperature ->
   ``avg@k`` (mean per-sample accuracy) and unbiased ``pass@j`` for ``j`` in ``pass_ks``;
3. **probe** (optional): greedy again with PAPO's masked image (``mask_patches``, ``p = 0.6``,
   14-px patches, black, seeded per item by ``view_seed(seed, image_index, crc32(id),
   view.key)``, so an item's mask does not depend on which other items are evaluated) and with a
   blank image of the same size (``blank_fill`` grey level, default black). Reported: accuracy
   under each, the paired drop ``clean - masked`` / ``clean - blank`` with its interval over items,
   how often the extracted answer changes (``changed_*``) and how often the completion text changes
   at all (``completion_changed_*``; telling even for a model whose answers do not parse yet). A
   model that ignores the image has drop 0 and change rates 0 exactly; the text-only family is the
   control (its image is noise).
4. **POPE** (samples with ``meta["pope_mode"]`` or family ``pope`` and yes/no answers): on the
   greedy answers, per mode and overall, accuracy, precision, recall and F1 with "yes" as the
   positive class, and the yes-ratio. An answer that is neither yes nor no counts as wrong and as
   "not yes" (so it lowers recall, never precision) and is counted in ``unanswered``.

Groups: ``all``, ``vision_dependent``, ``text_only`` and ``family/<name>`` (empty groups are left
out). ``metrics`` is a flat ``{name: value}`` view of the same numbers (``accuracy``,
``accuracy/family/count``, ``avg@8``, ``pass@4/text_only``, ``probe/drop_masked``,
``pope/adversarial/f1``, ...) for comparison tables; ``records`` has one entry per sample.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

from perceptrl.data.types import Sample
from perceptrl.train.heldout import Generations
from perceptrl.eval.stats import avg_at_k, default_pass_ks, mean_ci, mean_pass_at_k, paired_difference, wilson_interval
from perceptrl.rewards.verifiers import normalize_word
from perceptrl.vision.views import View, make_view, view_seed

__all__ = ["EvalResult", "EvalSettings", "blank_images", "masked_images", "run_evaluation", "sample_groups"]

SCHEMA_VERSION = 1
Generator = Callable[..., Generations]


@dataclass
class EvalSettings:
    """What ``run_evaluation`` computes (sampling temperature and token budget live in the generator)."""

    k: int = 8  # samples per prompt for avg@k / pass@k; 0 = no sampled pass
    pass_ks: list[int] | None = None  # default: 1, 2, 4, ..., k
    seed: int = 0  # seeds sampling (per chunk) and the probe's masks (per item)
    probe: bool = True  # masked- and blank-image greedy passes
    mask_p: float = 0.6  # PAPO's patch-masking probability
    mask_patch: int = 14
    blank_fill: float = 0.0  # grey level of the blank image in [0, 1] (0 = black)
    confidence: float = 0.95
    temperature: float | None = None  # informational: recorded in the report
    top_p: float | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None

    def resolved_pass_ks(self) -> list[int]:
        if self.k < 1:
            return []
        ks = sorted(set(self.pass_ks)) if self.pass_ks else default_pass_ks(self.k)
        bad = [j for j in ks if not 1 <= j <= self.k]
        if bad:
            raise ValueError(f"pass@k needs 1 <= k <= {self.k} (samples per prompt), got {bad}")
        return ks

    def mask_view(self) -> View:
        return make_view("mask_patches", p=self.mask_p, patch=self.mask_patch, fill=0.0)


@dataclass
class EvalResult:
    """``report``: the JSON-ready summary; ``records``: one dict per sample (predictions.jsonl)."""

    report: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float | None]:
        return self.report["metrics"]


# --------------------------------------------------------------------------------------------
# Probe images
# --------------------------------------------------------------------------------------------


def item_key(sample: Sample) -> int:
    """A stable integer per item (from its id), so its probe mask is the same in every subset."""
    return zlib.crc32(sample.id.encode("utf-8"))


def masked_images(samples: Sequence[Sample], view: View, seed: int) -> list[list[Any]]:
    """Each image under ``view``, seeded by ``view_seed(seed, image_index, item_key, view.key)``."""
    return [
        [view(img, view_seed(seed, j, item_key(s), view.key)) for j, img in enumerate(s.images)] for s in samples
    ]


def blank_like(image: Any, fill: float = 0.0) -> Any:
    """A uniform image of the same size (RGB, grey level ``fill`` in [0, 1])."""
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"blank_fill must be in [0, 1], got {fill}")
    if isinstance(image, Image.Image):
        v = int(round(fill * 255))
        return Image.new("RGB", image.size, (v, v, v))
    arr = np.asarray(image)
    shape = arr.shape[:2] + (3,)
    if arr.dtype == np.uint8:
        return np.full(shape, int(round(fill * 255)), dtype=np.uint8)
    return np.full(shape, fill, dtype=np.float32)


def blank_images(samples: Sequence[Sample], fill: float = 0.0) -> list[list[Any]]:
    return [[blank_like(img, fill) for img in s.images] for s in samples]


# --------------------------------------------------------------------------------------------
# Scoring and grouping
# --------------------------------------------------------------------------------------------


def sample_groups(sample: Sample) -> list[str]:
    return ["all", "vision_dependent" if sample.vision_dependent else "text_only", f"family/{sample.family}"]


def _ordered_groups(samples: Sequence[Sample]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"all": [], "vision_dependent": [], "text_only": []}
    for i, s in enumerate(samples):
        for g in sample_groups(s):
            groups.setdefault(g, []).append(i)
    return {g: idx for g, idx in groups.items() if idx}


@dataclass
class _Scored:
    correct: np.ndarray  # [N, R] 0/1
    fmt: np.ndarray  # [N, R] 0/1
    extracted: list[list[str | None]]
    lengths: np.ndarray  # [N, R]
    truncated: np.ndarray  # [N, R]
    texts: list[list[str]]


def _score(gen: Generations, samples: Sequence[Sample], reward_fn, repeats: int) -> _Scored:
    if len(gen.texts) != len(samples) or any(len(row) != repeats for row in gen.texts):
        raise ValueError(f"generator returned {[len(r) for r in gen.texts][:5]}... completions; expected "
                         f"{repeats} for each of {len(samples)} samples")
    flat = gen.flat_texts()
    repeated = [s for s in samples for _ in range(repeats)]
    scored = reward_fn(flat, repeated)
    template = reward_fn.template
    shape = (len(samples), repeats)
    lengths = np.asarray(gen.lengths, dtype=np.float64).reshape(shape) if gen.lengths else np.full(shape, np.nan)
    truncated = np.asarray(gen.truncated, dtype=np.float64).reshape(shape) if gen.truncated else np.full(shape, np.nan)
    extracted = [[template.extract(t) for t in row] for row in gen.texts]
    return _Scored(np.asarray(scored["accuracy"]).reshape(shape), np.asarray(scored["format"]).reshape(shape),
                   extracted, lengths, truncated, [list(row) for row in gen.texts])


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(a: np.ndarray) -> float | None:
    return _finite(np.mean(a)) if a.size else None


def _greedy_stats(s: _Scored, idx: list[int], confidence: float) -> dict[str, Any]:
    correct = s.correct[idx, 0]
    hits = int(correct.sum())
    low, high = wilson_interval(hits, len(idx), confidence)
    return {
        "accuracy": hits / len(idx),
        "correct": hits,
        "ci": [low, high],
        "format_rate": float(s.fmt[idx, 0].mean()),
        "mean_length": _mean(s.lengths[idx, 0]),
        "truncated_rate": _mean(s.truncated[idx, 0]),
    }


def _sampled_stats(s: _Scored, idx: list[int], k: int, pass_ks: list[int], confidence: float) -> dict[str, Any]:
    counts = [int(c) for c in s.correct[idx].sum(axis=1)]
    per_item = np.asarray(counts, dtype=np.float64) / k
    ci = mean_ci(per_item, confidence) if len(idx) > 1 else None
    out: dict[str, Any] = {
        "k": k,
        f"avg@{k}": avg_at_k(k, counts),
        f"avg@{k}_ci": [_finite(ci.low), _finite(ci.high)] if ci else None,
        "correct_samples": int(sum(counts)),
        "total_samples": k * len(idx),
    }
    for j in pass_ks:
        out[f"pass@{j}"] = mean_pass_at_k(k, counts, j)
    out["format_rate"] = float(s.fmt[idx].mean())
    out["mean_length"] = _mean(s.lengths[idx])
    out["truncated_rate"] = _mean(s.truncated[idx])
    return out


def _changed(a: list[list[str | None]], b: list[list[str | None]], idx: list[int]) -> float:
    def norm(x: str | None) -> str | None:
        return None if x is None else normalize_word(x)

    return float(np.mean([norm(a[i][0]) != norm(b[i][0]) for i in idx]))


def _probe_stats(clean: _Scored, probes: dict[str, _Scored], idx: list[int], confidence: float) -> dict[str, Any]:
    c = clean.correct[idx, 0]
    out: dict[str, Any] = {"clean": float(c.mean())}
    for name, s in probes.items():
        p = s.correct[idx, 0]
        out[name] = float(p.mean())
    for name, s in probes.items():
        p = s.correct[idx, 0]
        d = paired_difference(c, p, confidence)
        out[f"drop_{name}"] = float(c.mean() - p.mean())
        out[f"drop_{name}_ci"] = [_finite(d.low), _finite(d.high)] if len(idx) > 1 else None
        out[f"changed_{name}"] = _changed(clean.extracted, s.extracted, idx)
        out[f"completion_changed_{name}"] = float(np.mean([clean.texts[i][0] != s.texts[i][0] for i in idx]))
        out[f"format_rate_{name}"] = float(s.fmt[idx, 0].mean())
    return out


_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def _yes_no(text: str | None) -> str | None:
    return None if text is None else _YES_NO.get(normalize_word(text))


def pope_stats(golds: Sequence[str], preds: Sequence[str | None]) -> dict[str, Any]:
    """POPE metrics with "yes" as the positive class; ``preds`` are "yes", "no" or None (other)."""
    tp = fp = tn = fn = other = 0
    for gold, pred in zip(golds, preds):
        if pred is None:
            other += 1
        if gold == "yes":
            tp += pred == "yes"
            fn += pred != "yes"
        else:
            fp += pred == "yes"
            tn += pred == "no"
    n = len(golds)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n, "accuracy": (tp + tn) / n if n else None, "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": (tp + fp) / n if n else None, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "unanswered": other,
    }


def _pope_section(samples: Sequence[Sample], greedy: _Scored) -> dict[str, Any] | None:
    by_mode: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        mode = (s.meta or {}).get("pope_mode")
        if mode is None and s.family != "pope":
            continue
        if _yes_no(s.answer) is None:
            continue
        by_mode.setdefault(str(mode or "unspecified"), []).append(i)
    if not by_mode:
        return None
    order = [m for m in ("random", "popular", "adversarial") if m in by_mode] + sorted(
        m for m in by_mode if m not in ("random", "popular", "adversarial"))
    section = {}
    everything = sorted(i for idx in by_mode.values() for i in idx)
    for mode, idx in [(m, by_mode[m]) for m in order] + [("all", everything)]:
        golds = [_yes_no(samples[i].answer) for i in idx]
        preds = [_yes_no(greedy.extracted[i][0]) for i in idx]
        section[mode] = pope_stats(golds, preds)
    return section


# --------------------------------------------------------------------------------------------
# Flat metrics
# --------------------------------------------------------------------------------------------


def _suffix(group: str) -> str:
    return "" if group == "all" else f"/{group}"


def flat_metrics(report: dict[str, Any]) -> dict[str, float | None]:
    """``{name: value}`` from a report's groups and POPE section (names in the module docstring)."""
    out: dict[str, float | None] = {}
    k = report["settings"]["k"]
    for group, g in report["groups"].items():
        sfx = _suffix(group)
        out[f"accuracy{sfx}"] = g["greedy"]["accuracy"]
        out[f"format_rate{sfx}"] = g["greedy"]["format_rate"]
        if g.get("sampled"):
            s = g["sampled"]
            out[f"avg@{k}{sfx}"] = s[f"avg@{k}"]
            for key, value in s.items():
                if key.startswith("pass@"):
                    out[f"{key}{sfx}"] = value
        if g.get("probe"):
            for key, value in g["probe"].items():
                if not key.endswith("_ci") and not key.startswith("format_rate"):
                    out[f"probe/{key}{sfx}"] = value
    for mode, stats in (report.get("pope") or {}).items():
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            out[f"pope/{mode}/{key}"] = stats[key]
    return out


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


def run_evaluation(samples: Sequence[Sample], generate: Generator, reward_fn, settings: EvalSettings | None = None,
                   progress: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate ``samples`` with ``generate`` and ``reward_fn`` (a ``RewardFunction``)."""
    settings = settings or EvalSettings()
    samples = list(samples)
    if not samples:
        raise ValueError("nothing to evaluate: no samples")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique (they key the per-item records and probe masks)")
    pass_ks = settings.resolved_pass_ks()
    say = progress or (lambda message: None)
    timing: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        timing[name] = time.perf_counter() - t0
        return value

    clean_images = [list(s.images) for s in samples]
    say(f"greedy: {len(samples)} prompts")
    greedy = timed("greedy", lambda: _score(
        generate(samples, clean_images, repeats=1, do_sample=False, seed=settings.seed), samples, reward_fn, 1))
    sampled = None
    if settings.k >= 1:
        say(f"sampled: {len(samples)} prompts x {settings.k}")
        sampled = timed("sampled", lambda: _score(
            generate(samples, clean_images, repeats=settings.k, do_sample=True, seed=settings.seed),
            samples, reward_fn, settings.k))
    probes: dict[str, _Scored] = {}
    if settings.probe:
        view = settings.mask_view()
        say(f"probe: masked ({view.key}) and blank images")
        probe_images = {
            "masked": masked_images(samples, view, settings.seed),
            "blank": blank_images(samples, settings.blank_fill),
        }
        for name, images in probe_images.items():
            probes[name] = timed(f"probe_{name}", lambda images=images: _score(
                generate(samples, images, repeats=1, do_sample=False, seed=settings.seed), samples, reward_fn, 1))

    groups = {}
    for group, idx in _ordered_groups(samples).items():
        groups[group] = {
            "n": len(idx),
            "greedy": _greedy_stats(greedy, idx, settings.confidence),
            "sampled": _sampled_stats(sampled, idx, settings.k, pass_ks, settings.confidence) if sampled else None,
            "probe": _probe_stats(greedy, probes, idx, settings.confidence) if probes else None,
        }
    settings_dict = asdict(settings)
    settings_dict["pass_ks"] = pass_ks
    settings_dict["mask_view"] = settings.mask_view().to_dict() if settings.probe else None
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "n_samples": len(samples),
        "settings": settings_dict,
        "groups": groups,
        "pope": _pope_section(samples, greedy),
        "timing": timing,
    }
    report["metrics"] = flat_metrics(report)
    records = _records(samples, greedy, sampled, probes)
    return EvalResult(report, records)


def _records(samples, greedy: _Scored, sampled: _Scored | None, probes: dict[str, _Scored]) -> list[dict]:
    records = []
    for i, s in enumerate(samples):
        rec: dict[str, Any] = {
            "id": s.id, "family": s.family, "vision_dependent": s.vision_dependent, "answer": s.answer,
            "answer_type": s.answer_type,
            "greedy": {"completion": greedy.texts[i][0], "extracted": greedy.extracted[i][0], "correct": bool(greedy.correct[i, 0]),
                       "format": bool(greedy.fmt[i, 0])},
        }
        if (s.meta or {}).get("pope_mode") is not None:
            rec["pope_mode"] = s.meta["pope_mode"]
        if sampled is not None:
            rec["sampled"] = {"correct": int(sampled.correct[i].sum()), "n": int(sampled.correct.shape[1]),
                              "extracted": sampled.extracted[i]}
        for name, p in probes.items():
            rec[name] = {"extracted": p.extracted[i][0], "correct": bool(p.correct[i, 0])}
        records.append(rec)
    return records
