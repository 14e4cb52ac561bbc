"""Command line: ``perceptrl sft | train | demo``.

Every training command takes an optional YAML config and dotted overrides::

    perceptrl train recipes/grpo.yaml train.max_steps=20 train.lr=5e-5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from perceptrl.config import ConfigError, load_config


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config or recipe (e.g. recipes/grpo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5")


def _split_config(args) -> tuple[str | None, list[str]]:
    """Allow ``perceptrl train train.max_steps=3`` without a config file."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    return config, overrides


def cmd_sft(args) -> int:
    from perceptrl.train.sft import sft

    config = load_config(*_split_config(args))
    result = sft(config)
    print_before_after("SFT", result.before, result.after, result.output_dir)
    return 0


def cmd_train(args) -> int:
    from perceptrl.train.rl import train

    config = load_config(*_split_config(args))
    result = train(config)
    print_before_after(config.recipe, result.before, result.after, result.output_dir)
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
    (Path(output_dir) / "summary.json").write_text(json.dumps({"before": before, "after": after}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceptrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sft", help="supervised warm start on reference answers")
    _config_args(p)
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("train", help="RL training with a recipe")
    _config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="warm start then GRPO on the built-in task; prints accuracy before and after")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"perceptrl: config error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"perceptrl: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
