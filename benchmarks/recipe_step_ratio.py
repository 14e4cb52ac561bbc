"""Seconds per training step of each recipe as a ratio to GRPO, measured in one process.

    python benchmarks/recipe_step_ratio.py --prompts 4 --completions 8 --tokens 32 --steps 4 --rounds 3

Every recipe runs ``--steps`` steps of the real loop (``perceptrl.train.rl.train``) from the same
tiny model, ``--rounds`` times, the recipes interleaved round by round so that a change in machine
load hits all of them alike. The first step of every run is dropped (warm-up); the median of the
rest is reported. Completions are scored by a deterministic hash of their text (mixed groups, as
in a real run: the random tiny model never answers right, so the real reward would make DAPO
regenerate every step); the scoring cost is the same for every recipe.

``--clock cpu`` (default) times steps in CPU seconds of this process (``time.process_time``, by
standing it in for the loop's ``time.perf_counter``), which a busy shared machine disturbs far
less than wall time; run with ``--threads 1`` for the most stable numbers. ``--clock wall`` keeps
wall time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from perceptrl.config import load_config
from perceptrl.models.policy import Policy
from perceptrl.models.tiny import build_tiny
from perceptrl.train import rl

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["grpo", "grpo_kl", "dr_grpo", "dapo", "papo_g", "papo_g_nokl", "papo_d", "noisy_rollout", "noisy_grpo",
           "dupl", "dupl_released", "dupl_released_per_rollout", "vogue", "dupl_dapo", "papo_noisy_rollout"]
VARIANTS = {  # name -> (recipe file, overrides): the released DUPL code, and PAPO-G's cost with and without its KL
    "dupl_released": ("dupl", ["dupl.variant=released", "dupl.sigma=0.2"]),
    "dupl_released_per_rollout": ("dupl", ["dupl.variant=released", "dupl.sigma=0.2", "dupl.view_per_rollout=true"]),
    "grpo_kl": ("grpo", ["algorithm.kl_beta=0.01"]),
    "papo_g_nokl": ("papo_g", ["algorithm.kl_beta=0"]),
}


class HashReward:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, completions, samples):
        h = [zlib.crc32(c.encode()) for c in completions]
        acc = [float(x % 3 == 0) for x in h]
        fmt = [float(x % 2 == 0) for x in h]
        return {"reward": [0.9 * a + 0.1 * f for a, f in zip(acc, fmt)], "accuracy": acc, "format": fmt}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        time.perf_counter = time.process_time  # the loop's step timer now counts this process's CPU time
    rl.RewardFunction = HashReward
    model, processor = build_tiny(seed=0)
    out = Path(tempfile.mkdtemp(prefix="recipe_ratio_"))
    times: dict[str, list[float]] = {name: [] for name in args.recipes}
    for round_ in range(args.rounds):
        for name in args.recipes:
            base, extra = VARIANTS.get(name, (name, []))
            config = load_config(ROOT / "recipes" / f"{base}.yaml", [
                f"train.max_steps={args.steps}", f"data.rollout_batch_size={args.prompts}",
                f"rollout.n={args.completions}", f"rollout.max_new_tokens={args.tokens}",
                "data.val_per_family=1", "train.progress=false", "train.save_final=false", "train.resume=none",
                f"train.output_dir={out / f'{name}-{round_}'}", f"train.seed={round_}", *extra,
            ])
            result = rl.train(config, policy=Policy(copy.deepcopy(model), processor))
            times[name] += [h["time/step"] for h in result.history[1:]]
            print(f"round {round_} {name}: {[round(h['time/step'], 3) for h in result.history]}", file=sys.stderr)
    grpo = statistics.median(times["grpo"]) if "grpo" in times else float("nan")
    print(f"{args.prompts} prompts x {args.completions} completions x {args.tokens} tokens, "
          f"{args.steps - 1} timed steps x {args.rounds} rounds, {args.threads} threads, {args.clock} seconds")
    print(f"{'recipe':<20} {'median s/step':>14} {'ratio to grpo':>14}")
    for name in args.recipes:
        med = statistics.median(times[name])
        print(f"{name:<20} {med:>14.3f} {med / grpo:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
