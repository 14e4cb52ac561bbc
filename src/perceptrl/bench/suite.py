"""The benchmark suite: which cases run, in which order, and what is reported.

Three sections, each a list of ``Case`` objects run through the real training loop:

- ``recipes``: every recipe (the YAMLs in ``recipes/`` whose ``recipe`` is not ``sft``, plus a few
  variants named in ``VIRTUAL_RECIPES``) at one batch shape, on each model size. Reported: seconds per
  step split into data and processor, generation, reward, scoring forwards (reference, old policy,
  extra views), update forward, backward and optimizer; generated tokens per second; peak memory;
  and the ratio of each recipe's step time to GRPO's.
- ``scaling``: GRPO with one of group size (4..32), completion length (16..128) or image size
  (56..224 px) varied around a base shape, on each model size; with the growth of step time
  against the growth of the axis ("no worse than linear" when the first is at most the second).
- ``speedups``: GRPO with each speed change of ``perceptrl.models.policy`` turned off, with two
  torch threads, and at top-p 0.99 with either nucleus filter; each reported as its step time over
  the default's.

Every repeat runs all cases once, in a rotated order (so that no case always runs first or after
the same neighbour), and ratios are taken between cases of the same repeat, then summarised by
their median and spread (min, max) over repeats. Both wall-clock and CPU seconds are reported:
on a shared machine CPU seconds are much less disturbed by other work.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from perceptrl.bench.runner import Case, run_case, run_case_subprocess
from perceptrl.config import recipes_dir

# Recipe variants without a YAML of their own: (base recipe, overrides).
VIRTUAL_RECIPES: dict[str, tuple[str, list[str]]] = {
    "dupl_released": ("dupl", ["dupl.variant=released"]),  # released-code DUPL (ruiiu/DUPL)
    # ... with the noisy branch drawn at every step: the re-scoring under T(x) always runs (worst case)
    "dupl_released_noisy": ("dupl", ["dupl.variant=released", "dupl.branch_schedule=constant", "dupl.branch_prob=1.0"]),
    "papo_g_nokl": ("papo_g", ["algorithm.kl_beta=0.0"]),  # PAPO's masked branch alone, no reference model
    # GRPO sampling as the PAPO recipes do (top-p 0.99; grpo.yaml has 1.0): papo_g_nokl over this one is
    # the masked branch alone, with the sampling cost of the two recipes equal
    "grpo_top_p099": ("grpo", ["rollout.top_p=0.99"]),
    # VPPO's paper form: full-vocabulary KL between the two views (the released form is the sampled-token k3)
    "vppo_kl_full": ("vppo", ["token_signal.metric=kl_full"]),
    # PGPO as in the authors' development code (quantile threshold, 0.1 floor, no mass normalisation)
    "pgpo_devcode": ("pgpo", ["token_scale.pgpo_threshold_mode=quantile", "token_scale.pgpo_low_floor=0.1",
                              "token_scale.pgpo_mass_normalize=false"]),
}

# Recipes also compared with a GRPO that samples as they do (``ratio_to_same_sampling`` in the report).
SAME_SAMPLING_BASE: dict[str, str] = {"papo_g_nokl": "grpo_top_p099", "papo_g": "grpo_top_p099", "papo_d": "grpo_top_p099"}

# Phases of a step, in plotting order: (label, timer sections summed).
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("data+processor", ("data", "processor")),
    ("generation", ("generate",)),
    ("reward", ("reward",)),
    ("scoring: reference", ("scoring/reference",)),
    ("scoring: old", ("scoring/old",)),
    ("scoring: extra views", ("scoring/extra_views",)),
    ("update: forward", ("update/forward",)),
    ("update: backward", ("update/backward",)),
    ("update: optimizer", ("update/optimizer",)),
]

# Speed changes undone one at a time (policy attributes / case fields), against the default.
SPEEDUP_VARIANTS: dict[str, dict] = {
    "default": {},
    "no_fast_generation": {"fast_generation": False},  # model.generate on every row
    "no_prefix_sharing": {"share_prompt_prefix": False},  # one full forward per row when scoring
    "neither": {"fast_generation": False, "share_prompt_prefix": False},  # the policy before issue 6
    "threads_2": {"threads": 2},  # two torch threads instead of one
    # top-p 0.99 (the PAPO recipes' sampling): its cost with the threshold filter, and with the sorted one
    "top_p_0.99": {"overrides": ["rollout.top_p=0.99"]},
    "top_p_0.99_sorted_filter": {"overrides": ["rollout.top_p=0.99"], "fast_top_p": False},
}

SCALING_AXES = {
    "group_size": ("completions", [4, 8, 16, 32]),
    "completion_length": ("tokens", [16, 32, 64, 128]),
    "image_size": ("image_size", [56, 112, 168, 224]),
}


def recipe_sources(directory: Path | None = None) -> dict[str, tuple[Path, list[str]]]:
    """Every benchmarkable recipe: name -> (YAML path, extra overrides)."""
    import yaml

    directory = directory or recipes_dir()
    found: dict[str, tuple[Path, list[str]]] = {}
    for path in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if raw.get("recipe", path.stem) == "sft":
            continue
        found[path.stem] = (path, [])
    for name, (base, overrides) in VIRTUAL_RECIPES.items():
        if base in found:
            found[name] = (found[base][0], list(overrides))
    # GRPO first: it is every ratio's denominator.
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "grpo", kv[0])))


def recipe_case(name: str, sources: dict, size: str, base: Case, section: str) -> Case:
    path, overrides = sources[name]
    return replace(base, name=f"{section}/{size}/{name}", recipe=name, recipe_path=str(path),
                   recipe_overrides=list(overrides), size=size, tags={"section": section, "size": size, "recipe": name})


def build_cases(
    sections: list[str], recipes: list[str] | None, sizes: list[str], base: Case,
    scaling_base: Case | None = None, scaling_sizes: list[str] | None = None,
    scaling_axes: dict | None = None, recipe_sizes: dict[str, list[str]] | None = None,
    speedup_variants: list[str] | None = None,
) -> list[Case]:
    """All cases of the chosen sections (see module doc)."""
    sources = recipe_sources()
    wanted = list(sources) if recipes is None else recipes
    unknown = [r for r in wanted if r not in sources]
    if unknown:
        raise ValueError(f"unknown recipe(s) {', '.join(unknown)}; available: {', '.join(sources)}")
    if "grpo" not in wanted and "grpo" in sources:
        wanted = ["grpo"] + wanted  # the denominator of every ratio
    cases: list[Case] = []
    if "recipes" in sections:
        for size in sizes:
            names = wanted if recipe_sizes is None or size not in recipe_sizes else [
                r for r in wanted if r in recipe_sizes[size] or r == "grpo"]
            cases += [recipe_case(name, sources, size, base, "recipes") for name in names]
    if "scaling" in sections:
        sbase = scaling_base or base
        axes = scaling_axes or SCALING_AXES
        for size in scaling_sizes or sizes:
            seen = set()
            for axis, (field_name, values) in axes.items():
                for value in values:
                    shape = replace(sbase, **{field_name: value})
                    key = (shape.prompts, shape.completions, shape.tokens, shape.image_size)
                    case = recipe_case("grpo", sources, size, shape, "scaling")
                    case.name = f"scaling/{size}/P{key[0]}xG{key[1]}xT{key[2]}xI{key[3]}"
                    case.tags = {"section": "scaling", "size": size, "axes": [axis], "value": value,
                                 "shape": list(key)}
                    if key in seen:  # the base shape sits on every axis: run it once
                        next(c for c in cases if c.name == case.name).tags["axes"].append(axis)
                        continue
                    seen.add(key)
                    cases.append(case)
    if "speedups" in sections:
        variants = {label: SPEEDUP_VARIANTS[label] for label in (speedup_variants or SPEEDUP_VARIANTS)}
        variants = {"default": {}, **variants}  # the denominator of every ratio
        for size in sizes:
            for label, changes in variants.items():
                case = recipe_case("grpo", sources, size, replace(base, **changes), "speedups")
                case.name = f"speedups/{size}/{label}"
                case.tags["variant"] = label
                cases.append(case)
    return cases


# ------------------------------------------------------------------------------------ running
def run_cases(cases: list[Case], repeats: int, isolate: bool = False,
              log: Callable[[str], None] = print, raw_path: Path | None = None) -> dict[str, list[dict]]:
    """Run every case ``repeats`` times, interleaved: repeat r runs all cases, order rotated by r.

    Each run's raw result is appended to ``raw_path`` (JSON lines) as soon as it is done, so that
    an interrupted benchmark can still be summarised (``load_raw``).
    """
    results: dict[str, list[dict]] = {c.name: [] for c in cases}
    for rep in range(repeats):
        shift = (rep * max(1, len(cases) // max(repeats, 1))) % max(len(cases), 1)
        order = cases[shift:] + cases[:shift]
        if rep % 2 == 1:
            order = order[::-1]
        for case in order:
            t0 = time.perf_counter()
            out = run_case_subprocess(case) if isolate else run_case(case)
            out["repeat"] = rep
            results[case.name].append(out)
            if raw_path is not None:
                with open(raw_path, "a") as f:
                    f.write(json.dumps(out, default=float) + "\n")
            cpu = statistics.median(s["cpu_time/step"] for s in out["steps"]) if out["steps"] else float("nan")
            wall = statistics.median(s["time/step"] for s in out["steps"]) if out["steps"] else float("nan")
            log(f"[repeat {rep + 1}/{repeats}] {case.name:48s} {wall:7.3f} s/step wall, {cpu:7.3f} s/step CPU "
                f"({time.perf_counter() - t0:5.1f} s, load {os.getloadavg()[0]:.1f})")
    return results


def load_raw(paths: list[Path]) -> tuple[list[Case], dict[str, list[dict]]]:
    """Cases and results from raw JSON-lines files written by ``run_cases`` (several runs may be merged)."""
    cases: dict[str, Case] = {}
    results: dict[str, list[dict]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            out = json.loads(line)
            case = Case(**out["case"])
            cases.setdefault(case.name, case)
            results.setdefault(case.name, []).append(out)
    return list(cases.values()), results


# -------------------------------------------------------------------------------- summarising
def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v == v]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _run_median(run: dict, key: str) -> float:
    return _median([s.get(key, 0.0) for s in run["steps"]])


def summarise_case(case: Case, runs: list[dict]) -> dict:
    steps = [s for run in runs for s in run["steps"]]
    phases = {}
    for clock in ("time", "cpu_time"):
        split = {}
        for label, keys in PHASES:
            split[label] = _median([sum(s.get(f"{clock}/{k}", 0.0) for k in keys) for s in steps])
        step = _median([s.get(f"{clock}/step", float("nan")) for s in steps])
        split["other"] = max(step - sum(split.values()), 0.0)
        phases["wall" if clock == "time" else "cpu"] = split
    gen = [s["generated_tokens"] / s["time/generate"] for s in steps if s.get("time/generate")]
    gen_cpu = [s["generated_tokens"] / s["cpu_time/generate"] for s in steps if s.get("cpu_time/generate")]
    return {
        "case": asdict(case),
        "parameters": runs[0]["parameters"] if runs else None,
        "seconds_per_step": _spread([_run_median(r, "time/step") for r in runs]),
        "cpu_seconds_per_step": _spread([_run_median(r, "cpu_time/step") for r in runs]),
        "split_seconds": phases,
        "generated_tokens_per_step": _median([s["generated_tokens"] for s in steps]),
        "generated_tokens_per_second": _median(gen),
        "generated_tokens_per_cpu_second": _median(gen_cpu),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in runs), default=float("nan")),
        "peak_rss_is_per_case": all(r.get("peak_rss_is_per_case", False) for r in runs),
        "load_average": [r["load_average"][0] for r in runs],
        "steps_measured": len(steps),
    }


def paired_ratio(runs: list[dict], base_runs: list[dict], key: str) -> dict[str, float]:
    """Median and spread over repeats of (case / base), both measured in the same repeat."""
    base = {r["repeat"]: _run_median(r, key) for r in base_runs}
    return _spread([_run_median(r, key) / base[r["repeat"]] for r in runs if r["repeat"] in base])


def summarise(cases: list[Case], results: dict[str, list[dict]], meta: dict) -> dict:
    by_name = {c.name: c for c in cases}
    report: dict = {"meta": meta, "cases": {}, "recipes": {}, "scaling": {}, "speedups": {}}
    results = {name: runs for name, runs in results.items() if runs}
    cases = [c for c in cases if c.name in results]
    for name, runs in results.items():
        report["cases"][name] = summarise_case(by_name[name], runs)

    def ratios(name: str, base_name: str) -> dict:
        return {
            "cpu": paired_ratio(results[name], results[base_name], "cpu_time/step"),
            "wall": paired_ratio(results[name], results[base_name], "time/step"),
        }

    for case in cases:
        tags = case.tags
        size = tags.get("size")
        if tags.get("section") == "recipes":
            base_name = f"recipes/{size}/grpo"
            entry = dict(report["cases"][case.name])
            if base_name in results:
                entry["ratio_to_grpo"] = ratios(case.name, base_name)
            same = SAME_SAMPLING_BASE.get(tags["recipe"])
            if same and f"recipes/{size}/{same}" in results:
                entry["ratio_to_same_sampling"] = {"base": same, **ratios(case.name, f"recipes/{size}/{same}")}
            report["recipes"].setdefault(size, {})[tags["recipe"]] = entry
        elif tags.get("section") == "speedups":
            base_name = f"speedups/{size}/default"
            entry = dict(report["cases"][case.name])
            if base_name in results:
                entry["ratio_to_default"] = ratios(case.name, base_name)
            report["speedups"].setdefault(size, {})[tags["variant"]] = entry
    # Scaling curves: per size and axis, points sorted by the axis value.
    for case in cases:
        if case.tags.get("section") != "scaling":
            continue
        size = case.tags["size"]
        field_of = {axis: SCALING_AXES[axis][0] for axis in SCALING_AXES}
        for axis in case.tags["axes"]:
            value = getattr(case, field_of[axis])
            summary = report["cases"][case.name]
            report["scaling"].setdefault(size, {}).setdefault(axis, {"points": []})["points"].append({
                "value": value, "case": case.name,
                "seconds_per_step": summary["seconds_per_step"]["median"],
                "cpu_seconds_per_step": summary["cpu_seconds_per_step"]["median"],
                "generated_tokens_per_step": summary["generated_tokens_per_step"],
            })
    for size, axes in report["scaling"].items():
        for axis, data in axes.items():
            points = sorted(data["points"], key=lambda p: p["value"])
            data["points"] = points
            data.update(growth(points))
    return report


def growth(points: list[dict]) -> dict:
    """How step time grows along an axis: end-to-end factor against the axis factor, log-log slope."""
    import math

    if len(points) < 2:
        return {}
    out = {"axis_factor": points[-1]["value"] / points[0]["value"]}
    for clock, key in (("cpu", "cpu_seconds_per_step"), ("wall", "seconds_per_step")):
        ys = [p[key] for p in points]
        xs = [p["value"] for p in points]
        lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
        mx, my = statistics.fmean(lx), statistics.fmean(ly)
        slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / max(sum((a - mx) ** 2 for a in lx), 1e-12)
        factor = ys[-1] / ys[0]
        out[clock] = {"time_factor": factor, "loglog_slope": slope,
                      "no_worse_than_linear": bool(factor <= out["axis_factor"] * 1.05 and slope <= 1.05)}
    return out


def write_report(report: dict, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "bench.json"
    path.write_text(json.dumps(report, indent=2, default=float))
    return path
