"""Checkpoints: atomic, bounded in number, and a resumed run continues exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from perceptrl.config import load_config
from perceptrl.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from perceptrl.train.rl import train

SMALL = ["train.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=12", "data.val_per_family=2",
         "train.progress=false", "train.lr=1e-3", "train.deterministic=true"]


def run(tmp, steps, extra=()):
    cfg = load_config("recipes/grpo.yaml", SMALL + [f"train.output_dir={tmp}", f"train.max_steps={steps}", *extra])
    return train(cfg)


def final_weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def test_resume_continues_exactly(tmp_path):
    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "split", 2, ["train.save_steps=2"])
    assert latest_checkpoint(tmp_path / "split").name == "checkpoint-2"
    resumed = run(tmp_path / "split", 4, ["train.save_steps=2"])
    a, b = final_weights(whole.output_dir), final_weights(resumed.output_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed run's metrics have one row per step, as an uninterrupted run would
    def train_steps(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [row["step"] for row in rows if "reward" in row]

    assert train_steps(tmp_path / "split") == train_steps(tmp_path / "whole") == [1, 2, 3, 4]


def test_checkpoints_are_complete_and_bounded(tmp_path, tiny):
    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    # a half-written checkpoint (no state.json) is never picked
    (tmp_path / "checkpoint-9").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"


def test_resume_path_must_be_a_checkpoint(tmp_path):
    from perceptrl.train.run_dir import RunDirError

    with pytest.raises(RunDirError, match="train.resume"):
        run(tmp_path / "x", 1, [f"train.resume={tmp_path}"])
    assert not (tmp_path / "x").exists()  # refused before the output folder was made
