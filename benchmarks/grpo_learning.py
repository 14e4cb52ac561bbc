"""Does GRPO learn on the built-in benchmark? Held-out avg@8 / pass@8 / greedy, real reward vs placebo.

    python benchmarks/grpo_learning.py --seeds 0 1 2 3 4 --steps 200      # the issue-15 measurement
    python benchmarks/grpo_learning.py --seeds 0 --eval-every 100 --controls real  # one learning curve
    python benchmarks/grpo_learning.py --lr 5e-5 --steps 60 --val 32  # the setting of tests/test_learning.py
    python benchmarks/grpo_learning.py --update rft ...      # supervised on the policy's correct samples
    python benchmarks/grpo_learning.py --freeze vision ...   # vision tower and merger frozen

For each seed and each control (``--controls``, default ``real placebo``): GRPO (recipes/grpo.yaml)
from the shipped warm start on the benchmark (``perceptrl.demo.BENCHMARK``: its families, 112 px,
``boxed``) with ``--prompts`` x ``--n`` completions x 32 new tokens per step, one torch thread, and the
recipe's update and learning rate as they are (recipes/grpo.yaml: lr 2e-5, PPO mini-batches of 2 prompts, so 4 optimizer steps per
rollout step of 8 prompts, ratio clipping 0.2 / 0.3 with dual clip 3, k3 KL 0.01). At
the start, every ``--eval-every`` steps and at the end, the held-out set (``--val`` items per
family, the suite's fixed test items) is evaluated as ``perceptrl eval`` does
(``perceptrl.eval.runner``): greedy, ``--k`` samples per item at T = 1 (avg@k, unbiased pass@k,
sampling seeded by ``--eval-seed``, so every run's "before" is identical), and the perception probe
(greedy with the image masked / blanked). Prints one JSON line per run, then the summary: per
control the gain (after - before) with its 95% interval over seeds, and real minus placebo paired
over seeds. ``--output`` appends everything as JSON lines.

Controls:
- ``real``: the verifier reward (0.9 accuracy + 0.1 format);
- ``placebo``: a reward independent of correctness with the real one's sparsity (each completion
  paid 1 with probability equal to the batch's real accuracy, at least 0.02): the same kind of update,
  nothing to learn. A gain that the placebo also shows is not learning.

``--update rft`` replaces the advantage by 1 for a correct completion and 0 otherwise (rejection
sampling fine-tuning on the policy's own correct samples: the reference for what the data allows).

For the ``shortcut`` family (a colour word predicts the answer in training only) the summary adds
held-out accuracy, accuracy with the image blanked, their gap, and accuracy on the items where the
cue is wrong (``meta["cue_holds"]`` false).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import perceptrl.train.rl as rl
from perceptrl.config import load_config
from perceptrl.demo import BENCHMARK, BLANK_FILL
from perceptrl.train.heldout import PolicyGenerator
from perceptrl.eval.runner import EvalSettings, run_evaluation
from perceptrl.eval.stats import mean_ci, paired_difference
from perceptrl.models.loading import load_policy
from perceptrl.models.lora import VISION_PARTS
from perceptrl.rewards import RewardFunction

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = ("avg@8", "pass@8", "accuracy")


class PlaceboReward:
    """The real reward's metrics, but a training reward drawn independently of correctness: each
    completion is paid 1 with probability equal to the batch's real accuracy (at least 0.02)."""

    def __init__(self, *args, **kwargs):
        self.real = RewardFunction(*args, **kwargs)
        self.rng = random.Random(1234)

    def __getattr__(self, name):  # template, weights: those of the real reward
        if name == "real":
            raise AttributeError(name)
        return getattr(self.real, name)

    def __call__(self, completions, samples):
        out = dict(self.real(completions, samples))
        rate = max(0.02, sum(out["accuracy"]) / len(completions))
        out["reward"] = [float(self.rng.random() < rate) for _ in completions]
        return out


def rft_estimator(rollout, step):
    """Rejection-sampling fine-tuning as an advantage: 1 for a correct completion, else 0."""
    return (rollout.scores["accuracy"] > 0.5).float()


def shortcut_stats(samples, records) -> dict:
    """Held-out accuracy on ``shortcut``, with the image blanked, the gap, and on cue-breaking items."""
    rows = [(s, r) for s, r in zip(samples, records) if s.family == "shortcut"]
    if not rows:
        return {}
    clean = [float(r["greedy"]["correct"]) for _, r in rows]
    blank = [float(r["blank"]["correct"]) for _, r in rows]
    broken = [float(r["greedy"]["correct"]) for s, r in rows if not s.meta["cue_holds"]]
    follows = [float(r["greedy"]["extracted"] == s.meta["cue"]) for s, r in rows]
    return {"shortcut/accuracy": statistics.mean(clean), "shortcut/blank": statistics.mean(blank),
            "shortcut/gap": statistics.mean(clean) - statistics.mean(blank),
            "shortcut/accuracy_cue_wrong": statistics.mean(broken) if broken else None,
            "shortcut/follows_cue": statistics.mean(follows)}


def held_out(policy, samples, template, reward_fn, max_new_tokens, k: int, seed: int) -> dict:
    """``perceptrl eval``'s numbers on ``samples``: flat metrics plus the shortcut family's."""
    settings = EvalSettings(k=k, seed=seed, probe=True, temperature=1.0, max_new_tokens=max_new_tokens,
                            blank_fill=BLANK_FILL)
    generator = PolicyGenerator(policy, template, max_new_tokens, batch_size=64, temperature=1.0)
    with torch.random.fork_rng():
        result = run_evaluation(samples, generator, reward_fn, settings)
    metrics = {key: value for key, value in result.metrics.items() if value is not None}
    metrics.update({k_: v for k_, v in shortcut_stats(samples, result.records).items() if v is not None})
    return metrics


def freeze(policy, what: str) -> None:
    if what == "vision":
        for name, module in policy.model.named_modules():
            if name.split(".")[-1] in VISION_PARTS:
                module.requires_grad_(False)
    elif what != "none":
        raise SystemExit(f"--freeze: unknown part {what!r} (none | vision)")


def run(args, seed: int, control: str, out_dir: str) -> dict:
    lr = [] if args.lr is None else [f"train.lr={args.lr}"]  # default: the recipe's own
    overrides = [*BENCHMARK, f"model.path={args.model}", f"train.seed={seed}", *lr,
                 f"train.max_steps={args.steps}", f"data.val_per_family={args.val}",
                 f"data.rollout_batch_size={args.prompts}", f"rollout.n={args.n}", "rollout.max_new_tokens=32",
                 f"train.eval_every={args.eval_every}", f"train.output_dir={out_dir}", "train.progress=false",
                 "train.save_final=false", "train.num_threads=1", *args.overrides]
    config = load_config(str(args.recipe), overrides)
    torch.manual_seed(seed)
    policy = load_policy(config.model, config.data.system_prompt)
    freeze(policy, args.freeze)
    evals: list[dict] = []

    def evaluate(pol, samples, template, reward_fn, max_new_tokens, batch_size=64):  # rl.train's evaluation
        evals.append(held_out(pol, samples, template, reward_fn, max_new_tokens, args.k, args.eval_seed))
        return evals[-1]

    saved = rl.evaluate_greedy, rl.RewardFunction, rl.build_recipe
    rl.evaluate_greedy = evaluate
    if control == "placebo":
        rl.RewardFunction = PlaceboReward
    if args.update == "rft":
        def build(cfg, _build=saved[2]):
            recipe = _build(cfg)
            recipe.estimator = rft_estimator
            return recipe
        rl.build_recipe = build
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    try:
        rl.train(config, policy=policy)
    finally:
        rl.evaluate_greedy, rl.RewardFunction, rl.build_recipe = saved
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    acc = [r["accuracy"] for r in rows if "reward" in r]
    q = max(1, len(acc) // 4)
    steps = [0, *(range(args.eval_every, args.steps, args.eval_every) if args.eval_every else []), args.steps]
    return {
        "seed": seed, "control": control, "update": args.update, "freeze": args.freeze, "lr": config.train.lr,
        "steps": args.steps, "prompts": args.prompts, "n": args.n, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
        "train_accuracy_quarters": [round(statistics.mean(acc[i:i + q]), 3) for i in range(0, len(acc), q)],
        "curve": [{"step": s, **{k: round(e[k], 3) for k in HEADLINE}} for s, e in zip(steps, evals)],
        "before": {k: round(v, 4) for k, v in evals[0].items()},
        "after": {k: round(v, 4) for k, v in evals[-1].items()},
    }


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    keys = [*HEADLINE, "shortcut/accuracy", "shortcut/blank", "shortcut/gap", "shortcut/accuracy_cue_wrong"]
    by_control: dict[str, dict[int, dict]] = {}
    for r in runs:
        by_control.setdefault(r["control"], {})[r["seed"]] = r
    for control, seeds in by_control.items():
        block = {}
        for key in keys:
            if not all(key in r["after"] and key in r["before"] for r in seeds.values()):
                continue
            gains = {s: r["after"][key] - r["before"][key] for s, r in seeds.items()}
            ci = mean_ci(list(gains.values())) if len(gains) > 1 else None
            block[key] = {
                "before": next(iter(seeds.values()))["before"][key],
                "after_per_seed": {s: r["after"][key] for s, r in seeds.items()},
                "gain_mean": round(statistics.mean(gains.values()), 4),
                "gain_ci95": [round(ci.low, 4), round(ci.high, 4)] if ci else None,
            }
        block["cpu_s"] = [r["cpu_s"] for r in seeds.values()]
        out[control] = block
    if "real" in by_control and "placebo" in by_control:
        real, placebo = by_control["real"], by_control["placebo"]
        out["real_minus_placebo"] = {}
        for key in HEADLINE:
            d = paired_difference({s: r["after"][key] for s, r in real.items()},
                                  {s: r["after"][key] for s, r in placebo.items()})
            out["real_minus_placebo"][key] = {"mean": round(d.mean, 4), "ci95": [round(d.low, 4), round(d.high, 4)],
                                              "n": d.n}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="warmstart")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "grpo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--controls", nargs="+", choices=["real", "placebo"], default=["real", "placebo"])
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's train.lr")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--val", type=int, default=64, help="held-out items per family")
    parser.add_argument("--k", type=int, default=8, help="samples per held-out item for avg@k / pass@k")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--update", choices=["grpo", "rft"], default="grpo")
    parser.add_argument("--freeze", default="none", help="none | vision")
    parser.add_argument("--output", help="append per-run JSON lines and the summary to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.families=[count]")
    args = parser.parse_args()
    if args.k != 8:
        global HEADLINE
        HEADLINE = (f"avg@{args.k}", f"pass@{args.k}", "accuracy")
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        for control in args.controls:
            with tempfile.TemporaryDirectory() as tmp:
                result = run(args, seed, control, tmp)
            runs.append(result)
            brief = {k: v for k, v in result.items() if k not in ("before", "after")}
            print(json.dumps(brief), flush=True)
            if args.output:
                with open(args.output, "a") as f:
                    f.write(json.dumps({"argv": sys.argv[1:], **result}) + "\n")
    summary = summarize(runs)
    print(json.dumps(summary, indent=1), flush=True)
    if args.output:
        with open(args.output, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "summary": summary}) + "\n")


if __name__ == "__main__":
    main()
