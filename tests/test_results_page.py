"""``benchmarks/results_page.py`` writes docs/RESULTS.md from the reports of ``make results``: the claims
with verdicts from the numbers, the tuning table, the NoisyGRPO supplement, the recorded wall time."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_page_module():
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics(avg, greedy=0.6, fmt=1.0):
    return {"avg@8": avg, "accuracy": greedy, "format_rate": fmt, "avg@8/vision_dependent": avg,
            "avg@8/text_only": 0.9, "probe/drop_blank/family/shortcut": 0.05}


def write_reports(folder: Path) -> None:
    folder.mkdir(parents=True)
    tuning = {"lrs": [1e-5, 2e-5], "seed": 100, "steps": 100, "metric": "avg@8", "split": "tune",
              "results": {"grpo": {"1e-05": 0.51, "2e-05": 0.55}, "papo_g": {"1e-05": 0.56, "2e-05": 0.52}},
              "chosen": {"grpo": {"lr": 2e-5, "score": 0.55}, "papo_g": {"lr": 1e-5, "score": 0.56},
                         "noisy_grpo": {"lr": 2e-5, "score": 0.5}}}
    (folder / "compare.json").write_text(json.dumps({
        "seeds": [0, 1, 2], "overrides": ["train.max_steps=100", "data.rollout_batch_size=8", "rollout.n=8",
                                          "rollout.max_new_tokens=32", "data.val_per_family=64"],
        "tuning": tuning, "missing": []}))
    runs = {  # PAPO-G above GRPO on every seed (held); NoisyRollout below on every seed (reversed)
        "grpo": {str(s): metrics(0.55 + 0.01 * s) for s in range(3)},
        "papo_g": {str(s): metrics(0.60 + 0.012 * s) for s in range(3)},
        "noisy_rollout": {str(s): metrics(0.45 + 0.009 * s) for s in range(3)},
        "noisy_grpo": {str(s): metrics(0.30, fmt=0.2 + 0.1 * s) for s in range(3)},
    }
    (folder / "avg_at_k.json").write_text(json.dumps({"warm_start": metrics(0.48), "runs": runs}))
    (folder / "avg_at_k.md").write_text("# Held-out avg@8\n\n## Paired difference to grpo\n\n| table |\n")
    for name, sets, gain in (("lr5e-6", ["train.lr=5e-6"], 0.04),
                             ("lr1e-4_vision_trained", ["train.lr=1e-4", "model.freeze_vision_tower=false"], -0.3)):
        sub = folder / f"noisy_grpo_{name}"
        sub.mkdir()
        (sub / "compare.json").write_text(json.dumps({"overrides": ["train.max_steps=100", *sets]}))
        (sub / "avg_at_k.json").write_text(json.dumps({"warm_start": metrics(0.48), "runs": {
            "noisy_grpo": {str(s): metrics(0.48 + gain + 0.01 * s) for s in range(3)}}}))


def test_page_from_reports(tmp_path, monkeypatch):
    page = load_page_module()
    results = tmp_path / "results"
    write_reports(results)
    page.record_run_time(results / "run_times.jsonl", 0.0, 5400.0, note="timed by /usr/bin/time")
    out = tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", ["results_page.py", "--results", str(results), "--output", str(out),
                                      "--started", "5400"])
    page.main()
    text = out.read_text()
    held = next(line for line in text.splitlines() if "PAPO above GRPO (arXiv" in line)
    assert held.startswith("- **held (CI above 0)**") and "papo_g - grpo" in held
    assert "Of 5 claims: 3 held; 0 positive, not significant; 0 not seen; 2 reversed." in text
    reversed_ = next(line for line in text.splitlines() if "NoisyRollout above GRPO (arXiv" in line)
    assert reversed_.startswith("- **reversed (CI below 0)**")
    assert "| papo_g | 0.560 | 0.520 | 1e-05 |" in text  # tuning table from compare.json
    assert "### Paired difference to grpo" in text  # the evaluation report, one level down
    # supplement, by learning rate: 5e-6 (learns), the tuned 2e-5 (collapsed: format rate 0.20), 1e-4 with
    # the vision tower trained (read from its compare.json overrides)
    rows = [line for line in text.splitlines() if line.startswith("| lr ")]
    assert [r.split(" | ")[0] for r in rows] == ["| lr 5e-06, vision tower frozen", "| lr 2e-05 (tuned; the main comparison)",
                                                  "| lr 0.0001, vision tower trained"]
    assert "+0.050 [" in rows[0] and "-0.180 [" in rows[1] and "| 0.20 |" in rows[1] and "-0.290 [" in rows[2]
    # two invocations recorded: 90 min timed before, and the one that wrote the page
    assert "over 2 invocation(s)" in text and "timed by /usr/bin/time" in text
    assert "100 rollout steps of 8 prompts x 8 completions x at most 32 tokens" in text
    assert (results / "avg_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "results/avg_at_k.png" in text
