"""``perceptrl eval`` end to end on the tiny model: the built-in suite and an external JSONL dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perceptrl.cli import build_parser, main
from perceptrl.config import ConfigError, DataConfig, load_config
from perceptrl.data.synthetic import SyntheticTask
from perceptrl.eval.commands import _reparse, resolve_config
from perceptrl.train.heldout import evaluate_greedy, generate_completions
from perceptrl.eval.pipeline import default_output_dir, load_eval_samples
from perceptrl.rewards import RewardFunction, get_template

SMALL = ["data.image_size=56", "rollout.max_new_tokens=8", "--batch-size", "4"]


def _check_report(report: dict, n: int, families: list[str], k: int) -> None:
    assert report["schema_version"] == 1 and report["kind"] == "perceptrl.eval"
    assert report["n_samples"] == n == report["data"]["n_samples"]
    groups = report["groups"]
    assert groups["all"]["n"] == n
    assert sum(groups[f"family/{f}"]["n"] for f in families) == n
    assert groups.get("vision_dependent", {"n": 0})["n"] + groups.get("text_only", {"n": 0})["n"] == n
    for g in groups.values():
        greedy = g["greedy"]
        assert 0 <= greedy["correct"] <= g["n"] and greedy["accuracy"] == greedy["correct"] / g["n"]
        assert greedy["ci"][0] <= greedy["accuracy"] <= greedy["ci"][1]
        assert g["sampled"]["total_samples"] == k * g["n"]
        assert 0 <= g["sampled"]["correct_samples"] <= k * g["n"]
        probe = g["probe"]
        for key in ("clean", "masked", "blank", "drop_masked", "drop_blank", "changed_masked",
                    "completion_changed_blank"):
            assert key in probe
        assert probe["clean"] == greedy["accuracy"]
        assert probe["drop_masked"] == pytest.approx(probe["clean"] - probe["masked"])
    assert report["metrics"]["accuracy"] == groups["all"]["greedy"]["accuracy"]
    assert f"avg@{k}" in report["metrics"] and "probe/drop_blank" in report["metrics"]


def test_eval_command_on_tiny_model(tmp_path):
    out = tmp_path / "out"
    argv = ["eval", "--model", "tiny", "data.families=[count,pope,text]", *SMALL,
            "--n-per-family", "2", "--k", "2", "--output-dir", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "eval.json").read_text())
    _check_report(report, 6, ["count", "pope", "text"], 2)
    assert report["model"]["path"] == "tiny" and report["model"]["n_parameters"] > 0
    assert report["data"]["source"] == "suite" and report["data"]["families"] == ["count", "pope", "text"]
    assert report["settings"]["pass_ks"] == [1, 2] and report["settings"]["max_new_tokens"] == 8
    assert report["groups"]["text_only"]["n"] == 2
    assert report["pope"]["all"]["n"] == 2  # the POPE family's items
    # The same items as the training loop's evaluation (test set, first n per family).
    expected = SyntheticTask(["count", "pope", "text"], image_size=56).test_set(2)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [s.id for s in expected]
    assert all(set(r) >= {"greedy", "sampled", "masked", "blank"} for r in records)
    assert "| family/pope | 2 |" in (out / "eval.md").read_text()
    assert load_config(out / "eval_config.yaml").data.families == ["count", "pope", "text"]


def _write_dataset(tmp_path):
    rows = []
    for i in range(4):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        rows.append({"id": f"q{i}", "images": [f"img{i}.png"], "problem": f"What is {i} plus 1?",
                     "answer": str(i + 1), "answer_type": "integer", "family": "ext_a" if i < 2 else "ext_b",
                     "vision_dependent": i < 2})
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_command_on_external_dataset(tmp_path):
    path = _write_dataset(tmp_path)
    out = tmp_path / "out"
    # Options after the overrides are accepted too.
    argv = ["eval", "tiny", f"data.val_files={path}", *SMALL, "--k", "2", "--output-dir", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "eval.json").read_text())
    _check_report(report, 4, ["ext_a", "ext_b"], 2)
    assert report["data"]["source"] == "files" and report["data"]["files"] == [str(path)]
    assert report["groups"]["vision_dependent"]["n"] == 2 and report["groups"]["text_only"]["n"] == 2
    assert report["pope"] is None
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]

    capped, desc = load_eval_samples(DataConfig(val_files=str(path)), n_per_family=1)
    assert [s.id for s in capped] == ["q0", "q2"] and desc["n_per_family"] == 1


def test_training_files_without_validation_files_are_refused(tmp_path, capsys):
    path = _write_dataset(tmp_path)
    with pytest.raises(ConfigError):
        load_eval_samples(DataConfig(train_files=str(path)))
    assert main(["eval", "tiny", f"data.train_files={path}", "--quiet"]) == 2
    assert "val_files" in capsys.readouterr().err
    assert main(["eval", "tiny", "data.families=[nope]", "--quiet"]) == 2


def test_model_folder_takes_its_run_config(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("data:\n  families: [pope, text]\n  template: think_boxed\n")
    config, used = resolve_config([str(run)], None)
    assert config.model.path == str(run / "final") and used == run / "config.yaml"
    assert config.data.families == ["pope", "text"] and config.data.template == "think_boxed"
    assert default_output_dir(config) == run / "eval" / "final-suite-pope-text-d1"
    config, used = resolve_config(["data.difficulty=2"], str(run / "final"), run_config="none")
    assert used is None and config.data.families == ["count"] and config.data.difficulty == 2
    with pytest.raises(FileNotFoundError):
        resolve_config([str(tmp_path / "missing")], None)
    with pytest.raises(ConfigError):
        resolve_config(["tiny"], "tiny")


def test_options_may_follow_overrides():
    args = build_parser().parse_args(["eval", "--seed", "4", "cfg.yaml", "a.b=1", "--k", "3", "c.d=2", "--no-probe"])
    merged = _reparse(args)
    assert merged.positionals == ["cfg.yaml", "a.b=1", "c.d=2"]
    assert (merged.k, merged.no_probe, merged.seed, merged.temperature) == (3, True, 4, 1.0)


def test_seeded_sampling_is_deterministic(tiny_policy):
    samples = SyntheticTask(["count"], image_size=56).test_set(3)
    template = get_template("boxed")
    state = torch.get_rng_state()

    def run(seed):
        return generate_completions(tiny_policy, samples, template, 8, batch_size=2, do_sample=True,
                                    repeats=2, seed=seed).texts

    a, b, c = run(5), run(5), run(6)
    assert a == b and a != c
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone


def test_evaluate_greedy_keeps_its_contract(tiny_policy):
    samples = SyntheticTask(["count", "text"], image_size=56).test_set(2)
    report = evaluate_greedy(tiny_policy, samples, get_template("boxed"), RewardFunction("boxed", start_math=False), 8,
                             batch_size=3)
    assert set(report) == {"accuracy", "accuracy/family/count", "accuracy/family/text", "accuracy/text_only",
                           "accuracy/vision_dependent", "format_rate"}
