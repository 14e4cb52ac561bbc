"""``perceptrl bench --quick`` runs the real training loop and writes a well-formed report.

Only the structure is checked, never the timings: the machine is shared and noisy.
"""

import json

import pytest

from perceptrl.bench.suite import PHASES, recipe_sources
from perceptrl.timing import StepTimer
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


def test_papo_is_also_compared_with_grpo_sampling_as_it_does():
    from perceptrl.bench.report import markdown
    from perceptrl.bench.runner import Case
    from perceptrl.bench.suite import build_cases, summarise

    cases = build_cases(["recipes", "speedups"], ["grpo", "grpo_top_p099", "papo_g_nokl"], ["tiny"], Case(name="b"),
                        speedup_variants=["top_p_0.99_sorted_filter"])
    by_name = {c.name: c for c in cases}
    assert "rollout.top_p=0.99" in by_name["recipes/tiny/grpo_top_p099"].recipe_overrides
    variant = by_name["speedups/tiny/top_p_0.99_sorted_filter"]
    assert variant.fast_top_p is False and variant.overrides == ["rollout.top_p=0.99"]
    seconds = {"recipes/tiny/grpo": [1.0, 2.0], "recipes/tiny/grpo_top_p099": [1.1, 2.0],
               "recipes/tiny/papo_g_nokl": [1.32, 2.6], "speedups/tiny/default": [1.0, 1.0],
               "speedups/tiny/top_p_0.99_sorted_filter": [1.2, 1.2]}
    results = {name: [{"repeat": r, "steps": [{"time/step": s, "cpu_time/step": s, "generated_tokens": 1.0}],
                       "parameters": 1, "peak_rss_mb": 1.0, "load_average": [0.0]} for r, s in enumerate(values)]
               for name, values in seconds.items()}
    report = summarise(cases, results, {})
    papo = report["recipes"]["tiny"]["papo_g_nokl"]
    assert papo["ratio_to_grpo"]["cpu"]["median"] == pytest.approx((1.32 + 1.3) / 2)
    same = papo["ratio_to_same_sampling"]
    assert same["base"] == "grpo_top_p099" and same["cpu"]["median"] == pytest.approx((1.2 + 1.3) / 2)
    assert "papo_g_nokl over grpo_top_p099" in markdown(report)
