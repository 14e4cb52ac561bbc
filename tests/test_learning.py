"""GRPO learns on the built-in benchmark: from the shipped warm start, held-out avg@8 at T = 1 rises.

The shipped warm start is right in distribution but badly calibrated (recipes/warmstart.yaml, phase
2: 40% wrong training answers): its greedy answers are as good as its features allow, its answers
sampled at T = 1 are right much less often (held-out avg@8 well below greedy accuracy, pass@8 near 1).
A verifier reward has that gap to teach; a reward that ignores correctness has nothing.

Measured with benchmarks/grpo_learning.py at this test's setting, recipes/grpo.yaml (PPO
mini-batches of 2 prompts: 4 optimizer steps per rollout step) at lr 5e-5, pinned here because it
learns faster in few steps than the recipe's 2e-5 (which is chosen for 100-400 steps), 60 steps of 8 prompts x 8
completions, 32 held-out items per family, 5 seeds, a real reward and a placebo of the same sparsity
that ignores correctness:
    python benchmarks/grpo_learning.py --lr 5e-5 --steps 60 --val 32 --seeds 0 1 2 3 4
(benchmarks/results/issue15_test_setting_minibatch_60steps.jsonl). avg@8 before 0.494; gain with the
real reward +0.069 [95% interval +0.049, +0.088] (per seed +0.047 +0.067 +0.067 +0.070 +0.091, sd
0.016); with the placebo -0.105 [-0.125, -0.085] (per seed -0.105 -0.111 -0.115 -0.077 -0.116).
This test is seed 0 of that run (+0.047, the smallest of the five) and asks for MIN_GAIN = +0.02:
about 3 sd below the real reward's mean, 0.10 above the best placebo seed. It fails with the placebo
reward (every seed lost >= 0.077), with a no-op update (gain exactly 0: same evaluation seed before
and after) and with a sign error (the update then moves away from the right answers). The full
measurement (400 steps, 64 items per family): `docs/LEARNING.md`.
"""

import torch

import perceptrl.train.rl as rl
from perceptrl.config import load_config
from perceptrl.demo import BENCHMARK, K
from perceptrl.train.heldout import PolicyGenerator
from perceptrl.eval.runner import EvalSettings, run_evaluation
from perceptrl.models.loading import load_policy
from perceptrl.rewards import RewardFunction, get_template

STEPS = 60
VAL = 32
# Measured (`python benchmarks/grpo_learning.py --lr 5e-5 --steps 60 --val 32 --seeds 0 1 2 3 4`): real reward
# +0.047..+0.091 (mean +0.069, sd 0.016), placebo -0.077..-0.116; see the module docstring.
MIN_GAIN = 0.02


def avg_at_k(policy, samples, config) -> float:
    template = get_template(config.data.template)
    reward_fn = RewardFunction(config.data.template, config.reward.accuracy_weight, config.reward.format_weight)
    # batch_size 64: the sampling seed is per chunk, so this matches benchmarks/grpo_learning.py exactly
    generator = PolicyGenerator(policy, template, config.rollout.max_new_tokens, batch_size=64, temperature=1.0)
    result = run_evaluation(samples, generator, reward_fn, EvalSettings(k=K, seed=0, probe=False))
    return result.metrics[f"avg@{K}"]


def test_grpo_raises_held_out_avg_at_8_from_the_shipped_warm_start(tmp_path):
    config = load_config("recipes/grpo.yaml", [
        *BENCHMARK, f"data.val_per_family={VAL}", "data.rollout_batch_size=8", "rollout.n=8",
        "rollout.max_new_tokens=32", f"train.max_steps={STEPS}", "train.lr=5e-5", "train.seed=0",  # as measured
        "train.num_threads=1", "train.progress=false", "train.save_final=false", f"train.output_dir={tmp_path}"])
    torch.manual_seed(0)
    policy = load_policy(config.model)
    samples = rl.build_source(config.data, 0).val_samples()
    before = avg_at_k(policy, samples, config)
    rl.train(config, policy=policy)
    after = avg_at_k(policy, samples, config)
    assert after - before >= MIN_GAIN, (before, after)
