"""GRPO learns: the update moves the policy towards what the reward pays for.

Two checks on the shipped warm start:
- with a reward that pays only for the answer "0" on counting prompts, a short run raises the
  rate of "0" answers sampled on fresh prompts well beyond its seed-to-seed noise (a sign error
  in the advantage or the surrogate, or a no-op update, fails this);
- on held-out counting prompts, greedy accuracy after 50 steps with the real verifier reward is far
  above that after 50 steps with a placebo reward of the same sparsity that ignores correctness.
  Measured (benchmarks/learning_noise.py, 3 seeds, 128 held-out items): real 0.656 -> 0.599 +- 0.066,
  placebo 0.656 -> 0.240 +- 0.074. So the verifier's signal carries the run; a short GRPO run
  from this converged warm start does not, however, *raise* held-out greedy accuracy beyond noise
  (see docs/RESULTS.md and the benchmark's docstring).
"""

import json
import random

import torch

import perceptrl.train.rl as rl
from perceptrl.config import load_config
from perceptrl.rewards import RewardFunction, get_template

SETTINGS = [
    "model.path=warmstart", "data.families=[count]", "data.val_per_family=16",
    "train.prompts_per_step=8", "rollout.n=8", "rollout.max_new_tokens=32",
    "train.progress=false", "train.save_final=false",
]


class PaysForZero:
    """Reward 1 for a final answer of 0, whatever the image shows."""

    def __init__(self, template="boxed", *args, **kwargs):
        self.template = get_template(template)

    def __call__(self, completions, samples):
        hits = [float(self.template.extract(c) == "0") for c in completions]
        return {"reward": hits, "accuracy": hits, "format": [float(self.template.format_ok(c)) for c in completions]}


class PlaceboReward:
    """The real reward's metrics, but a training reward drawn independently of correctness: each
    completion is paid 1 with probability equal to the batch's real accuracy (at least 0.02)."""

    def __init__(self, *args, **kwargs):
        self.real = RewardFunction(*args, **kwargs)
        self.rng = random.Random(1234)

    def __call__(self, completions, samples):
        out = dict(self.real(completions, samples))
        rate = max(0.02, sum(out["accuracy"]) / len(completions))
        out["reward"] = [float(self.rng.random() < rate) for _ in completions]
        return out


def zero_rate(rows):
    return sum(r["accuracy"] for r in rows) / len(rows)


def test_grpo_moves_policy_towards_reward(tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "RewardFunction", PaysForZero)
    torch.manual_seed(0)
    config = load_config("recipes/grpo.yaml", SETTINGS + [
        f"train.output_dir={tmp_path}", "train.max_steps=16", "train.lr=3e-4", "train.seed=0"])
    rl.train(config)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    first, last = zero_rate(rows[:4]), zero_rate(rows[-4:])
    # 4 steps x 64 completions: the rate's standard error is about 0.03; demand a jump of 0.25.
    assert last - first >= 0.25, (first, last)


def held_out_after_grpo(tmp_path, name: str) -> tuple[float, float]:
    config = load_config("recipes/grpo.yaml", SETTINGS + [
        f"train.output_dir={tmp_path / name}", "train.max_steps=50", "train.lr=1e-4", "train.seed=0",
        "data.val_per_family=128", "train.num_threads=1"])
    result = rl.train(config)
    return result.before["accuracy"], result.after["accuracy"]


def test_verifier_reward_beats_a_placebo_on_held_out_accuracy(tmp_path, monkeypatch):
    before, real = held_out_after_grpo(tmp_path, "real")
    monkeypatch.setattr(rl, "RewardFunction", PlaceboReward)
    _, placebo = held_out_after_grpo(tmp_path, "placebo")
    # Seed-to-seed spread of either end point is about 0.07 (3 seeds); the measured gap is 0.36.
    assert real - placebo >= 0.15, (before, real, placebo)
    assert real >= before - 0.15, (before, real)  # the real reward does not wreck the warm start
