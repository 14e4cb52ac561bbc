"""``perceptrl bench --quick`` runs the real training loop and writes a well-formed report.

Only the structure is checked, never the timings: the machine is shared and noisy.
"""

import json

import pytest

from perceptrl.bench.suite import PHASES, recipe_sources
from perceptrl.bench.timer import StepTimer
from perceptrl.cli import main


def test_step_timer_sums_sections_and_resets():
    timer = StepTimer()
    for _ in range(2):
        with timer.section("a"):
            pass
    with timer.section("b"):
        sum(range(1000))
    m = timer.metrics()
    assert {"time/a", "time/b", "cpu_time/a", "cpu_time/b", "cpu_time/step"} <= set(m)
    assert all(v >= 0 for v in m.values())
    timer.reset()
    assert set(timer.metrics()) == {"cpu_time/step"}


def test_recipe_sources_list_grpo_first_and_skip_sft():
    sources = recipe_sources()
    assert next(iter(sources)) == "grpo"
    assert "sft" not in sources and "warmstart" not in sources


@pytest.mark.slow
def test_quick_bench_writes_json_png_and_tables(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--output-dir", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").stat().st_size > 0
    assert "| grpo |" in (out / "bench.md").read_text()
    assert {"meta", "cases", "recipes", "scaling", "speedups"} <= set(report)
    assert report["meta"]["repeats"] == 1 and report["meta"]["threads"] == 1

    grpo = report["recipes"]["tiny"]["grpo"]
    assert grpo["parameters"] > 0 and grpo["peak_rss_mb"] > 0 and grpo["steps_measured"] >= 1
    for key in ("seconds_per_step", "cpu_seconds_per_step"):
        assert set(grpo[key]) == {"median", "min", "max", "n"} and grpo[key]["median"] > 0
    assert grpo["ratio_to_grpo"]["cpu"]["median"] == pytest.approx(1.0)
    for clock in ("wall", "cpu"):
        assert set(grpo["split_seconds"][clock]) == {label for label, _ in PHASES} | {"other"}
    assert grpo["split_seconds"]["cpu"]["generation"] > 0
    assert grpo["generated_tokens_per_step"] > 0 and grpo["generated_tokens_per_second"] > 0

    # an interrupted run can be summarised from its raw results
    again = tmp_path / "again"
    assert main(["bench", "--report-from", str(out / "raw.jsonl"), "--output-dir", str(again)]) == 0
    rebuilt = json.loads((again / "bench.json").read_text())
    assert rebuilt["recipes"]["tiny"]["grpo"]["cpu_seconds_per_step"] == grpo["cpu_seconds_per_step"]

    scaling = report["scaling"]["tiny"]
    assert set(scaling) == {"group_size", "completion_length", "image_size"}
    for axis in scaling.values():
        values = [p["value"] for p in axis["points"]]
        assert len(values) >= 2 and values == sorted(values)
        assert {"time_factor", "loglog_slope", "no_worse_than_linear"} <= set(axis["cpu"])
