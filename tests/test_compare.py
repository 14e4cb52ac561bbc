"""``perceptrl compare`` runs recipes x seeds, skips finished runs, writes a full report; the demo runs."""

import json
import time

import pytest

from perceptrl.cli import main
from perceptrl.eval import compare
from perceptrl.eval.compare_report import build_report_data, render_table

TINY = ["train.max_steps=2", "data.val_per_family=2", "train.prompts_per_step=2", "rollout.n=4",
        "rollout.max_new_tokens=8", "train.save_final=false", "data.families=[count,pope]", "data.image_size=56"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    argv = ["compare", "--recipes", "grpo", "papo_g", "--seeds", "0", "1", "--output-dir", str(out), "--quiet",
            "--set", "papo_g:papo.gamma=0.01", *TINY]
    t0 = time.perf_counter()
    assert main(argv) == 0
    return out, argv, time.perf_counter() - t0


def test_compare_writes_table_differences_plots_and_html(compared, capsys):
    out, _, _ = compared
    data = json.loads((out / "compare.json").read_text())
    assert data["n_runs"] == 4 and not data["missing"] and not data["errors"]
    for recipe in ("grpo", "papo_g"):
        row = data["table"][recipe]["accuracy"]
        assert row["n"] == 2 and row["low"] <= row["mean"] <= row["high"]
        assert "family/count" in data["table"][recipe] and "family/pope" in data["table"][recipe]
    diff = data["differences"]["papo_g"]["accuracy"]
    assert diff["n"] == 2 and diff["seeds"] in (["0", "1"], [0, 1])
    assert "papo/kl_prcp" in data["signal_keys"]  # the method's own signal is found in metrics.jsonl
    assert data["recipe_overrides"] == {"papo_g": ["papo.gamma=0.01"]}
    for name in ("curves", "families", "differences", "signals"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "report.md").read_text()
    assert "Paired difference to grpo" in md and "| grpo | 2 |" in md and "papo/kl_prcp" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page
    # the per-recipe override reached that recipe only
    cfg = (out / "runs" / "papo_g" / "seed1" / "config.yaml").read_text()
    assert "gamma: 0.01" in cfg
    assert (out / "runs" / "grpo" / "seed0" / "result.json").is_file()


def test_rerun_skips_finished_runs(compared, capsys):
    out, argv, first = compared
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/result.json")}
    assert len(stamps) == 4
    t0 = time.perf_counter()
    assert main([a for a in argv if a != "--quiet"]) == 0
    assert time.perf_counter() - t0 < max(10.0, first / 2)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing was trained again
    captured = capsys.readouterr()
    assert "4 of 4 runs already finished" in captured.err
    assert "held-out greedy accuracy" in captured.out and "report:" in captured.out


def test_interrupted_run_resumes_from_checkpoint(tmp_path):
    specs = compare.plan_runs(["grpo"], [0], tmp_path, [*TINY, "train.max_steps=3"], save_steps=2)
    spec = specs[0]
    # an interrupted run: trained 2 of 3 steps (checkpoint at step 2), no result.json
    from perceptrl.train.rl import train

    cfg = spec.config()
    cfg.train.max_steps = 2
    cfg.train.save_final = False
    train(cfg)
    assert not compare.is_finished(spec.run_dir)
    record = compare.run_one(spec)
    assert compare.is_finished(spec.run_dir)
    rows = [json.loads(line) for line in open(f"{spec.run_dir}/metrics.jsonl")]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]  # steps 1-2 kept, only step 3 redone
    assert record["max_steps"] == 3


def test_report_from_partial_runs_lists_missing():
    rec = lambda recipe, seed, acc: {  # noqa: E731
        "recipe": recipe, "seed": seed, "before": {"accuracy": 0.3}, "after": {"accuracy": acc},
        "history": [{"step": 1, "reward": 0.5, "dupl/u_per": 0.1}], "max_steps": 1}
    data = build_report_data([rec("grpo", 0, 0.4), rec("dupl", 0, 0.5), rec("grpo", 1, 0.45)],
                             recipes=["grpo", "dupl"], seeds=[0, 1], baseline="grpo", overrides=[],
                             recipe_overrides={}, missing=["dupl seed 1"], errors={}, wall_time_s=0.0)
    assert data["differences"]["dupl"]["accuracy"]["n"] == 1
    assert data["differences"]["dupl"]["accuracy"]["mean"] == pytest.approx(0.1)
    assert data["signal_keys"] == ["dupl/u_per"]
    assert "grpo" in render_table(data)


def test_bad_arguments():
    with pytest.raises(ValueError):
        compare.parse_recipe_overrides(["grpo-train.lr=1"])
    with pytest.raises(ValueError):
        compare.plan_runs(["grpo"], [0], "x", recipe_overrides={"dupl": ["train.lr=1"]})
    assert main(["compare", "--recipes", "grpo", "--seeds", "a"]) == 2
    assert main(["compare", "--recipes", "grpo", "--set", "dupl:train.lr=1"]) == 2


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for recipe in ("grpo", "papo_g", "noisy_rollout", "noisy_grpo", "dupl"):
        assert recipe in out
    assert "One seed" in out and str(tmp_path / "report.md") in out
    assert (tmp_path / "report.html").is_file()
