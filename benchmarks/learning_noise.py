"""Does GRPO raise held-out greedy accuracy beyond seed-to-seed noise? Real reward against a placebo.

    python benchmarks/learning_noise.py --seeds 0 1 2 3 4 --lr 1e-4 --steps 50 "data.families=[arith]"
    python benchmarks/learning_noise.py --placebo --seeds 0 1 2 3 4 --lr 1e-4 --steps 50 "data.families=[arith]"
    python benchmarks/learning_noise.py --off-by-one-sft 20 --seeds 0 1 2 3 4 --lr 1e-4 --steps 40 "data.families=[count]"

For each seed, runs GRPO from the shipped warm start with the settings of tests/test_learning.py
(8 prompts x 8 completions x 32 new tokens; 128 held-out items per family unless overridden) and
prints held-out greedy accuracy before and after, the sampled training accuracy of the first and
last quarter of the run, then the mean and spread of the gain over seeds.

``--placebo`` replaces the reward by one that is independent of correctness: each completion is
paid 1 with probability equal to the step's real accuracy (at least 0.02), so the update has the
same sparsity and size as the real one but nothing to learn. A real-reward gain means learning only
if it stands clear of the placebo's gains; a gain of a no-op update is exactly 0 (greedy decoding,
fixed held-out set), which is not the noise that matters.

``--off-by-one-sft STEPS`` first fine-tunes the warm start for STEPS supervised steps on counting
answers that are one too high (tests/test_learning.py), a miscalibration GRPO can undo.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import perceptrl.train.rl as rl  # noqa: E402
from perceptrl.config import load_config  # noqa: E402
from test_learning import SETTINGS, PlaceboReward, miscalibrated_warm_start  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "grpo.yaml"


def quarter_means(path: Path) -> tuple[float, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    acc = [r["accuracy"] for r in rows if "reward" in r]
    q = max(1, len(acc) // 4)
    return sum(acc[:q]) / q, sum(acc[-q:]) / q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--placebo", action="store_true", help="a reward independent of correctness")
    parser.add_argument("--off-by-one-sft", type=int, default=0, metavar="STEPS",
                        help="start from the warm start after STEPS supervised steps on off-by-one counting answers")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.rollout_batch_size=16")
    args = parser.parse_args()
    if args.placebo:
        rl.RewardFunction = PlaceboReward
    work = tempfile.TemporaryDirectory()
    if args.off_by_one_sft:
        args.overrides.append(f"model.path={miscalibrated_warm_start(Path(work.name) / 'sft', args.off_by_one_sft)}")
    gains = []
    for seed in args.seeds:
        extra = [f"train.seed={seed}", "data.val_per_family=128", "train.num_threads=1", *args.overrides]
        if args.lr is not None:
            extra.append(f"train.lr={args.lr}")
        if args.steps is not None:
            extra.append(f"train.max_steps={args.steps}")
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(str(RECIPE), SETTINGS + extra + [f"train.output_dir={tmp}"])
            result = rl.train(config)
            first, last = quarter_means(Path(tmp) / "metrics.jsonl")
        gain = result.after["accuracy"] - result.before["accuracy"]
        gains.append(gain)
        print(json.dumps({"seed": seed, "placebo": args.placebo, "before": result.before["accuracy"],
                          "after": result.after["accuracy"], "gain": round(gain, 4),
                          "train_accuracy_first_quarter": round(first, 3),
                          "train_accuracy_last_quarter": round(last, 3)}), flush=True)
    work.cleanup()
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(json.dumps({"placebo": args.placebo, "mean_gain": round(statistics.mean(gains), 4),
                      "stdev_gain": round(spread, 4), "min_gain": round(min(gains), 4),
                      "max_gain": round(max(gains), 4)}))


if __name__ == "__main__":
    main()
