"""What users see on the console and in their loggers (issue 17).

- perceptrl's own model calls use the key/value cache argument under the name the installed
  transformers takes (no ``FutureWarning: past_key_values is deprecated ... Use cache instead``), for
  every tiny model family, on both paths that pass a cache (shared-prefix sampling and scoring);
- a training run's console holds perceptrl's progress bar and results only (no library warnings,
  no "Loading weights" / "Writing model shards" bars, no DeepSpeed accelerator notice);
- ``train.report_to`` with ``wandb`` (offline mode): the run folder W&B writes holds every scalar of
  ``metrics.jsonl`` at its step, and a resumed run continues the same W&B run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from perceptrl.models.families import FAMILY_NAMES, build_tiny_family
from perceptrl.models.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.rollout_batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8", "data.val_per_family=2",
         "train.num_threads=1"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_model_calls_use_the_current_cache_argument(family, rgb_images):
    from transformers.utils import logging as hf_logging

    model, processor = build_tiny_family(family, seed=0)
    policy = Policy(model.eval(), processor)
    assert policy.fast_generation and policy.share_prompt_prefix  # the two paths that hand the model a cache
    enc = policy.encode(["How many shapes?", "x"], [[rgb_images[0]], [rgb_images[1]]])
    rows = torch.tensor([0, 0, 1, 1])
    hf_logging.warning_once.cache_clear()  # transformers says each deprecation once per process
    handler = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = policy.generate(enc, rows, max_new_tokens=6)
            policy.score(enc, rows, out.ids, out.mask)
    finally:
        hf_logger.removeHandler(handler)
    said = [f"{w.category.__name__}: {w.message}" for w in caught] + handler.messages
    assert not [m for m in said if "past_key_values" in m or "cache_params" in m or "deprecated" in m.lower()], said


def perceptrl_script() -> list[str]:
    script = Path(sys.executable).with_name("perceptrl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "perceptrl.cli"]


def test_a_run_prints_only_progress_and_results(tmp_path):
    """From the shipped warm start (a model folder: weights are loaded and saved), with the progress bar."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")  # no warning may be hidden by a filter
    result = subprocess.run([*perceptrl_script(), "train", "recipes/grpo.yaml", *SMALL, "model.path=warmstart",
                             "train.max_steps=1", f"train.output_dir={out}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    progress = [part.strip() for part in result.stderr.replace("\r", "\n").splitlines() if part.strip()]
    assert progress and all(part.startswith("train grpo:") for part in progress), result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["", "grpo: held-out greedy accuracy (before -> after)"], result.stdout
    assert all(line.startswith("  accuracy") and " -> " in line for line in lines[2:-1]) and len(lines) > 3
    assert lines[-1] == f"outputs: {out}"


# ----------------------------------------------------------------------------------------------
# Weights & Biases, offline
# ----------------------------------------------------------------------------------------------


def wandb_records(path: Path):
    """The records of a ``.wandb`` file: a LevelDB-style log (32 KiB blocks; each chunk a 4-byte
    checksum, 2-byte length, 1-byte type: 1 whole, 2 first, 3 middle, 4 last) after a 7-byte header."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def wandb_run(folder: Path) -> tuple[str, dict, list[dict]]:
    """``(run id, config, history rows)`` of one offline run folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = folder.glob("run-*.wandb")
    run_id, config, history = None, {}, []
    for raw in wandb_records(log_file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return run_id, config, history


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    from perceptrl import cli
    from perceptrl.train.logging import read_metrics

    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wb-config",
                        "WANDB_CACHE_DIR": tmp_path / "wb-cache", "WANDB_DATA_DIR": tmp_path / "wb-data"}.items():
        monkeypatch.setenv(name, str(value))
    out = tmp_path / "run"
    argv = ["train", "recipes/grpo.yaml", *SMALL, "train.progress=false", "train.save_steps=1",
            "train.report_to=[jsonl,tensorboard,wandb]", f"train.output_dir={out}"]
    try:
        assert cli.main([*argv, "train.max_steps=2"]) == 0, capsys.readouterr().err
        assert cli.main([*argv, "train.max_steps=3"]) == 0, capsys.readouterr().err  # resumed at step 2
    finally:
        wandb.teardown()
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # one per process start, to be synced into one W&B run
    (first_id, config, first), (second_id, _, second) = wandb_run(runs[0]), wandb_run(runs[1])
    assert first_id == second_id == (out / "wandb" / "perceptrl-run-id").read_text()
    assert config["recipe"] == "grpo" and config["train"]["max_steps"] == 2
    logged = {}
    for row in first + second:
        logged.update({(row["step"], k): v for k, v in row.items() if not k.startswith("_")})
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]
    checked = 0
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert logged[(row["step"], key)] == pytest.approx(value, rel=1e-6, abs=1e-9), (row["step"], key)
                checked += 1
    assert checked > 60 and (1, "loss") in logged and (3, "eval/accuracy") in logged
    assert list((out / "tensorboard").glob("events.*"))  # the other loggers still run beside it
