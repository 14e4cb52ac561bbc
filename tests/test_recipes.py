"""Every shipped recipe trains end to end on the tiny model and logs its method's signals.

The random tiny model never answers correctly, so every group would have all-equal rewards (zero
advantages, and DAPO would drop every group). These runs therefore score completions with a
deterministic stand-in reward (a hash of the text) that gives mixed groups; the real reward is
exercised by the CLI smoke test.
"""

import copy
import json
import math
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from perceptrl.config import load_config
from perceptrl.models.policy import Policy
from perceptrl.train import rl

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["train.max_steps=3", "data.val_per_family=4", "train.prompts_per_step=2", "rollout.max_new_tokens=12",
         "rollout.n=4", "train.progress=false", "train.save_final=false",
         "train.resume=none", "filters.max_tries=3"]

COMMON = {"loss", "grad_norm", "entropy", "clip_frac_high", "reward", "accuracy"}
SIGNALS = {
    "grpo": set(),
    "dr_grpo": set(),
    "dapo": {"dapo/rounds", "dapo/groups_dropped", "dapo/shortfall", "dapo/prompts_kept"},
    "papo_g": {"papo/kl_prcp", "papo/entropy", "papo/masked_entropy", "kl_ref"},
    "papo_d": {"papo/kl_prcp", "papo/entropy", "papo/masked_entropy", "dapo/rounds", "dapo/groups_dropped"},
    "noisy_rollout": {"noisy_rollout/eta", "noisy_rollout/t"},
    "noisy_grpo": {"noisy_grpo/kalman_gain", "noisy_grpo/noise_level_mean", "kl_ref"},
    "dupl": {"dupl/u_per", "dupl/u_out", "dupl/noisy_fraction", "dupl/p_noi"},
    "vogue": {"dupl/u_per", "dupl/u_out", "dupl/noisy_fraction", "dupl/p_noi"},
    "dupl_released": {"dupl/u_out", "dupl/noisy_fraction", "dupl/p_noi"},
    "dupl_no_u_per": {"dupl/u_out", "dupl/noisy_fraction", "dupl/p_noi"},
    "dupl_no_u_out": {"dupl/u_per", "dupl/noisy_fraction", "dupl/p_noi"},
    "dupl_dapo": {"dupl/u_per", "dupl/u_out", "dupl/noisy_fraction", "dapo/rounds", "dapo/groups_dropped"},
    "papo_noisy_rollout": {"papo/kl_prcp", "papo/entropy", "papo/masked_entropy", "noisy_rollout/eta", "noisy_rollout/t"},
    "vppo": {"token_signal/mean", "token_select/fraction", "token_scale/factor_mean", "dapo/rounds"},
    "pgpo": {"token_signal/mean", "token_scale/factor_mean", "dapo/rounds"},
    "tor": {"token_signal/mean", "token_select/fraction", "kl_ref"},
    "vepo": {"token_signal/mean", "token_signal/jsd", "token_select/fraction"},
    "dvrp": {"dvrp/robustness_kl", "dvrp/t", "papo/kl_prcp"},
    "gspo": {"kl_ref"},
    "cispo": {"kl_ref"},
    "rloo": {"kl_ref"},
}


class HashReward:
    """Deterministic stand-in reward with mixed groups: accuracy from a hash of the completion."""

    def __init__(self, template, accuracy_weight=0.9, format_weight=0.1, **_):
        self.accuracy_weight, self.format_weight = accuracy_weight, format_weight

    def __call__(self, completions, samples):
        h = [zlib.crc32(c.encode()) for c in completions]
        acc = [float(x % 3 == 0) for x in h]
        fmt = [float(x % 2 == 0) for x in h]
        reward = [self.accuracy_weight * a + self.format_weight * f for a, f in zip(acc, fmt)]
        return {"reward": reward, "accuracy": acc, "format": fmt}


def test_every_recipe_file_is_covered():
    shipped = {p.stem for p in (ROOT / "recipes").glob("*.yaml")} - {"sft", "warmstart"}
    assert shipped <= set(SIGNALS), shipped - set(SIGNALS)


@pytest.fixture
def fresh_policy(tiny):
    """A copy of the session's tiny model (what load_policy builds for model.path: tiny, seed 0)."""
    model, processor = tiny
    return Policy(copy.deepcopy(model), processor)


def _train(name, tmp_path, monkeypatch, policy, extra=()):
    monkeypatch.setattr(rl, "RewardFunction", HashReward)
    config = load_config(ROOT / "recipes" / f"{name}.yaml", [*SMALL, f"train.output_dir={tmp_path / name}", *extra])
    before = [p.detach().clone() for p in policy.model.parameters()]
    result = rl.train(config, policy=policy)
    changed = any(not torch.equal(b, p) for b, p in zip(before, policy.model.parameters()))
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    return result, changed, steps


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_recipe_trains_three_steps(name, tmp_path, monkeypatch, fresh_policy):
    result, changed, steps = _train(name, tmp_path, monkeypatch, fresh_policy)
    assert len(steps) == 3 and changed
    for step in steps:
        assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])
    logged = set().union(*steps)
    assert COMMON | SIGNALS[name] <= logged, (COMMON | SIGNALS[name]) - logged
    if name in ("dupl", "vogue", "dupl_dapo"):
        first = steps[0]
        assert first["dupl/p_noi"] == pytest.approx(2 / 3)  # p_noi(s) = 1 - s / S at s = 1 (counted from 1), S = 3
    if name == "noisy_rollout":
        assert [s["noisy_rollout/t"] for s in steps] == [500.0, 500.0, 500.0]  # eta = 1 long before s_mid


def test_dupl_released_variant_trains(tmp_path, monkeypatch, fresh_policy):
    _, changed, steps = _train("dupl", tmp_path, monkeypatch, fresh_policy,
                               ["dupl.variant=released", "dupl.sigma=0.2", "dupl.view_per_rollout=true",
                                "dupl.branch_schedule=constant", "dupl.branch_prob=1.0"])
    assert changed and all(math.isfinite(s["loss"]) for s in steps)
    assert steps[0]["dupl/noisy_fraction"] == 1.0 and "dupl/u_per" in steps[0]  # p_noi = 1: the noisy branch
    assert {s["dupl/noisy_fraction"] for s in steps} <= {0.0, 1.0}  # one draw per step


def test_cli_trains_vogue_alias(tmp_path):
    exe = shutil.which("perceptrl", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "perceptrl.cli"]
    out = tmp_path / "vogue"
    proc = subprocess.run(
        [*cmd, "train", str(ROOT / "recipes" / "vogue.yaml"), *SMALL, f"train.output_dir={out}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all("dupl/u_out" in s for s in steps)
