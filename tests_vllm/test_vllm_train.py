"""Training with ``rollout.engine: vllm``: GRPO and NoisyRollout take their steps, the mismatch between
vLLM's and the training model's log-probs is logged every step (tiny on the warm start, whose vision
special tokens carry ~1e-5 of probability), TIS weights near 1; and the errors that name their fix."""

import copy
import json

import pytest
import torch

from perceptrl.config import load_config
from perceptrl.models.policy import Policy
from perceptrl.train.rl import train

SETTINGS = ["model.path=warmstart", "rollout.engine=vllm", "train.max_steps=3", "train.prompts_per_step=2",
            "rollout.n=4", "rollout.max_new_tokens=16", "data.val_per_family=2", "train.progress=false",
            "train.save_final=false", "model.dtype=float32",
            # The mismatch counts the top-p cut and the suppressed vision tokens' probability (docs/SCALING.md):
            # no cut, and a learning rate small enough that the warm start keeps that probability ~1e-5.
            "rollout.top_p=1.0", "train.lr=1e-4"]


def run(warm, tmp_path, recipe, extra=()):
    policy = Policy(copy.deepcopy(warm.model), warm.processor)
    config = load_config(f"recipes/{recipe}.yaml", SETTINGS + [f"train.output_dir={tmp_path}"] + list(extra))
    result = train(config, policy=policy)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return policy, [row for row in rows if "loss" in row], result


def changed(policy, warm) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(policy.model.parameters(), warm.model.parameters()))


@pytest.mark.parametrize("recipe, extra", [
    ("grpo", []),
    ("noisy_rollout", ["noisy_rollout.schedule=constant", "rollout.tis_cap=2"]),  # noisy views, TIS on
])
def test_three_steps_train_and_log_the_mismatch(warm, tmp_path, recipe, extra):
    policy, steps, result = run(warm, tmp_path, recipe, extra)
    assert [row["step"] for row in steps] == [1, 2, 3]
    assert changed(policy, warm)  # the update trained the policy
    for row in steps:
        print(f"{recipe} step {row['step']}: mismatch/kl {row['mismatch/kl']:.2e}, k1 {row['mismatch/k1']:.2e}, "
              f"max |diff| {row['mismatch/abs_diff_max']:.2e}, weight sync {row['time/weight_sync']:.3f} s")
        assert 0 <= row["mismatch/kl"] < 1e-5 and abs(row["mismatch/k1"]) < 1e-3  # weights synced every step
        assert row["mismatch/abs_diff_max"] < 2e-3
        assert row["time/weight_sync"] > 0 and row["num_completions"] == 8
        if "rollout.tis_cap=2" in extra:
            assert row["mismatch/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)


def test_errors_name_their_fix(warm, tmp_path, monkeypatch):
    import vllm

    from perceptrl.models.vllm_engine import VLLMEngine, VLLMError, check_vllm

    monkeypatch.setattr(vllm, "__version__", "0.31.2")
    with pytest.raises(VLLMError, match=r"tested with vLLM >= 0\.32\.0, < 0\.33\.0; this environment has 0\.31\.2"):
        check_vllm()
    monkeypatch.setenv("PERCEPTRL_VLLM_ANY_VERSION", "1")
    assert check_vllm() == "0.31.2"
    monkeypatch.undo()

    folder = tmp_path / "not-servable"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_model", "architectures": ["NoSuchModel"]}))
    with pytest.raises(VLLMError, match="cannot serve") as info:
        VLLMEngine(warm, str(folder), dtype="float32")
    assert "\n" not in str(info.value) and "rollout.engine=hf" in str(info.value)
