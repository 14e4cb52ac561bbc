"""The token-level and baseline recipes train 2 steps from the CLI and their pieces act.

``perceptrl train recipes/<name>.yaml`` runs in-process (``cli.main``) on the shipped warm start with
small settings. The warm start rarely finishes an answer in 16 tokens, so the reward is the
deterministic hash reward of tests/test_recipes.py (mixed groups, so advantages, and with them the
token weights, are not all zero). Each run must log its method's signals with the values the method
implies (VPPO keeps ~40% of the tokens and its completion factors average 1, PGPO's weights average 1
per completion, ...).
"""

import json
import math
from pathlib import Path

import pytest

from perceptrl import cli
from perceptrl.train import rl
from test_recipes import HashReward  # the stand-in reward with mixed groups

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["model.path=warmstart", "train.max_steps=2", "data.rollout_batch_size=4", "rollout.n=4",
         "rollout.max_new_tokens=16", "data.val_per_family=2", "train.progress=false", "train.save_final=false",
         "train.resume=none", "filters.max_tries=2"]
SIGNALS = {
    "vppo": {"token_signal/mean", "token_select/fraction", "token_scale/factor_mean", "sampled_entropy"},
    "pgpo": {"token_signal/mean", "token_scale/factor_mean", "token_scale/factor_max"},
    "tor": {"token_signal/mean", "token_select/fraction", "token_select/weight_mean"},
    "vepo": {"token_signal/mean", "token_signal/jsd", "token_signal/entropy_gap", "token_select/fraction"},
    "dvrp": {"dvrp/robustness_kl", "dvrp/noised_entropy", "dvrp/t", "papo/kl_prcp", "papo/masked_entropy"},
    "gspo": {"clip_frac_high", "ratio_mean"},
    "cispo": {"clip_frac_high", "ratio_mean"},
    "rloo": {"clip_frac_high", "ratio_mean", "kl_ref"},
}



@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_recipe_trains_two_steps_from_the_cli(name, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "RewardFunction", HashReward)
    out = tmp_path / name
    code = cli.main(["train", str(ROOT / "recipes" / f"{name}.yaml"), *SMALL, f"train.output_dir={out}"])
    assert code == 0
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2
    for step in steps:
        assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0
        assert step["update/optimizer_steps"] == 2.0  # 4 prompts in mini-batches of 2 (grpo.yaml)
    logged = set().union(*steps)
    assert SIGNALS[name] <= logged, SIGNALS[name] - logged
    first = steps[0]
    if name == "vppo":  # ceil(0.4 L) of each completion's tokens; factors average 1 over each mini-batch
        assert 0.4 <= first["token_select/fraction"] <= 0.75
        assert first["token_scale/factor_min"] >= 0.9 - 1e-6 and first["token_scale/factor_mean"] == pytest.approx(1, abs=1e-5)
    if name == "pgpo":  # each completion's weights sum to its length
        assert first["token_select/weight_mean"] == pytest.approx(1.0, abs=1e-5)
    if name == "tor":  # at most 30% + 30% of the batch's tokens, weights in {0, 0.5, 1}
        assert 0.3 <= first["token_select/fraction"] <= 0.61 and first["token_select/weight_mean"] < first["token_select/fraction"]
    if name == "vepo":  # ceil(0.2 L) per completion, renormalised to a mean over the selected tokens
        assert 0.2 <= first["token_select/fraction"] <= 0.5
        assert first["token_select/weight_mean"] == pytest.approx(1.0, abs=1e-5)
    if name == "dvrp":
        assert first["dvrp/t"] == 250.0  # 500 sigmoid(10 (0.5 - 1/2)): step 1 of 2
