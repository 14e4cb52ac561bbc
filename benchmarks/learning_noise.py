"""Measure the seed-to-seed spread of the GRPO learning test, to set its margin honestly.

    python benchmarks/learning_noise.py --seeds 0 1 2 --lr 2e-4 --steps 30

For each seed, runs the exact settings of tests/test_learning.py and prints held-out greedy
accuracy before and after, then the mean and spread of the gain. Run once with the real
learning rate and once with a learning rate of zero-like size (e.g. --lr 1e-12) to see the
noise floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from perceptrl.config import load_config  # noqa: E402
from perceptrl.train.rl import train  # noqa: E402
from test_learning import SETTINGS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. train.prompts_per_step=16")
    args = parser.parse_args()
    gains = []
    for seed in args.seeds:
        extra = [f"train.seed={seed}", *args.overrides]
        if args.lr is not None:
            extra.append(f"train.lr={args.lr}")
        if args.steps is not None:
            extra.append(f"train.max_steps={args.steps}")
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config("recipes/grpo.yaml", SETTINGS + extra + [f"train.output_dir={tmp}"])
            result = train(config)
        gain = result.after["accuracy"] - result.before["accuracy"]
        gains.append(gain)
        print(json.dumps({"seed": seed, "before": result.before["accuracy"], "after": result.after["accuracy"],
                          "gain": gain}), flush=True)
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(json.dumps({"mean_gain": statistics.mean(gains), "stdev_gain": spread, "min_gain": min(gains)}))


if __name__ == "__main__":
    main()
