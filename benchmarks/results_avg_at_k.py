"""The headline of the comparison: held-out avg@8 at T = 1 (PAPO's metric), pass@8 and greedy accuracy of
every finished run of a ``perceptrl compare``, with 95% intervals over seeds, paired differences to the
baseline and the papers' claims judged on avg@8.

    python benchmarks/results_avg_at_k.py --runs-dir runs/results --output docs/results/avg_at_k.md

``perceptrl compare`` scores runs by greedy accuracy; this evaluates each run's ``final/`` model
again with ``perceptrl eval``'s evaluation (``perceptrl.demo.evaluate_runs``: greedy, ``--k``
samples per item at T = 1, and the masked / blank image probe) on the benchmark's held-out set, and
the shipped warm start once as the "before". Resumable: a run whose ``eval_k<k>/eval.json`` exists is
read back. ``make results`` runs it after the comparison.

The shortcut family's numbers (held-out accuracy, accuracy with the image blanked, their gap) are
reported per method, as issue 15 asks: a method that learned to look has a large gap; one that
answers from the colour word in the question keeps its answers without the image.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from perceptrl.demo import BENCHMARK, evaluate_runs
from perceptrl.eval.compare_report import check_claims, fmt_diff, verdict
from perceptrl.eval.stats import mean_ci, paired_difference

GROUPS = ("all", "vision_dependent", "text_only")


def finished_runs(runs_dir: Path) -> dict[str, dict[int, Path]]:
    """``{recipe: {seed: run folder}}`` of runs with a ``result.json`` and a ``final/`` model."""
    out: dict[str, dict[int, Path]] = {}
    for result in sorted(runs_dir.glob("*/seed*/result.json")):
        run = result.parent
        if not (run / "final" / "config.json").is_file():
            continue
        seed = int(run.name.removeprefix("seed"))
        out.setdefault(run.parent.name, {})[seed] = run
    return out


def as_accuracy_names(metrics: dict, key: str) -> dict:
    """``{"accuracy": m[key], "accuracy/<group>": m[key/<group>]}``: the names the claim checker reads."""
    out = {"accuracy": metrics.get(key)}
    for name, value in metrics.items():
        if name.startswith(key + "/"):
            out["accuracy/" + name[len(key) + 1:]] = value
    return out


def fmt_ci(values: dict[int, float]) -> str:
    vals = [v for v in values.values() if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    ci = mean_ci(vals)
    return f"{ci.mean:.3f} ± {ci.half_width:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/results")
    parser.add_argument("--output", default="docs/results/avg_at_k.md")
    parser.add_argument("--baseline", default="grpo")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n-per-family", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2, help="models evaluated at a time (processes, one thread each)")
    parser.add_argument("overrides", nargs="*", help="data settings of the comparison (default: the benchmark's)")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    overrides = [*BENCHMARK, *args.overrides]
    runs = finished_runs(runs_dir)
    if not runs:
        sys.exit(f"no finished runs with a final/ model under {runs_dir}")
    key = f"avg@{args.k}"

    # one model per task, --jobs processes at a time (one thread each): the warm start, then every run
    tasks = {("warmstart", -1): ({"warmstart": "warmstart"}, runs_dir / f"eval_k{args.k}")}
    for recipe, seeds in runs.items():
        for seed, run in seeds.items():
            tasks[recipe, seed] = ({f"eval_k{args.k}": str(run / "final")}, run)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(evaluate_runs, models, overrides, args.n_per_family, args.k, output_dir=folder): name
                   for name, (models, folder) in tasks.items()}
        got = {}
        for fut in as_completed(futures):
            (recipe, seed), result = futures[fut], fut.result()
            got[recipe, seed] = next(iter(result.values()))
            print(f"{recipe} seed {seed}: {key} {got[recipe, seed][key]:.3f}", file=sys.stderr, flush=True)
    start = got.pop(("warmstart", -1))
    metrics: dict[str, dict[int, dict]] = {}
    for recipe, seeds in runs.items():  # in the order of the runs, not of completion
        for seed in seeds:
            metrics.setdefault(recipe, {})[seed] = got[recipe, seed]

    columns = [(key, key), (f"pass@{args.k}", f"pass@{args.k}"), ("greedy", "accuracy"),
               (f"{key} vision-dep", f"{key}/vision_dependent"), (f"{key} text", f"{key}/text_only"),
               ("shortcut held-out", "accuracy/family/shortcut"), ("shortcut blanked", "probe/blank/family/shortcut"),
               ("shortcut gap", "probe/drop_blank/family/shortcut")]
    lines = [f"# Held-out {key} at T = 1, pass@{args.k} and greedy accuracy (mean ± 95% CI half-width over seeds)", "",
             f"Runs: `{runs_dir}`; {args.n_per_family} held-out items per family; the warm start is the 'before'.", "",
             "| method | seeds | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    lines.append("| (warm start) | - | " + " | ".join(
        f"{start[c[1]]:.3f}" if start.get(c[1]) is not None else "-" for c in columns) + " |")
    for recipe, seeds in metrics.items():
        lines.append(f"| {recipe} | {len(seeds)} | " + " | ".join(
            fmt_ci({s: m.get(c[1]) for s, m in seeds.items()}) for c in columns) + " |")
    if args.baseline in metrics:
        base = metrics[args.baseline]
        lines += ["", f"## Paired difference to {args.baseline} over matched seeds [95% CI], * = excludes 0", "",
                  "| method | " + " | ".join(c[0] for c in columns[:5]) + " |", "|---|" + "---|" * 5]
        for recipe, seeds in metrics.items():
            if recipe == args.baseline:
                continue
            cells = [fmt_diff(paired_difference({s: m[c[1]] for s, m in seeds.items() if c[1] in m},
                                                {s: m[c[1]] for s, m in base.items() if c[1] in m}).to_dict())
                     for c in columns[:5]]
            lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
        lines += ["", "## Gain over the warm start (after - before) [95% CI over seeds]", "",
                  "| method | " + " | ".join(c[0] for c in columns[:3]) + " |", "|---|---|---|---|"]
        for recipe, seeds in metrics.items():
            cells = [fmt_diff(paired_difference({s: m[c[1]] for s, m in seeds.items()},
                                                {s: start[c[1]] for s in seeds}).to_dict()) for c in columns[:3]]
            lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    by_recipe = {r: {s: {"after": as_accuracy_names(m, key)} for s, m in seeds.items()} for r, seeds in metrics.items()}
    claims = check_claims(by_recipe)
    if claims:
        lines += ["", f"## The papers' claims, judged on held-out {key}", "",
                  "| claim | difference | on | mean [95% CI] | verdict |", "|---|---|---|---|---|"]
        for c in claims:
            d = c["difference"]
            ci = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None else f"{d['mean']:+.3f}"
            lines.append(f"| {c['claim']} | {c['a']} - {c['b']} | {c['group']} | {ci} | {verdict(d)} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"warm_start": start, "runs": {
        r: {str(s): m for s, m in seeds.items()} for r, seeds in metrics.items()}}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
