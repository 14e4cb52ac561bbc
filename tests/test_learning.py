"""GRPO learns: the update moves the policy towards what the reward pays for.

- From a miscalibrated warm start (the shipped warm start after 20 supervised steps on counting
  answers that are off by one: held-out greedy accuracy 0.656 -> 0.188), 40 GRPO steps with the
  verifier reward raise held-out greedy accuracy on 128 counting items by +0.29 +- 0.035 (5 seeds,
  min +0.25; benchmarks/learning_noise.py --off-by-one-sft 20); a placebo reward of the same sparsity
  gives +0.09 +- 0.12 (max +0.24: random updates also undo part of a 20-step shift). The test demands
  +0.20 from seed 0 (measured +0.30).

Two checks on the shipped warm start itself:
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

import dataclasses
import json
import random

import torch

import perceptrl.train.rl as rl
import perceptrl.train.sft as sft_module
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


class OffByOne:
    """A data source whose training answers (and rationales) are one more than the true count."""

    def __init__(self, source):
        self.source = source

    def __getattr__(self, name):
        return getattr(self.source, name)

    def train_sample(self, index):
        sample = self.source.train_sample(index)
        n = int(sample.answer)
        rationale = str(sample.meta.get("rationale", "")).replace(f"{n} ", f"{n + 1} ", 1)
        return dataclasses.replace(sample, answer=str(n + 1), meta={**sample.meta, "rationale": rationale})


def miscalibrated_warm_start(out_dir, steps: int = 20, lr: float = 5e-4) -> str:
    """The shipped warm start after ``steps`` supervised steps on off-by-one counting answers; returns
    the saved model folder. Its features still see the count, its answers are shifted: a miscalibration
    a verifier reward can undo, unlike missing perception."""
    build = sft_module.build_source
    sft_module.build_source = lambda *args, **kwargs: OffByOne(build(*args, **kwargs))
    try:
        config = load_config("recipes/warmstart.yaml", [
            "model.path=warmstart", "data.families=[count]", f"train.max_steps={steps}", f"train.lr={lr}",
            "train.warmup_steps=0", "data.val_per_family=2", f"train.output_dir={out_dir}", "train.resume=none",
            "train.progress=false", "train.num_threads=1", "train.eval_every=0"])
        sft_module.sft(config)
    finally:
        sft_module.build_source = build
    return f"{out_dir}/final"


def test_grpo_raises_held_out_accuracy_of_a_miscalibrated_warm_start(tmp_path):
    model = miscalibrated_warm_start(tmp_path / "sft")
    config = load_config("recipes/grpo.yaml", SETTINGS + [
        f"model.path={model}", f"train.output_dir={tmp_path / 'grpo'}", "train.max_steps=40", "train.lr=1e-4",
        "train.seed=0", "data.val_per_family=128", "train.num_threads=1"])
    result = rl.train(config)
    before, after = result.before["accuracy"], result.after["accuracy"]
    # Measured gain +0.29 +- 0.035 over 5 seeds, +0.30 for seed 0 (placebo reward: +0.09 +- 0.12).
    assert after - before >= 0.20, (before, after)
