"""Numerical faults: a NaN or infinite reward, loss or gradient skips the step (parameters, optimizer
and schedule untouched), is logged and counted in metrics.jsonl; ``train.max_bad_steps`` bad steps
in a row stop training with a clear message, keeping the last good checkpoint intact.

Faults are injected into the real loop: the reward function returns NaN / inf on chosen training
steps, or the update gets an extra loss term that is infinite (non-finite gradient) or a NaN
constant (non-finite loss, finite gradient).
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from perceptrl import cli
from perceptrl.config import load_config
from perceptrl.models.loading import load_policy
from perceptrl.train import rl
from perceptrl.train.checkpoint import list_checkpoints

PROMPTS, N = 2, 4
SMALL = [f"train.prompts_per_step={PROMPTS}", f"rollout.n={N}", "rollout.max_new_tokens=8", "data.val_per_family=2",
         "train.progress=false", "train.lr=1e-3", "train.deterministic=true", "train.warmup_steps=2"]


def config(out, steps, extra=()):
    return load_config("recipes/grpo.yaml", SMALL + [f"train.output_dir={out}", f"train.max_steps={steps}", *extra])


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


class Faults:
    """Inject faults by training step (1-based). ``snapshots[k]`` = parameters when step k starts."""

    def __init__(self, monkeypatch, reward: dict[int, float] | None = None, loss: dict[int, str] | None = None):
        self.reward, self.loss = reward or {}, loss or {}
        self.step = 0
        self.snapshots: dict[int, dict] = {}
        self.policy = None
        original_reward_fn, original_update, original_load = rl.RewardFunction, rl.run_update, rl.load_policy
        faults = self

        class FaultyReward(original_reward_fn):
            def __call__(self, completions, samples):
                scores = super().__call__(completions, samples)
                if len(completions) == PROMPTS * N:  # a training step (evaluation scores 1 per prompt)
                    faults.step += 1
                    faults.snapshots[faults.step] = params(faults.policy.model)
                    value = faults.reward.get(faults.step)
                    if value is not None:
                        scores["reward"] = [value] + list(scores["reward"][1:])
                return scores

        def faulty_update(policy, optimizer, rollout, settings, *args, **kwargs):
            kind = faults.loss.get(faults.step)
            if kind == "inf":  # infinite loss, non-finite gradient
                settings.terms = [*settings.terms, lambda mb: (mb.logprobs.sum() * math.inf, {})]
            elif kind == "nan_constant":  # NaN loss whose gradient is finite
                settings.terms = [*settings.terms, lambda mb: (torch.tensor(math.nan), {})]
            return original_update(policy, optimizer, rollout, settings, *args, **kwargs)

        def recording_load(*args, **kwargs):
            faults.policy = original_load(*args, **kwargs)
            return faults.policy

        monkeypatch.setattr(rl, "RewardFunction", FaultyReward)
        monkeypatch.setattr(rl, "run_update", faulty_update)
        monkeypatch.setattr(rl, "load_policy", recording_load)


def rows(out) -> dict[int, dict]:
    found = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "reward" in row or "skipped_step" in row:
            found[row["step"]] = row
    return found


def trainer_state(checkpoint):
    return torch.load(checkpoint / "trainer_state.pt", weights_only=True)


@pytest.mark.parametrize("case", ["reward", "loss"])
def test_nonfinite_step_is_skipped_logged_and_counted(tmp_path, monkeypatch, caplog, case):
    if case == "reward":  # NaN reward at step 2, +inf reward at step 4
        faults = Faults(monkeypatch, reward={2: math.nan, 4: math.inf})
    else:  # infinite loss (NaN/inf gradient) at step 2, NaN loss with finite gradient at step 4
        faults = Faults(monkeypatch, loss={2: "inf", 4: "nan_constant"})
    out = tmp_path / case
    with caplog.at_level(logging.WARNING, logger="perceptrl.train.rl"):
        rl.train(config(out, 5, ["train.save_steps=1", "train.save_total_limit=5"]))
    snap = faults.snapshots
    final = params(faults.policy.model)
    after = {1: snap[2], 2: snap[3], 3: snap[4], 4: snap[5], 5: final}
    # skipped steps leave every parameter bit-identical; good steps change them
    assert same(after[2], after[1]) and same(after[4], after[3])
    assert not same(after[1], snap[1]) and not same(after[3], after[2]) and not same(after[5], after[4])
    # logged and counted
    metrics = rows(out)
    assert [s for s, r in metrics.items() if r.get("skipped_step") == 1.0] == [2, 4]
    assert [metrics[s]["bad_steps"] for s in range(1, 6)] == [0, 1, 0, 1, 0]
    assert [metrics[s]["skipped_steps"] for s in range(1, 6)] == [0, 1, 1, 2, 2]
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 2 and "step 2 skipped: non-finite" in warnings[0], warnings
    # no checkpoint of a skipped step; optimizer and schedule advanced by good steps only
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-3", "checkpoint-5"]
    state = trainer_state(out / "checkpoint-5")
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {3}
    assert state["scheduler"]["last_epoch"] == 3
    assert json.loads((out / "checkpoint-5" / "state.json").read_text())["skipped_steps"] == 2
    weights = load_file(str(out / "checkpoint-5" / "model.safetensors"))
    assert all(torch.equal(weights[k], final[k]) for k in weights)


def test_too_many_bad_steps_stop_with_a_clear_message(tmp_path, monkeypatch, capsys):
    """Through the CLI: NaN rewards from step 3 on, max_bad_steps=2: stops at step 4, exit code 3."""
    faults = Faults(monkeypatch, reward={3: math.nan, 4: math.nan, 5: math.nan})
    out = tmp_path / "run"
    argv = ["train", "recipes/grpo.yaml", *SMALL, f"train.output_dir={out}", "train.max_steps=6",
            "train.save_steps=1", "train.save_total_limit=2", "train.max_bad_steps=2"]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 3
    lines = [line for line in err.splitlines() if line.startswith("perceptrl:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "training stopped: 2 consecutive steps had a non-finite reward (last at step 4" in lines[0]
    assert "train.max_bad_steps = 2" in lines[0] and str(out / "checkpoint-2") in lines[0]
    assert faults.step == 4  # nothing ran after the stop
    # the last good checkpoint is intact: the parameters after step 2, loadable
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    after_step_2 = faults.snapshots[3]
    assert all(torch.equal(saved[k], after_step_2[k]) for k in saved)
    model = load_policy(config(out, 6).model).model
    optimizer = rl.make_optimizer(model, config(out, 6).train)
    from perceptrl.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint-2", model, optimizer)["step"] == 2
    assert not (out / "final").exists()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 4, "skipped_step": 1.0, "bad_steps": 2, "skipped_steps": 2}
