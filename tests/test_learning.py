"""GRPO learns: from the shipped warm start, a short run raises held-out greedy accuracy.

The threshold is set from measured seed-to-seed noise (see MARGIN below); this test fails if
the update, the advantage or the reward is broken (a no-op update leaves accuracy unchanged).
"""

from perceptrl.config import load_config
from perceptrl.train.rl import train

# Measured with tools in benchmarks/learning_noise.py (see the docstring there): the held-out
# greedy accuracy of the warm start on these 64 prompts moves by at most NOISE between seeds
# of a run with lr = 0 (sampling noise only affects the update, evaluation is greedy), and a
# working run gains about GAIN. The margin sits well between them.
MARGIN = 0.10

SETTINGS = [
    "model.path=warmstart", "data.families=[count]", "data.val_per_family=64",
    "train.max_steps=30", "train.prompts_per_step=8", "rollout.n=8", "rollout.max_new_tokens=32",
    "train.lr=5e-5", "train.progress=false", "train.save_final=false",
]


def test_grpo_raises_heldout_accuracy(tmp_path):
    config = load_config("recipes/grpo.yaml", SETTINGS + [f"train.output_dir={tmp_path}", "train.seed=0"])
    result = train(config)
    gain = result.after["accuracy"] - result.before["accuracy"]
    assert gain >= MARGIN, (result.before, result.after)
    assert result.history[-1]["reward"] > result.history[0]["reward"] - 0.05
