"""``perceptrl demo``: from the shipped warm start, GRPO and the perception-aware methods (PAPO-G,
NoisyRollout, NoisyGRPO, DUPL) on the built-in benchmark with one seed and a short budget; then
held-out avg@8 at T = 1 (PAPO's metric), pass@8 and greedy accuracy of each model before -> after,
the shortcut family's perception probe, and the path of the full report.

The training is the runs of ``perceptrl compare`` with a fixed, small setting and its report; the
table is :func:`evaluate_runs` (``perceptrl eval``'s evaluation) of the warm start and each final
model, run in the same pool of processes as the training (:func:`train_and_evaluate`).
``--quick`` is a smoke test of a few seconds. One seed shows whether a method learns at all on this
benchmark and whether it collapses; it cannot rank the methods (``ONE_SEED_NOTE``).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path


DEMO_RECIPES = ["grpo", "papo_g", "noisy_rollout", "noisy_grpo", "dupl"]
START = "warm start"  # the table's name for the shipped warm start

# The benchmark (issue 15): the families of the built-in suite on which the tiny model perceives enough
# for a verifiable reward to teach something (arith, compare and spatial stay in the suite and in the
# warm start's training, but its features there are at chance, so RL has nothing to work with), plus
# the text-only control; 112 px images, boxed answers. ``shortcut`` tempts with a text cue.
BENCHMARK_FAMILIES = ["count", "pope", "shortcut", "text"]
BENCHMARK = ["model.path=warmstart", f"data.families=[{','.join(BENCHMARK_FAMILIES)}]", "data.image_size=112",
             "data.template=boxed", "data.difficulty=1"]

# Budget: every recipe at its own learning rate (2e-5 for all of them, inherited from recipes/grpo.yaml),
# 8 prompts x 8 completions x 32 tokens per step, 80 steps: so that `make demo` stays under 5 minutes
# from a fresh clone on 2 cores (the 5 runs cost about 3.7 CPU-s per step together, plus about 75 CPU-s
# of evaluations and start-up: 366 CPU-s in all, README). GRPO's held-out avg@8 gain over 5 seeds (64 items per
# family): +0.081 [+0.067, +0.096] at step 80, +0.071 at 60, +0.089 at 100, +0.106 at 200
# (benchmarks/results/issue15_demo_80steps_lr2e-5.jsonl and issue15_notes.md, "lr 2e-5").
FULL = dict(steps=80, prompts=8, n=8, val=32, tokens=32)
QUICK = dict(steps=2, prompts=2, n=4, val=2, tokens=8)
K = 8  # samples per held-out item: avg@8 at T = 1 is PAPO's metric
# The perception probe's blank image: white, the suite's empty background (an all-black image is far
# outside what the model has seen, and its answers to it do not even parse).
BLANK_FILL = 1.0

ONE_SEED_NOTE = (
    "One seed, 80 steps, 32 test items per family. What it can show: whether a method learns at all here "
    "and whether one collapses. GRPO's avg@8 gain at this length, measured over 5 seeds on 64 items per "
    "family, is +0.081 [95% interval +0.067, +0.096], every seed between +0.064 and +0.093; a reward that "
    "ignores correctness loses 0.10 in 200 steps (benchmarks/grpo_learning.py). The demo's 32 items per "
    "family make one run's number noisier than that. What it cannot show: which method is better. "
    "Differences between methods of a few points are within that noise; `make results` compares them over "
    "5 seeds with paired 95% intervals (docs/RESULTS.md)."
)


def demo_overrides(budget: dict) -> list[str]:
    return [*BENCHMARK, f"train.max_steps={budget['steps']}", f"data.rollout_batch_size={budget['prompts']}",
            f"rollout.n={budget['n']}", f"data.val_per_family={budget['val']}",
            f"rollout.max_new_tokens={budget['tokens']}", "train.save_final=true"]


def recipe_overrides(steps: int, recipes: list[str]) -> dict[str, list[str]]:
    """NoisyRollout's noise midpoint at 40% of the run (its recipe's s_mid = 16 of 40 steps), since
    ``s_mid`` is an absolute step."""
    out: dict[str, list[str]] = {}
    if "noisy_rollout" in recipes:
        out["noisy_rollout"] = [f"noisy_rollout.s_mid={max(1, round(0.4 * steps))}"]
    return out


def evaluate_runs(model_dirs: dict[str, str], overrides: list[str], n_per_family: int, k: int = 8,
                  output_dir: str | Path | None = None, seed: int = 0) -> dict[str, dict]:
    """``perceptrl eval`` of each model folder (``{name: folder}``) on the benchmark's held-out set:
    greedy, avg@k and pass@k at T = 1, and the blank / masked image probe. Resumable: a model whose
    ``<output_dir>/<name>/eval.json`` exists is read back, not evaluated again."""
    import json

    from perceptrl.config import load_config, recipe_path
    from perceptrl.eval.pipeline import evaluate_model
    from perceptrl.eval.runner import EvalSettings

    out: dict[str, dict] = {}
    for name, folder in model_dirs.items():
        target = Path(output_dir) / name if output_dir else None
        if target is not None and (target / "eval.json").is_file():
            out[name] = json.loads((target / "eval.json").read_text())["metrics"]
            continue
        config = load_config(str(recipe_path("grpo")), [*overrides, f"model.path={folder}", "train.num_threads=1"])
        result = evaluate_model(config, EvalSettings(k=k, seed=seed, probe=True, temperature=1.0, blank_fill=BLANK_FILL),
                                output_dir=target, n_per_family=n_per_family)
        out[name] = result.metrics
    return out


def _cell(before: float | None, after: float | None) -> str:
    if after is None:
        return "-"
    if before is None:
        return f"{after:.3f}"
    return f"{before:.3f} -> {after:.3f} ({after - before:+.3f})"


def before_after_table(metrics: dict[str, dict], start: str = START, k: int = 8) -> str:
    """Console table: avg@k, pass@k and greedy accuracy before -> after, and the shortcut probe."""
    base = metrics[start]
    header = ["method", f"avg@{k} (T=1)", f"pass@{k}", "greedy", "shortcut: held-out / image blanked / gap"]
    rows = []
    for name, m in metrics.items():
        b = None if name == start else base
        sc = [m.get("accuracy/family/shortcut"), m.get("probe/blank/family/shortcut")]
        shortcut = "-" if None in sc else f"{sc[0]:.3f} / {sc[1]:.3f} / {sc[0] - sc[1]:+.3f}"
        rows.append([name, *(_cell(b.get(key) if b else None, m.get(key)) for key in (f"avg@{k}", f"pass@{k}", "accuracy")),
                     shortcut])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def default_jobs() -> int:
    """Processes at a time: one more than the cores (at most one per run). With exactly as many
    processes as cores, the core that finishes its share first idles while the last run trains
    (5 runs of unequal length on 2 cores: about 40 s of one idle core); one process more keeps
    every core busy to the end, at the cost of a few context switches."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(2, min(len(DEMO_RECIPES), cores + 1))


def _evaluate_job(name: str, folder: str, overrides: list[str], n_per_family: int, k: int,
                  output_dir: str) -> tuple[str, dict | None, str | None]:
    """Process-pool entry: one model's evaluation; an error comes back as text."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        return name, evaluate_runs({name: folder}, overrides, n_per_family, k, output_dir)[name], None
    except Exception:  # noqa: BLE001 - reported by the parent, the other jobs go on
        return name, None, traceback.format_exc()


def train_and_evaluate(specs: list, start_model: str, overrides: list[str], n_per_family: int, k: int,
                       eval_dir: Path, jobs: int, say, show_progress: bool = True,
                       when_trained=None) -> tuple[dict[str, str], dict[str, dict]]:
    """Train every unfinished run of ``specs`` and evaluate the starting model and each final model
    (:func:`evaluate_runs`), ``jobs`` processes at a time. Each model's evaluation is queued as soon
    as its run ends, behind the training still waiting, so the short evaluations fill the cores that
    the last runs leave idle; ``when_trained(errors)`` (the report, given the training errors) runs in
    this process once every run is done, while the last evaluations go on.

    Returns ``({run_dir or model: traceback}, {model: metrics})`` (finished runs are not run again,
    models already evaluated are read back)."""
    import multiprocessing as mp

    from perceptrl.eval.compare import COST_HINT, StepProgress, is_finished, run_worker

    finals = {s.name: str(Path(s.run_dir) / "final") for s in specs}
    todo = sorted((s for s in specs if not is_finished(s.run_dir)), key=lambda s: -COST_HINT.get(s.name, 1.0))
    if len(todo) < len(specs):
        say(f"{len(specs) - len(todo)} of {len(specs)} runs already finished: not run again")
    progress = StepProgress(specs, "demo", show_progress and bool(todo))
    errors: dict[str, str] = {}
    metrics: dict[str, dict] = {}
    eval_args = (overrides, n_per_family, k, str(eval_dir))

    def take(name, m, err) -> None:
        if err:
            errors[name] = err
            say(f"evaluation of {name} failed:\n{err}")
        else:
            metrics[name] = m

    try:
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("spawn")) as pool:
            training = {pool.submit(run_worker, s): s for s in todo}
            evaluating = {pool.submit(_evaluate_job, START, start_model, *eval_args)}
            evaluating |= {pool.submit(_evaluate_job, s.name, finals[s.name], *eval_args)
                           for s in specs if s not in todo and Path(finals[s.name]).is_dir()}
            while training:
                done, _ = wait(set(training), return_when=FIRST_COMPLETED)
                for fut in done:
                    spec = training.pop(fut)
                    run_dir, err = fut.result()
                    progress.finished += err is None
                    if err:
                        errors[run_dir] = err
                        say(f"run {run_dir} failed:\n{err}")
                    elif Path(finals[spec.name]).is_dir():
                        evaluating.add(pool.submit(_evaluate_job, spec.name, finals[spec.name], *eval_args))
            progress.close()
            if when_trained:
                when_trained(dict(errors))
            for fut in evaluating:
                take(*fut.result())
    finally:
        progress.close()
    order = [START, *finals]
    return errors, {name: metrics[name] for name in order if name in metrics}


def run_demo(output_dir: str = "runs/demo", quick: bool = False, jobs: int | None = None,
             recipes: list[str] | None = None) -> dict:
    from perceptrl.eval.compare import plan_runs, report_runs

    recipes = recipes or DEMO_RECIPES
    budget = QUICK if quick else FULL
    jobs = jobs if jobs is not None else (2 if quick else default_jobs())
    out = Path(output_dir)
    k = K if not quick else 2
    print(f"perceptrl demo: {', '.join(recipes)} from the shipped warm start on the built-in benchmark "
          f"({len(BENCHMARK_FAMILIES)} families), 1 seed, {budget['steps']} steps x {budget['prompts']} prompts x "
          f"{budget['n']} completions each; held-out set: {budget['val']} items per family; "
          f"{jobs} process(es) at a time", flush=True)
    t0 = time.perf_counter()
    say = lambda m: print(f"[demo] {m}", file=sys.stderr, flush=True)  # noqa: E731
    overrides, per_recipe = demo_overrides(budget), recipe_overrides(budget["steps"], recipes)
    specs = plan_runs(recipes, [0], out / "runs", overrides, per_recipe, num_threads=1, save_steps=10)
    say(f"training {len(specs)} runs; the warm start and each trained model are evaluated as soon as they can "
        f"be (avg@{k} at T = 1, pass@{k}, greedy, probe)")
    report: dict = {}

    def write_report(training_errors: dict[str, str]) -> None:  # as `perceptrl compare` writes it
        report.update(report_runs(
            specs, out, overrides, per_recipe, training_errors, title="perceptrl demo: one seed, short budget",
            notes=["One seed and a short budget: no confidence intervals. `docs/RESULTS.md` has the multi-seed "
                   "comparison; the avg@8 table of the demo is printed on the console and saved as demo_avg8.md."],
            wall_time_s=time.perf_counter() - t0,
        ))

    errors, metrics = train_and_evaluate(specs, "warmstart", BENCHMARK, budget["val"], k, out / "eval", jobs, say,
                                         when_trained=write_report)
    data = report
    data["errors"] = errors
    if START not in metrics:
        raise RuntimeError(f"the evaluation of the warm start failed:\n{errors.get(START, '')}")
    table = before_after_table(metrics, k=k)
    print()
    print(f"held-out accuracy on {budget['val']} items x {len(BENCHMARK_FAMILIES)} families, before -> after training")
    print(table)
    print()
    print(ONE_SEED_NOTE)
    for name, m in metrics.items():
        fmt = m.get("format_rate")
        if fmt is not None and fmt < 0.5 and not quick:
            print(f"{name}: collapsed (answer format lost, rate {fmt:.2f}); the signals in the report show how, "
                  "and docs/RESULTS.md explains it.")
    (out / "demo_avg8.md").write_text(f"```\n{table}\n```\n\n{ONE_SEED_NOTE}\n")
    if data["missing"]:
        print(f"missing runs: {', '.join(data['missing'])}")
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    print(f"report: {out / 'report.md'}  (self-contained: {out / 'report.html'}; greedy accuracy and training signals)")
    data["avg_at_k"] = metrics
    return data
