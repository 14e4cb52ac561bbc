"""Command line: ``perceptrl sft | train | eval | compare | bench | demo``.

Every training command takes an optional YAML config and dotted overrides::

    perceptrl train recipes/grpo.yaml train.max_steps=20 train.lr=1e-5
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

from perceptrl.config import ConfigError, load_config


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config or recipe (e.g. recipes/grpo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, build the model without weights and print the plan (steps, tokens, "
                             "parameters, GPU memory on 1-8 GPUs); train nothing")


def _dry_run(config, command: str, args) -> int:
    from perceptrl.train.dry_run import dry_run

    dry_run(config, command, _split_config(args)[0] or "")
    return 0


def _split_config(args) -> tuple[str | None, list[str]]:
    """Allow ``perceptrl train train.max_steps=3`` without a config file, and a bare recipe name
    (``perceptrl train grpo``) for a shipped recipe, as ``perceptrl compare`` takes it."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    if config is not None and not Path(config).exists() and Path(config).suffix not in (".yaml", ".yml"):
        from perceptrl.config import recipe_path, recipes_dir

        try:
            config = str(recipe_path(config))
        except FileNotFoundError:
            shipped = recipes_dir()
            known = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml"))) if shipped.is_dir() else "none found"
            raise ConfigError(f"{config}: no such config file or recipe name (recipes: {known})") from None
    return config, overrides


def cmd_sft(args) -> int:
    from perceptrl.train.sft import sft

    config = load_config(*_split_config(args))
    if args.dry_run:
        return _dry_run(config, "sft", args)
    result = sft(config)
    print_before_after("SFT", result.before, result.after, result.output_dir)
    return 0


def cmd_train(args) -> int:
    from perceptrl.train.rl import train

    config = load_config(*_split_config(args))
    if args.dry_run:
        return _dry_run(config, "train", args)
    result = train(config)
    if result.is_main:  # one report from a multi-process run
        print_before_after(config.recipe, result.before, result.after, result.output_dir)
        if result.layout != "1 process":
            print(f"processes: {result.layout}")
    return 0


def cmd_demo(args) -> int:
    from perceptrl.demo import run_demo

    run_demo(args.output_dir, quick=args.quick)
    return 0


def print_before_after(name: str, before: dict, after: dict, output_dir) -> None:
    keys = [k for k in after if k.startswith("accuracy")]
    print(f"\n{name}: held-out greedy accuracy (before -> after)")
    for key in keys:
        print(f"  {key:<40} {before.get(key, float('nan')):.3f} -> {after[key]:.3f}")
    print(f"outputs: {output_dir}")
    summary, text = Path(output_dir) / "summary.json", json.dumps({"before": before, "after": after}, indent=2)
    if not summary.is_file() or summary.read_text() != text:  # a finished run reported again is left as it was
        summary.write_text(text)


# Modules that add their own subcommands: each has ``register(subparsers)``.
COMMAND_MODULES = (
    "perceptrl.eval.commands",  # eval, compare
    "perceptrl.bench.commands",  # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceptrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sft", help="supervised warm start on reference answers")
    _config_args(p)
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("train", help="RL training with a recipe")
    _config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="GRPO, PAPO, NoisyRollout, NoisyGRPO and DUPL from the shipped warm start; prints the comparison")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.set_defaults(func=cmd_demo)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


# Errors about the user's input (config, data, files, checkpoints) and a stopped run: printed as one
# line ``perceptrl: <kind>: <message>`` with exit code 2 (3 for diverged training), no traceback.
# Anything else is a bug and keeps its traceback. Types are looked up in modules already imported,
# so that the CLI does not import the data or training stack just to catch their errors.
USER_ERRORS = (
    ("perceptrl.config", "ConfigError", "config error", 2),
    ("perceptrl.data.files", "DataError", "data error", 2),
    ("perceptrl.data.images", "ImageError", "data error", 2),
    ("perceptrl.models.loading", "ModelError", "model error", 2),
    ("perceptrl.train.run_plan", "RunDirError", "output folder", 2),
    ("perceptrl.train.output_lock", "FolderInUse", "output folder", 2),
    ("perceptrl.train.checkpoint", "DiskFullError", "disk full", 2),
    ("perceptrl.train.checkpoint", "CheckpointError", "checkpoint error", 2),
    ("perceptrl.train.rl", "TrainingDiverged", "training stopped", 3),
)
# OS errors about the machine rather than perceptrl: a full disk or quota, a read-only file system.
OS_ERRORS = {28: "disk full", 122: "disk full", 30: "read-only file system"}


def user_error(err: BaseException) -> tuple[str, int] | None:
    """``(kind, exit code)`` if ``err`` is about the user's input rather than a bug, else None."""
    for module, name, kind, code in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return kind, code
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return "", 2
    if isinstance(err, OSError) and err.errno in OS_ERRORS:
        return OS_ERRORS[err.errno], 2
    return None


def print_error(err: BaseException, kind: str = "") -> None:
    """One line on stderr: ``perceptrl: [kind: ]message`` (a multi-line message is joined with ' | ')."""
    message = " | ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    print(f"perceptrl: {kind + ': ' if kind else ''}{message}", file=sys.stderr, flush=True)


def contain_caches() -> None:
    """Keep library caches out of the home folder: nothing is written outside ``train.output_dir``
    and the system temporary folder. ``datasets`` converts parquet files into an Arrow cache
    (``~/.cache/huggingface/datasets`` by default) and matplotlib writes its font cache to
    ``~/.config/matplotlib``; unless the user chose a location (``HF_DATASETS_CACHE`` / ``HF_HOME``,
    ``MPLCONFIGDIR``), they go to ``<tmp>/perceptrl-<uid>/``. Must run before those libraries load."""
    root = Path(tempfile.gettempdir()) / f"perceptrl-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    if not os.environ.get("HF_DATASETS_CACHE") and not os.environ.get("HF_HOME"):
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf-datasets")
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = str(root / "matplotlib")


def quiet_libraries() -> None:
    """A run's console shows perceptrl's progress and results. DeepSpeed, when installed, is imported
    by accelerate on every model save and logs "Setting accelerator to CPU" on a machine without a
    GPU; that one line is dropped (its other messages are kept)."""
    import logging

    logger = logging.getLogger("DeepSpeed")
    if not any(getattr(f, "perceptrl", False) for f in logger.filters):  # once per process
        notice = logging.Filter()
        notice.filter = lambda record: not str(record.msg).startswith("Setting accelerator to CPU")
        notice.perceptrl = True
        logger.addFilter(notice)


def main(argv: list[str] | None = None) -> int:
    contain_caches()
    quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    from perceptrl.train.command import set_command

    args = build_parser().parse_args(argv)
    restore = set_command(argv)  # run.json and the model card say which command made a run
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print_error(KeyboardInterrupt("interrupted (a run with train.save_steps resumes from its last "
                                      "checkpoint when started again)"))
        return 130
    except Exception as err:  # noqa: BLE001 - user errors get one line; bugs keep their traceback
        found = user_error(err)
        if found is None:
            raise
        kind, code = found
        print_error(err, kind)
        return code
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
