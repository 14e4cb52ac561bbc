"""``perceptrl compare``: several recipes times several seeds on the same data and budget.

::

    perceptrl compare --recipes grpo papo_g noisy_rollout noisy_grpo dupl --seeds 0 1 2 \\
        --output-dir runs/compare model.path=warmstart train.max_steps=40

Every run gets the same shared overrides (data, budget, model); ``--set RECIPE:key=value`` adds an
override to one recipe only (e.g. its tuned learning rate). Runs live in ``<runs-dir>/<recipe>/seed<k>``
(default ``<output-dir>/runs``). A run is *finished* when its ``result.json`` exists (written after
the final evaluation); finished runs are never run again, an interrupted one resumes from its newest
checkpoint (``train.resume=auto``, checkpoints every ``--save-steps`` steps). At the end (and with
``--report-only`` without training) the report is written: ``compare.json`` (every number),
``report.md`` and a self-contained ``report.html`` with the plots (``*.png``).

The score of a run is its held-out greedy accuracy after training (overall and per family) on the
suite's fixed test set, the same items for every recipe and seed; differences to the baseline are
paired over matched seeds (same seed = same initial weights, data order and sampling seeds).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from perceptrl.eval.report import to_json_safe

RESULT_FILE = "result.json"

# Relative cost of a step (measured on the tiny model, docs/RESULTS.md): with several runs at a time,
# the slowest runs of each seed start first so that the workers finish together.
COST_HINT = {"dupl": 2.0, "vogue": 2.0, "dupl_dapo": 2.0, "dupl_released": 2.0, "dupl_no_u_per": 2.0,
             "dupl_no_u_out": 2.0, "papo_g": 1.4, "papo_d": 1.4, "noisy_grpo": 1.3,
             "noisy_rollout": 1.1}

__all__ = ["RunSpec", "plan_runs", "run_one", "run_compare", "collect_runs", "is_finished", "recipe_file"]


@dataclass
class RunSpec:
    """One training run of the comparison."""

    recipe: str  # name (recipes/<name>.yaml) or a YAML path
    seed: int
    run_dir: str
    overrides: list[str] = field(default_factory=list)  # everything but seed / output_dir
    num_threads: int = 1
    probe: bool = False  # also run the masked / blank image probe on the final model
    score_k: int = 0  # > 0: also score the final model by avg@k at T = 1 on the run's held-out split

    @property
    def name(self) -> str:
        return recipe_name(self.recipe)

    @property
    def max_steps(self) -> int:
        """The step budget (needs the recipe: read lazily)."""
        return int(self.config().train.max_steps)

    def config(self):
        from perceptrl.config import load_config

        return load_config(recipe_file(self.recipe), self.all_overrides())

    def all_overrides(self) -> list[str]:
        return [*self.overrides, f"train.seed={self.seed}", f"train.output_dir={self.run_dir}",
                f"train.num_threads={self.num_threads}", "train.progress=false"]


def recipe_name(recipe: str) -> str:
    return Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe


def recipe_file(recipe: str) -> Path:
    """A recipe name (``grpo``) or a YAML path -> the YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"recipe file '{recipe}' not found")
        return path
    from perceptrl.config import recipe_path

    return recipe_path(recipe)


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / RESULT_FILE).is_file()


def plan_runs(recipes: list[str], seeds: list[int], runs_dir: str | Path, overrides: list[str] | None = None,
              recipe_overrides: dict[str, list[str]] | None = None, num_threads: int = 1,
              save_steps: int | None = 10, probe: bool = False) -> list[RunSpec]:
    """The runs, seed-major (all recipes of seed 0 first: a partial comparison is paired)."""
    overrides = list(overrides or [])
    recipe_overrides = recipe_overrides or {}
    if save_steps and not any(o.startswith("train.save_steps=") for o in overrides):
        overrides.append(f"train.save_steps={save_steps}")
    names = [recipe_name(r) for r in recipes]
    if len(set(names)) != len(names):
        raise ValueError(f"recipe names must be distinct, got {names}")
    unknown = set(recipe_overrides) - set(names)
    if unknown:
        raise ValueError(f"--set names recipe(s) {sorted(unknown)} that are not in --recipes {names}")
    specs = []
    for seed in seeds:
        for recipe, name in zip(recipes, names):
            specs.append(RunSpec(recipe, int(seed), str(Path(runs_dir) / name / f"seed{seed}"),
                                 overrides + list(recipe_overrides.get(name, [])), num_threads, probe))
    return specs


def run_one(spec: RunSpec) -> dict:
    """Train one run (resuming if it was interrupted), evaluate, write ``result.json``."""
    import torch

    from perceptrl.train.rl import train

    torch.set_num_threads(max(1, spec.num_threads))
    try:  # one bar for the whole comparison: no "Writing model shards" bars per run
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    config = spec.config()
    t0 = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t0
    record: dict[str, Any] = {
        "recipe": spec.name, "recipe_file": str(recipe_file(spec.recipe)), "seed": spec.seed,
        "run_dir": spec.run_dir, "overrides": spec.overrides, "max_steps": config.train.max_steps,
        "lr": config.train.lr, "before": result.before, "after": result.after,
        "wall_time_s": wall, "time_per_step_s": _mean([h.get("time/step") for h in result.history]),
    }
    if spec.probe:
        record["probe"] = _probe(config, Path(spec.run_dir))
    if spec.score_k:
        record["after"].update(_sampled_score(config, Path(spec.run_dir), spec.score_k))
    (Path(spec.run_dir) / "summary.json").write_text(json.dumps(to_json_safe(
        {"before": result.before, "after": result.after}), indent=2))
    tmp = Path(spec.run_dir) / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(to_json_safe(record), indent=2))
    os.replace(tmp, Path(spec.run_dir) / RESULT_FILE)  # the marker appears atomically, last
    return record


def _evaluate_final(config, run_dir: Path, settings, folder: str) -> dict:
    """``perceptrl eval``'s metrics of the run's final model on its held-out split, saved in ``folder``."""
    from perceptrl.eval.pipeline import evaluate_model

    config.model.path = str(run_dir / "final")
    return evaluate_model(config, settings, output_dir=run_dir / folder).metrics


def _probe(config, run_dir: Path) -> dict:
    """Greedy accuracy of the final model on the original, masked and blank images."""
    from perceptrl.eval.runner import EvalSettings

    metrics = _evaluate_final(config, run_dir, EvalSettings(k=0, probe=True), "eval_probe")
    return {k: v for k, v in metrics.items() if v is not None and ("probe" in k or k.startswith("greedy"))}


def _sampled_score(config, run_dir: Path, k: int) -> dict:
    """avg@k and pass@k at T = 1 of the final model on the run's own held-out split (overall and per group)."""
    from perceptrl.eval.runner import EvalSettings

    metrics = _evaluate_final(config, run_dir, EvalSettings(k=k, probe=False, temperature=1.0), f"eval_k{k}")
    return {key: v for key, v in metrics.items() if v is not None and key.startswith((f"avg@{k}", f"pass@{k}"))}


def _mean(values) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def run_worker(spec: RunSpec) -> tuple[str, str | None]:
    """Process-pool entry: run and report an error as text (tracebacks do not pickle well)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(spec.num_threads))
    try:
        run_one(spec)
        return spec.run_dir, None
    except Exception:  # noqa: BLE001 - reported by the parent, the other runs go on
        return spec.run_dir, traceback.format_exc()


def steps_done(run_dir: str) -> int:
    """The newest step logged in a run's metrics.jsonl (0 when none)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        pass
    return 0


class StepProgress:
    """A tqdm bar of the steps done over all ``specs`` (the runs train in other processes: a thread
    reads their metrics.jsonl once a second). ``finished`` counts the runs done; ``close()`` may be
    called more than once."""

    def __init__(self, specs: list[RunSpec], desc: str, show: bool = True):
        from tqdm.auto import tqdm

        self.budgets = {s.run_dir: s.max_steps for s in specs}
        self.finished = sum(is_finished(d) for d in self.budgets)
        self.bar = tqdm(total=sum(self.budgets.values()), desc=desc, unit="step", file=sys.stderr,
                        dynamic_ncols=True, disable=not show)
        self.refresh()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def refresh(self) -> None:
        self.bar.n = sum(n if is_finished(d) else min(steps_done(d), n) for d, n in self.budgets.items())
        self.bar.set_postfix_str(f"runs {self.finished}/{len(self.budgets)}", refresh=False)
        self.bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            self.refresh()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._poller.join(timeout=5)
        self.refresh()
        self.bar.close()


def execute(specs: list[RunSpec], jobs: int = 1, show_progress: bool = True,
            say: Callable[[str], None] | None = None) -> dict[str, str]:
    """Run every unfinished spec (``jobs`` at a time); a tqdm bar counts steps across all runs.

    Returns ``{run_dir: traceback}`` for the runs that failed (the others are finished).
    """
    say = say or (lambda m: None)
    todo = [s for s in specs if not is_finished(s.run_dir)]
    skipped = len(specs) - len(todo)
    if skipped:
        say(f"{skipped} of {len(specs)} runs already finished: not run again")
        for s in specs:
            if is_finished(s.run_dir):
                done = json.loads((Path(s.run_dir) / RESULT_FILE).read_text()).get("overrides")
                if done is not None and done != s.overrides:
                    say(f"warning: {s.run_dir} finished with other overrides ({' '.join(done)}); "
                        "delete it (or use another --runs-dir) to run it with the new ones")
    if not todo:
        return {}
    progress = StepProgress(specs, "compare", show_progress)
    errors: dict[str, str] = {}
    try:
        if jobs <= 1:
            for spec in todo:
                progress.bar.set_description(f"compare {spec.name} s{spec.seed}")
                run_dir, err = run_worker(spec)
                progress.finished += err is None
                if err:
                    errors[run_dir] = err
                    say(f"run {run_dir} failed:\n{err}")
        else:
            import multiprocessing as mp

            seed_rank = {seed: i for i, seed in reversed(list(enumerate(s.seed for s in specs)))}
            todo.sort(key=lambda s: (seed_rank[s.seed], -COST_HINT.get(s.name, 1.0)))
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
                pending = {pool.submit(run_worker, s) for s in todo}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        run_dir, err = fut.result()
                        progress.finished += err is None
                        if err:
                            errors[run_dir] = err
                            say(f"run {run_dir} failed:\n{err}")
    finally:
        progress.close()
    return errors


def collect_runs(specs: list[RunSpec]) -> list[dict]:
    """``result.json`` of every finished run plus its training curve (metrics.jsonl rows)."""
    from perceptrl.train.logging import read_metrics

    out = []
    for spec in specs:
        if not is_finished(spec.run_dir):
            continue
        record = json.loads((Path(spec.run_dir) / RESULT_FILE).read_text())
        path = Path(spec.run_dir) / "metrics.jsonl"
        record["history"] = read_metrics(path) if path.is_file() else []
        out.append(record)
    return out


def run_compare(recipes: list[str], seeds: list[int], output_dir: str | Path, overrides: list[str] | None = None,
                recipe_overrides: dict[str, list[str]] | None = None, runs_dir: str | Path | None = None,
                jobs: int = 1, num_threads: int = 1, save_steps: int | None = 10, baseline: str | None = None,
                probe: bool = False, report_only: bool = False, show_progress: bool = True,
                say: Callable[[str], None] | None = None, title: str | None = None,
                notes: list[str] | None = None, tune_lrs: list[float] | None = None, tune_seed: int = 100,
                tune_steps: int | None = None, tune_k: int = 0, tune_like: dict[str, str] | None = None) -> dict:
    """Run (or resume) the comparison and write its report; returns the report data."""
    output_dir = Path(output_dir)
    runs_dir = Path(runs_dir) if runs_dir else output_dir / "runs"
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    recipe_overrides = {k: list(v) for k, v in (recipe_overrides or {}).items()}
    tuning = None
    if tune_lrs:
        tune_like = dict(tune_like or {})
        tuned = [r for r in recipes if recipe_name(r) not in tune_like]
        tuning = tune_learning_rates(tuned, tune_lrs, tune_seed, tune_steps, runs_dir / "tune", overrides,
                                     recipe_overrides, jobs, num_threads, save_steps, report_only,
                                     show_progress, say, tune_k)
        chosen = dict(tuning["chosen"])
        for name, source in tune_like.items():  # an ablation keeps its method's rate: only one piece differs
            if source in tuning["chosen"]:
                chosen[name] = {**tuning["chosen"][source], "from": source}
        tuning["chosen"], tuning["like"] = chosen, tune_like
        for name, row in chosen.items():  # the user's own --set still wins (it comes later)
            recipe_overrides[name] = [f"train.lr={row['lr']}", *recipe_overrides.get(name, [])]
    specs = plan_runs(recipes, seeds, runs_dir, overrides, recipe_overrides, num_threads, save_steps, probe)
    errors = {} if report_only else execute(specs, jobs, show_progress, say)
    return report_runs(specs, output_dir, overrides, recipe_overrides, errors, baseline, title, notes, tuning,
                       time.perf_counter() - t0)


def report_runs(specs: list[RunSpec], output_dir: str | Path, overrides: list[str] | None = None,
                recipe_overrides: dict[str, list[str]] | None = None, errors: dict[str, str] | None = None,
                baseline: str | None = None, title: str | None = None, notes: list[str] | None = None,
                tuning: dict | None = None, wall_time_s: float = 0.0) -> dict:
    """Write the report of the finished runs among ``specs`` (``compare.json``, ``report.md``,
    ``report.html`` and the plots in ``output_dir``); the unfinished ones are listed as missing."""
    from perceptrl.eval.compare_report import build_report_data, write_report

    records = collect_runs(specs)
    missing = [f"{s.name} seed {s.seed}" for s in specs if not is_finished(s.run_dir)]
    names = list(dict.fromkeys(s.name for s in specs))
    base = baseline or ("grpo" if "grpo" in names else names[0])
    data = build_report_data(
        records, recipes=names, seeds=list(dict.fromkeys(s.seed for s in specs)), baseline=base,
        overrides=list(overrides or []), recipe_overrides=recipe_overrides or {}, missing=missing,
        errors=dict(errors or {}), wall_time_s=wall_time_s, title=title, notes=notes or [], tuning=tuning,
    )
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_report(data, output_dir)
    return data


def tune_learning_rates(recipes: list[str], lrs: list[float], seed: int, steps: int | None, tune_dir: Path,
                        overrides: list[str] | None, recipe_overrides: dict[str, list[str]], jobs: int,
                        num_threads: int, save_steps: int | None, report_only: bool, show_progress: bool,
                        say: Callable[[str], None] | None, k: int = 0) -> dict:
    """The same tuning budget for every recipe: each learning rate once, with seed ``seed`` (not
    one of the comparison's seeds) and ``steps`` steps, scored on the suite's tuning split
    (``data.val_split=tune``: held-out items that are not in the test set); the best score wins (ties:
    the first learning rate listed). The score is greedy accuracy, or avg@k at T = 1 when ``k`` > 0.
    Finished tuning runs are not run again."""
    say = say or (lambda m: None)
    shared = [*(overrides or []), "data.val_split=tune"]
    if steps:
        shared.append(f"train.max_steps={steps}")
    metric = f"avg@{k}" if k else "accuracy"
    specs, keys = [], []
    for recipe in recipes:
        name = recipe_name(recipe)
        for lr in lrs:
            spec_list = plan_runs([recipe], [seed], tune_dir / f"lr{lr:g}", shared,
                                  {name: [*recipe_overrides.get(name, []), f"train.lr={lr:g}"]},
                                  num_threads, save_steps)
            for spec in spec_list:
                spec.score_k = k
            specs += spec_list
            keys.append((name, float(lr)))
    say(f"learning-rate tuning: {len(recipes)} recipes x lr {', '.join(f'{x:g}' for x in lrs)} x seed {seed}"
        + (f", {steps} steps" if steps else "") + f"; scored by {metric} on the tuning split")
    errors = {} if report_only else execute(specs, jobs, show_progress, say)
    results: dict[str, dict[str, float | None]] = {}
    for (name, lr), spec in zip(keys, specs):
        acc = None
        if is_finished(spec.run_dir):
            acc = json.loads((Path(spec.run_dir) / RESULT_FILE).read_text())["after"].get(metric)
        results.setdefault(name, {})[f"{lr:g}"] = acc
    chosen = {}
    for name, row in results.items():
        done = [(acc, -i, lr) for i, (lr, acc) in enumerate(row.items()) if acc is not None]
        if done:
            acc, _, lr = max(done)
            chosen[name] = {"lr": float(lr), "score": acc}
        else:
            say(f"tuning of {name} did not finish: its recipe's learning rate is used")
    return {"lrs": [float(x) for x in lrs], "seed": seed, "steps": steps, "metric": metric, "split": "tune",
            "results": results, "chosen": chosen, "errors": errors}


def parse_tune_like(items: list[str] | None, recipes: list[str]) -> dict[str, str]:
    """``["dupl_no_u_per:dupl"]`` -> ``{"dupl_no_u_per": "dupl"}``; both must be in ``--recipes``."""
    names = [recipe_name(r) for r in recipes]
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, source = item.partition(":")
        name, source = recipe_name(name), recipe_name(source)
        if not sep or not name or not source:
            raise ValueError(f"--tune-like expects RECIPE:TUNED_RECIPE, got {item!r}")
        missing = [n for n in (name, source) if n not in names]
        if missing:
            raise ValueError(f"--tune-like {item}: {', '.join(missing)} not in --recipes {names}")
        if name == source or source in out or name in out.values():
            raise ValueError(f"--tune-like {item}: the learning rate must come from a recipe that is tuned itself")
        out[name] = source
    return out


def parse_recipe_overrides(items: list[str] | None) -> dict[str, list[str]]:
    """``["grpo:train.lr=1e-4", ...]`` -> ``{"grpo": ["train.lr=1e-4"], ...}``."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ValueError(f"--set expects RECIPE:key=value, got {item!r}")
        out.setdefault(recipe_name(name), []).append(override)
    return out


def cmd_compare(args) -> int:
    say = None if args.quiet else (lambda m: print(f"[compare] {m}", file=sys.stderr, flush=True))
    # ``--recipes a b key=value`` and ``--seeds 0 1 key=value``: the nargs="+" options swallow the
    # overrides that follow them; hand those back.
    overrides = [r for r in args.recipes if "=" in r] + [s for s in args.seeds if "=" in s] + list(args.overrides)
    args.recipes = [r for r in args.recipes if "=" not in r]
    try:
        args.seeds = [int(s) for s in args.seeds if "=" not in s]
    except ValueError:
        print(f"perceptrl compare: --seeds expects integers, got {args.seeds}", file=sys.stderr)
        return 2
    args.overrides = overrides
    if not args.recipes or not args.seeds:
        print("perceptrl compare: give at least one recipe and one seed", file=sys.stderr)
        return 2
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"perceptrl compare: overrides must be key=value, got {bad}", file=sys.stderr)
        return 2
    try:
        recipe_overrides = parse_recipe_overrides(args.set)
        tune_like = parse_tune_like(args.tune_like, args.recipes)
        if args.tune_k < 0:
            raise ValueError(f"--tune-k must be >= 0, got {args.tune_k}")
        for spec in plan_runs(args.recipes, args.seeds, "-", args.overrides, recipe_overrides):  # fail before any work
            spec.config()  # the recipe exists and its config with the overrides is valid
    except ValueError as err:
        print(f"perceptrl compare: {err}", file=sys.stderr)
        return 2
    data = run_compare(
        args.recipes, args.seeds, args.output_dir, args.overrides, recipe_overrides,
        runs_dir=args.runs_dir, jobs=args.jobs, num_threads=args.threads, save_steps=args.save_steps,
        baseline=args.baseline, probe=args.probe, report_only=args.report_only, show_progress=not args.quiet,
        say=say, title=args.title, tune_lrs=args.tune_lr, tune_seed=args.tune_seed, tune_steps=args.tune_steps,
        tune_k=args.tune_k, tune_like=tune_like,
    )
    from perceptrl.eval.compare_report import render_table

    print(render_table(data))
    if data["missing"]:
        print(f"missing runs: {', '.join(data['missing'])}")
    out = Path(args.output_dir)
    print(f"report: {out / 'report.md'}  {out / 'report.html'}")
    return 1 if data["errors"] else 0


def add_parser(subparsers) -> None:
    import argparse

    p = subparsers.add_parser(
        "compare", help="several recipes x seeds on the same data and budget, with a report",
        description=(__doc__.split("::")[0].strip() + "\n\n" + __doc__.split("::", 1)[1].strip()).replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipes", nargs="+", required=True, help="recipe names (recipes/<name>.yaml) or YAML paths")
    p.add_argument("--seeds", nargs="+", default=["0"], help="training seeds (matched across recipes)")
    p.add_argument("--output-dir", default="runs/compare", help="report folder")
    p.add_argument("--runs-dir", default=None, help="run folders (default: <output-dir>/runs)")
    p.add_argument("--set", action="append", metavar="RECIPE:key=value",
                   help="an override for one recipe only (repeatable), e.g. grpo:train.lr=1e-4")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (separate processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--save-steps", type=int, default=10, help="checkpoint every N steps (for resuming); 0 = never")
    p.add_argument("--baseline", default=None, help="recipe the paired differences are taken to (default: grpo)")
    p.add_argument("--probe", action="store_true", help="also evaluate each final model on masked and blank images")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs, train nothing")
    p.add_argument("--tune-lr", nargs="+", type=float, default=None, metavar="LR",
                   help="first tune the learning rate of every recipe: each LR once (--tune-seed, --tune-steps), "
                        "scored on the suite's tuning split (data.val_split=tune, not the test items)")
    p.add_argument("--tune-k", type=int, default=0, metavar="K",
                   help="score tuning runs by avg@K at T = 1 (default 0: greedy accuracy)")
    p.add_argument("--tune-like", action="append", metavar="RECIPE:TUNED",
                   help="RECIPE is not tuned but takes TUNED's chosen learning rate (an ablation of TUNED)")
    p.add_argument("--tune-seed", type=int, default=100, help="seed of the tuning runs (not a comparison seed)")
    p.add_argument("--tune-steps", type=int, default=None, help="steps of a tuning run (default: the shared budget)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="shared dotted overrides, e.g. train.max_steps=40 model.path=warmstart")
    p.set_defaults(func=cmd_compare)
