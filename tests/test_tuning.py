"""Learning-rate tuning on a split that is not the test set (issue 15 point 5): the suite's tuning items,
the score (greedy accuracy or avg@k), and ablations that take their method's tuned rate."""

import json
from pathlib import Path

import pytest

from perceptrl.cli import main
from perceptrl.config import ConfigError, load_config, recipe_path
from perceptrl.data.sources import build_source
from perceptrl.data.synthetic import TEST_POOL_SIZE, SyntheticTask, _test_pool_digests, image_digest
from perceptrl.eval import compare
from perceptrl.eval.pipeline import load_eval_samples

TINY = ["train.max_steps=1", "data.val_per_family=2", "train.prompts_per_step=2", "rollout.n=2",
        "rollout.max_new_tokens=6", "data.families=[count,pope]", "data.image_size=56"]


def test_tuning_items_are_held_out_and_not_test_items():
    task = SyntheticTask(["count", "pope"], difficulty=1, image_size=56, decontaminate=False)
    test, tune = task.test_set(8), task.tune_set(8)
    assert len(tune) == 16 and {s.meta["split"] for s in tune} == {"tune"}
    assert not {s.id for s in test} & {s.id for s in tune}
    assert not {image_digest(s.images[0]) for s in test} & {image_digest(s.images[0]) for s in tune}
    # the tuning items are the far end of the held-out pool, so training (decontaminated against the
    # whole pool) never shows one of their images
    assert tune[0].problem == task.test_sample("count", TEST_POOL_SIZE - 1).problem
    pool = _test_pool_digests(1, 56)
    assert all(image_digest(s.images[0]) in pool for s in tune)
    # the item i of the tuning split does not depend on how many are taken
    assert [s.id for s in task.tune_set(3)][:3] == [s.id for s in tune[:3]]


def test_val_split_reaches_training_and_evaluation():
    cfg = load_config(recipe_path("grpo"), [*TINY, "data.val_split=tune"])
    tune_ids = {s.id for s in build_source(cfg.data, seed=0).val_samples()}
    samples, desc = load_eval_samples(cfg.data)
    assert {s.id for s in samples} == tune_ids and all("-tune-" in i for i in tune_ids)
    assert desc["split"] == "tune"
    cfg.data.val_split = "test"
    assert not {s.id for s in load_eval_samples(cfg.data)[0]} & tune_ids


def test_bad_val_split_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.val_split must be test or tune"):
        load_config(recipe_path("grpo"), ["data.val_split=dev"])
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"problem": "1+1?", "answer": "2"}\n')
    with pytest.raises(ConfigError, match="data.val_split=tune picks the built-in suite"):
        load_config(recipe_path("grpo"), [f"data.train_files={rows}", f"data.val_files={rows}", "data.val_split=tune"])


def _fake_execute(seen: list):
    """Stands in for training: writes each run's result.json with scores that depend on its lr (tuning
    runs: greedy accuracy best at 1e-4, avg@8 best at 2e-5, so the metric decides the choice)."""

    def execute(specs, jobs=1, show_progress=True, say=None):
        for spec in specs:
            seen.append(spec)
            lr = float(next(o for o in reversed(spec.overrides) if o.startswith("train.lr=")).split("=")[1]) \
                if any(o.startswith("train.lr=") for o in spec.overrides) else 2e-5
            after = {"accuracy": 0.5 + 1000 * lr if "/tune/" in spec.run_dir else 0.5}
            if spec.score_k:
                after[f"avg@{spec.score_k}"] = 0.6 - abs(lr - 2e-5) * 1000
            Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(spec.run_dir) / compare.RESULT_FILE).write_text(json.dumps({
                "recipe": spec.name, "seed": spec.seed, "before": {"accuracy": 0.4}, "after": after,
                "max_steps": 1, "overrides": spec.overrides}))
        return {}

    return execute


def test_tuning_scores_on_the_tuning_split_and_ablations_share_the_rate(tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr(compare, "execute", _fake_execute(seen))
    data = compare.run_compare(["grpo", "dupl", "dupl_no_u_per"], [0, 1], tmp_path / "out", TINY, jobs=1,
                               show_progress=False, tune_lrs=[1e-5, 2e-5, 1e-4], tune_steps=1, tune_k=8,
                               tune_like={"dupl_no_u_per": "dupl"})
    tuning_runs = [s for s in seen if "/tune/" in s.run_dir]
    assert len(tuning_runs) == 6  # grpo and dupl x 3 rates; the ablation is not tuned
    assert all("data.val_split=tune" in s.overrides and s.score_k == 8 for s in tuning_runs)
    final = [s for s in seen if "/tune/" not in s.run_dir]
    assert len(final) == 6 and not any("data.val_split=tune" in s.overrides for s in final)
    tuning = data["tuning"]
    assert tuning["metric"] == "avg@8" and tuning["split"] == "tune"
    assert tuning["chosen"]["grpo"]["lr"] == 2e-5  # best avg@8, not best greedy accuracy (1e-4)
    assert tuning["chosen"]["dupl_no_u_per"] == {**tuning["chosen"]["dupl"], "from": "dupl"}
    for spec in final:
        assert f"train.lr={tuning['chosen'][spec.name]['lr']}" in spec.overrides
    md = (tmp_path / "out" / "report.md").read_text()
    assert "(as dupl)" in md and "avg@8 at T = 1 on the tuning split" in md


def test_tuning_by_greedy_accuracy_without_k(tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr(compare, "execute", _fake_execute(seen))
    data = compare.run_compare(["grpo"], [0], tmp_path, TINY, show_progress=False, tune_lrs=[1e-5, 1e-4])
    assert all(s.score_k == 0 for s in seen)
    assert data["tuning"]["metric"] == "accuracy" and data["tuning"]["chosen"]["grpo"]["lr"] == 1e-4


def test_sampled_score_of_a_real_run(tmp_path):
    """A real one-step run with score_k: the final model's avg@2 on its own (tuning) split."""
    spec = compare.plan_runs(["grpo"], [0], tmp_path, [*TINY, "data.val_split=tune"], save_steps=0)[0]
    spec.score_k = 2
    record = compare.run_one(spec)
    assert 0.0 <= record["after"]["avg@2"] <= 1.0 and "pass@2" in record["after"]
    saved = json.loads((tmp_path / "grpo" / "seed0" / "eval_k2" / "eval.json").read_text())
    assert saved["data"]["split"] == "tune" and saved["data"]["n_samples"] == 4


@pytest.mark.parametrize("argv,message", [
    (["--tune-like", "dupl_no_u_per"], "--tune-like expects RECIPE:TUNED_RECIPE"),
    (["--tune-like", "dupl_no_u_per:dapo"], "dapo not in --recipes"),
    (["--tune-like", "grpo:grpo"], "must come from a recipe that is tuned itself"),
    (["--tune-k", "-1"], "--tune-k must be >= 0"),
])
def test_bad_tuning_arguments_exit_2(argv, message, capsys):
    assert main(["compare", "--recipes", "grpo", "dupl_no_u_per", "--seeds", "0", *argv]) == 2
    assert message in capsys.readouterr().err
