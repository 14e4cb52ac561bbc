"""``benchmarks/gpu_check.py``: its CPU path end to end, so that the GPU run cannot fail on a trivial error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_tiny_test_runs_the_training_loop_without_math_verify_or_datasets(tmp_path):
    """--tiny-test hides math_verify and datasets (absent on the GPU machine) and runs the real loop on a
    shrunken copy of the 3B config: one JSON line per step, each with the numbers the GPU run reports."""
    out = tmp_path / "lines.jsonl"
    done = _run("--tiny-test", "--steps", "1", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["event"] for r in lines] == ["vllm", "model", "step", "done"]
    assert isinstance(lines[0]["available"], bool) and (lines[0]["available"] or lines[0]["reason"])
    assert lines[1]["config"].endswith("Qwen2.5-VL-3B-Instruct/config.json")
    step = lines[2]
    for key in ("generation_s", "scoring_s", "update_s", "generated_tokens_per_s", "update_tokens_per_s",
                "mfu_update", "mfu_step"):
        assert key in step
    assert step["generated_tokens"] == 2 * 2 * 12 and step["update_tokens_per_s"] > 0 and step["grad_norm"] > 0


def test_built_in_config_is_the_shipped_public_one():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    shipped = json.loads((ROOT / "src/perceptrl/assets/configs/Qwen2.5-VL-3B-Instruct/config.json").read_text())
    assert {k: v for k, v in gpu_check.QWEN2_5_VL_3B.items() if k != "transformers_version"} == {
        k: v for k, v in shipped.items() if k != "transformers_version"}


def test_without_cuda_it_runs_nothing_and_says_so():
    import torch

    if torch.cuda.is_available():
        return
    done = _run()
    assert done.returncode == 0 and "no CUDA device here; nothing run" in done.stdout
