"""Subcommands of this package (registered by ``perceptrl.cli``): ``perceptrl eval`` and ``perceptrl compare``
(the latter defined in :mod:`perceptrl.eval.compare`).

::

    perceptrl eval --model runs/grpo/final                      # the run's own data settings
    perceptrl eval runs/grpo/final data.families=[count,pope,text] --k 8 --temperature 1.0
    perceptrl eval recipes/grpo.yaml model.path=runs/grpo/final --n-per-family 200
    perceptrl eval --model tiny data.val_files=data/val.jsonl --no-probe

The first positional argument is a YAML config, a model folder (or a run folder holding
``final/``), or ``tiny``; the rest are dotted config overrides. Options and overrides may be
mixed in any order. With a model folder and no config, the ``config.yaml`` of the run that saved
it (in the folder or its parent) supplies the data settings and prompt template
(``--run-config none`` to start from the defaults instead).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

__all__ = ["register", "cmd_eval"]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (or run folder with final/), or 'tiny'; sets model.path")
    parser.add_argument("--output-dir", help="where eval.json, eval.md and predictions.jsonl go "
                        "(default: <run>/eval/<model>-<data> next to the model, runs/eval/... for tiny)")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt for avg@k and pass@k (0 = greedy only)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for avg@k / pass@k")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--pass-k", type=_int_list, default=None, metavar="1,2,4",
                        help="k values for pass@k (default: 1, 2, 4, ... up to --k)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: rollout.max_new_tokens")
    parser.add_argument("--n-per-family", type=int, default=None,
                        help="items per family (suite default: data.val_per_family; files default: all rows)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="prompts per generate call (the sampled pass generates k completions for each)")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling and the probe's masks")
    parser.add_argument("--no-probe", action="store_true", help="skip the masked / blank image probe")
    parser.add_argument("--mask-p", type=float, default=0.6, help="probe: PAPO patch-masking probability")
    parser.add_argument("--blank-fill", type=float, default=0.0, help="probe: grey level of the blank image (0-1)")
    parser.add_argument("--run-config", default="auto",
                        help="with a model folder: 'auto' (its run's config.yaml), 'none', or a YAML path")
    parser.add_argument("--quiet", action="store_true", help="print only the output folder")


def _description() -> str:
    examples, rest = __doc__.split("::", 1)[1].strip("\n").split("\n\n", 1)
    return (textwrap.dedent(examples) + "\n\n" + rest).replace("``", "`").strip()


def register(subparsers) -> None:
    """Add this package's subcommands to the ``perceptrl`` parser."""
    p = subparsers.add_parser(
        "eval", help="greedy accuracy, avg@k, pass@k and a perception probe of a model",
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(p)
    # Everything from the first positional on (config, overrides, and options after them) is
    # re-parsed in cmd_eval, so that options may follow the overrides.
    p.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG_OR_MODEL [key=value ...]",
                   help="a YAML config, a model folder, a run folder or 'tiny'; then dotted overrides")
    p.set_defaults(func=cmd_eval)

    from perceptrl.eval.compare import add_parser as add_compare

    add_compare(subparsers)


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="perceptrl eval", argument_default=argparse.SUPPRESS)
    _add_options(parser)
    for action in parser._actions:  # only what is given on the command line overrides
        action.default = argparse.SUPPRESS
    parser.add_argument("positionals", nargs="*")
    later = parser.parse_intermixed_args(args.items)
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(later).items():
        setattr(merged, key, value)
    if not hasattr(later, "positionals"):
        merged.positionals = []
    return merged


def resolve_config(positionals: list[str], model: str | None, run_config: str = "auto"):
    """``(config, run_config_path)`` from the positional items, ``--model`` and ``--run-config``."""
    from perceptrl.config import ConfigError, load_config
    from perceptrl.eval.pipeline import find_run_config, is_tiny, model_folder

    items = list(positionals)
    config_path = None
    if items and ("=" not in items[0] or Path(items[0]).exists()):
        first = items.pop(0)
        path = Path(first)
        if is_tiny(first) or path.is_dir():
            if model is not None:
                raise ConfigError(f"two models given: '{first}' and --model '{model}'")
            model = first
        elif path.is_file():
            config_path = path
        else:
            raise FileNotFoundError(f"{first}: no such config file or model folder")
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ConfigError(f"unexpected argument(s) {bad}: after the config or model, give key.path=value overrides")
    if model is not None and not is_tiny(model):
        model = str(model_folder(model))
    used = None
    if config_path is not None:
        used = config_path
    elif model is not None and not is_tiny(model) and run_config != "none":
        if run_config == "auto":
            used = find_run_config(model)
        else:
            used = Path(run_config)
            if not used.is_file():
                raise FileNotFoundError(f"--run-config: '{run_config}' not found")
    config = load_config(used, items)
    if model is not None:
        config.model.path = model
    elif not is_tiny(config.model.path) and Path(config.model.path).is_dir():
        config.model.path = str(model_folder(config.model.path))  # a run folder -> its final/
    return config, used


def check_eval_options(args) -> None:
    """Option values that would fail after the model has loaded (or silently mean nothing): refused first."""
    from perceptrl.config import ConfigError

    if args.k < 0:
        raise ConfigError(f"--k {args.k}: must be >= 0")
    if args.pass_k is not None:
        bad = [j for j in args.pass_k if not 1 <= j <= args.k]
        if bad:
            given = ",".join(str(j) for j in args.pass_k)
            raise ConfigError(f"--pass-k {given}: pass@j needs 1 <= j <= --k ({args.k} samples per prompt); "
                              f"{', '.join(str(j) for j in bad)} out of range")
    checks = [
        (args.temperature > 0, f"--temperature {args.temperature}: must be > 0"),
        (0 < args.top_p <= 1, f"--top-p {args.top_p}: must be in (0, 1]"),
        (args.max_new_tokens is None or args.max_new_tokens >= 1, f"--max-new-tokens {args.max_new_tokens}: must be >= 1"),
        (args.n_per_family is None or args.n_per_family >= 1, f"--n-per-family {args.n_per_family}: must be >= 1"),
        (args.batch_size >= 1, f"--batch-size {args.batch_size}: must be >= 1"),
        (0 <= args.mask_p <= 1, f"--mask-p {args.mask_p}: must be in [0, 1]"),
        (0 <= args.blank_fill <= 1, f"--blank-fill {args.blank_fill}: must be in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def cmd_eval(args) -> int:
    from perceptrl.data.files import DataError
    from perceptrl.eval.pipeline import default_output_dir, evaluate_model
    from perceptrl.eval.report import render_markdown, to_json_safe
    from perceptrl.eval.runner import EvalSettings

    args = _reparse(args)
    check_eval_options(args)
    config, used = resolve_config(args.positionals, args.model, args.run_config)
    say = None if args.quiet else (lambda message: print(f"[eval] {message}", file=sys.stderr, flush=True))
    if say and used is not None:
        say(f"config: {used}")
    settings = EvalSettings(
        k=args.k, pass_ks=args.pass_k, seed=args.seed, probe=not args.no_probe, mask_p=args.mask_p,
        blank_fill=args.blank_fill, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )
    try:
        output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(config)
        result = evaluate_model(config, settings, output_dir=output_dir, n_per_family=args.n_per_family,
                                progress=say, run_config=used)
    except DataError as err:
        print(f"perceptrl: data error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(render_markdown(to_json_safe(result.report)))
    print(f"outputs: {output_dir}")
    return 0
