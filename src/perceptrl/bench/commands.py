"""``perceptrl bench``: seconds per step of every recipe, scaling curves and speed changes.

Examples::

    perceptrl bench --quick                                   # smoke run, under a minute
    perceptrl bench --sections recipes --recipes grpo papo_g dupl --sizes tiny medium
    perceptrl bench --sections scaling --sizes tiny medium --repeats 2
    perceptrl bench --sections speedups --sizes tiny medium
    perceptrl bench --sections recipes --recipes grpo --sizes tiny medium --engine vllm   # in .venv-vllm
    perceptrl bench --sections memory                          # peak memory of one update at V = 151,936

Writes ``<output-dir>/bench.json``, ``bench.png`` (CPU seconds) and ``bench.md`` (tables).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SECTIONS = ("recipes", "scaling", "speedups", "memory")
# What --quick sets, for the options not given on the command line (an option given wins).
QUICK = {"sizes": ["tiny"], "prompts": 2, "completions": 4, "tokens": 16, "steps": 2, "warmup": 1, "repeats": 1,
         "scaling_prompts": 2}


def register(subparsers) -> None:
    """Add this package's subcommands to the ``perceptrl`` parser."""
    p = subparsers.add_parser("bench", help="benchmark seconds per step of the recipes (real training loop)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS[:3]),
                   help="default: recipes scaling speedups (memory runs only when named)")
    p.add_argument("--recipes", nargs="+", default=None, help="recipe names (default: all in recipes/)")
    p.add_argument("--sizes", nargs="+", default=["tiny", "medium"], help="model sizes (perceptrl.bench.models)")
    p.add_argument("--recipe-sizes", nargs="+", default=None,
                   help="for sizes other than the first: only these recipes in the recipes section (GRPO always)")
    p.add_argument("--speedup-variants", nargs="+", default=None,
                   help="speed changes to undo in the speedups section (default: all; see perceptrl.bench.suite)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--completions", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--image-size", type=int, default=56)
    p.add_argument("--scaling-prompts", type=int, default=4, help="prompts per step in the scaling section")
    p.add_argument("--steps", type=int, default=5, help="steps per run, warm-up included")
    p.add_argument("--warmup", type=int, default=2, help="leading steps of each run not counted")
    p.add_argument("--repeats", type=int, default=3, help="runs of every case (interleaved)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    p.add_argument("--isolate", action="store_true", help="run every case in its own process")
    p.add_argument("--real-rewards", action="store_true",
                   help="use the verifier's rewards as they are (an untrained model is never right)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="rollout engine of every case (vllm: run in the vLLM environment, scripts/install_vllm_env.sh)")
    p.add_argument("--output-dir", default="runs/bench")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, small batches, under a minute")
    p.add_argument("--memory-lengths", type=int, nargs="+", default=[256, 1024],
                   help="memory section: completion lengths T (one update each, V = 151,936)")
    p.add_argument("--memory-rows", type=int, nargs="+", default=[1, 4], help="memory section: completions per update")
    p.add_argument("--report-from", nargs="+", default=None, metavar="RAW_JSONL",
                   help="run nothing: summarise the raw.jsonl file(s) of earlier (possibly interrupted) runs")
    p.set_defaults(func=cmd_bench)
    for action in p._actions:  # unset options read None, so that --quick can tell them from given ones
        if action.dest in QUICK:
            action.help = (action.help or "") + f" (default {action.default}; --quick: {QUICK[action.dest]})"
            _NORMAL[action.dest], action.default = action.default, None


_NORMAL: dict = {}


def _fill_defaults(args) -> None:
    """Options not given: --quick's value under --quick, else the normal default."""
    for name, normal in _NORMAL.items():
        if getattr(args, name, None) is None:
            setattr(args, name, QUICK[name] if args.quick else normal)


def check_bench_options(args) -> None:
    """Recipes, sizes, variants and counts that would fail mid-run: refused before anything runs."""
    from perceptrl.bench.models import MODEL_SIZES
    from perceptrl.bench.suite import SPEEDUP_VARIANTS, recipe_sources
    from perceptrl.config import ConfigError

    def unknown(option: str, given, known) -> None:
        bad = [name for name in given or [] if name not in known]
        if bad:
            raise ConfigError(f"{option}: unknown {', '.join(bad)}; choose from {', '.join(known)}")

    unknown("--recipes", args.recipes, list(recipe_sources()))
    unknown("--recipe-sizes", args.recipe_sizes, list(recipe_sources()))
    unknown("--sizes", args.sizes, list(MODEL_SIZES))
    unknown("--speedup-variants", args.speedup_variants, list(SPEEDUP_VARIANTS))
    for option, value, low in (("--prompts", args.prompts, 1), ("--completions", args.completions, 1),
                               ("--tokens", args.tokens, 1), ("--image-size", args.image_size, 28),
                               ("--scaling-prompts", args.scaling_prompts, 1), ("--repeats", args.repeats, 1),
                               ("--threads", args.threads, 1), ("--warmup", args.warmup, 0)):
        if value < low:
            raise ConfigError(f"{option} {value}: must be >= {low}")
    if args.steps <= args.warmup:
        raise ConfigError(f"--steps {args.steps}: must be more than --warmup ({args.warmup}), or no step is measured")


def cmd_bench(args) -> int:
    import logging
    import warnings

    from perceptrl.bench.runner import Case
    from perceptrl.bench.suite import SCALING_AXES, build_cases, load_raw, run_cases, summarise, write_report

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    out_dir = Path(args.output_dir)
    if args.report_from:
        cases, results = load_raw([Path(p) for p in args.report_from])
        loads = [run["load_average"][0] for runs in results.values() for run in runs]
        first = next(iter(results.values()))[0]
        meta = {
            "command": "perceptrl bench --report-from " + " ".join(args.report_from),
            "repeats": 1 + max(run["repeat"] for runs in results.values() for run in runs),
            "warmup": first["case"]["warmup"], "measured_steps": first["case"]["steps"] - first["case"]["warmup"],
            "threads": first["case"]["threads"], "cpus": os.cpu_count(),
            "load_min": min(loads), "load_max": max(loads), "sources": args.report_from,
        }
        return _write(summarise(cases, results, meta), out_dir)
    sections = list(args.sections)
    if "memory" in sections:  # its own cases (perceptrl.bench.memory): not steps of the training loop
        sections.remove("memory")
        _fill_defaults(args)
        _memory_section(args, out_dir)
        if not sections:
            return 0
    args.sections = sections
    scaling_axes = SCALING_AXES
    _fill_defaults(args)
    check_bench_options(args)
    if args.quick:
        if args.recipes is None:
            args.recipes = ["grpo"]
        scaling_axes = {
            "group_size": ("completions", [2, 4]),
            "completion_length": ("tokens", [8, 16]),
            "image_size": ("image_size", [56, 112]),
        }
    base = Case(name="base", prompts=args.prompts, completions=args.completions, tokens=args.tokens,
                image_size=args.image_size, steps=args.steps, warmup=args.warmup, threads=args.threads,
                coin_flip_rewards=not args.real_rewards, engine=args.engine)
    scaling_base = Case(name="scaling", prompts=args.scaling_prompts, completions=8 if not args.quick else 4,
                        tokens=64 if not args.quick else 16, image_size=56, steps=args.steps, warmup=args.warmup,
                        threads=args.threads, coin_flip_rewards=not args.real_rewards, engine=args.engine)
    recipe_sizes = None
    if args.recipe_sizes:
        recipe_sizes = {size: args.recipe_sizes for size in args.sizes[1:]}
    sections = list(args.sections)
    if args.quick and "speedups" in sections:
        sections.remove("speedups")  # two more runs of the same shape: not needed for a smoke test
    cases = build_cases(sections, args.recipes, args.sizes, base, scaling_base=scaling_base,
                        scaling_axes=scaling_axes, recipe_sizes=recipe_sizes,
                        speedup_variants=args.speedup_variants)
    print(f"perceptrl bench: {len(cases)} cases x {args.repeats} repeats, {args.steps} steps each "
          f"({args.warmup} warm-up), torch threads {args.threads}", flush=True)
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()

    def log(line: str) -> None:
        loads.append(os.getloadavg()[0])
        print(line, flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "raw.jsonl"
    raw.unlink(missing_ok=True)
    results = run_cases(cases, args.repeats, isolate=args.isolate, log=log, raw_path=raw)
    meta = {
        "command": "perceptrl bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "perceptrl bench",
        "repeats": args.repeats, "warmup": args.warmup, "measured_steps": args.steps - args.warmup,
        "threads": args.threads, "cpus": os.cpu_count(), "load_min": min(loads), "load_max": max(loads),
        "coin_flip_rewards": not args.real_rewards, "isolate": args.isolate,
        "total_seconds": time.perf_counter() - t0, "sections": sections,
        "engine": args.engine,
    }
    return _write(summarise(cases, results, meta), out_dir)


def _memory_section(args, out_dir: Path) -> None:
    """Peak resident memory of one update at the real vocabulary (``perceptrl.bench.memory``)."""
    import json

    from perceptrl.bench.memory import MemoryCase, markdown, run_memory_section

    lengths, rows = args.memory_lengths, args.memory_rows
    extra = [MemoryCase(tokens=512, rows=4, threads=args.threads)]  # issue 13's scoring measurement
    if args.quick:
        lengths, rows, extra = [64], [2], []
    print(f"perceptrl bench --sections memory: T in {lengths}, rows in {rows} (one process per case)", flush=True)
    results = run_memory_section(lengths, rows, threads=args.threads, extra_cases=extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out_dir / "memory.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out_dir / 'memory.json'}, {out_dir / 'memory.md'}")


def _write(report: dict, out_dir: Path) -> int:
    from perceptrl.bench.report import markdown, plot
    from perceptrl.bench.suite import write_report

    path = write_report(report, out_dir)
    png = plot(report, out_dir / "bench.png")
    (out_dir / "bench.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {path}" + (f", {png}" if png else "") + f", {out_dir / 'bench.md'}")
    return 0
