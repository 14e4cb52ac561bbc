"""GRPO learns: the update moves the policy towards what the reward pays for.

Two checks on the shipped warm start:
- with a reward that pays only for the answer "0" on counting prompts, a short run raises the
  rate of "0" answers sampled on fresh prompts well beyond its seed-to-seed noise (a sign error
  in the advantage or the surrogate, or a no-op update, fails this);
- the real-reward run keeps held-out greedy accuracy (measured gains there are within noise at
  this budget; see the issue note and benchmarks/learning_noise.py).
"""

import json

import torch

import perceptrl.train.rl as rl
from perceptrl.config import load_config
from perceptrl.rewards import get_template

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
