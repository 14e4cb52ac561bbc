"""An output folder is never silently reused by another run (docs/RELIABILITY.md, "Reusing an output folder").

- the decision table of ``plan_start`` (which run may resume, replace or report a folder), unit-tested;
- end to end through ``perceptrl train`` / ``perceptrl sft``: a finished run is reported, not redone;
  a different run is refused naming the keys that differ, and nothing in the folder changes; a larger
  step budget continues; ``train.resume=force`` continues and is recorded; ``train.overwrite=true``
  replaces; the resume is announced with its step; the model card describes ``final/``;
- the lock: a second run fails at once naming the holder's pid; a lock left by a killed run is taken
  over; two runs started at once into one folder: exactly one runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from perceptrl import cli
from perceptrl.config import load_config
from perceptrl.train.output_lock import FolderInUse, OutputLock
from perceptrl.train.run_plan import FolderState, RunDirError, plan_start

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.rollout_batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8", "data.val_per_family=2",
         "train.progress=false", "train.num_threads=1"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its content)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys, command: str, recipe: str, out: Path, *extra: str) -> tuple[int, str, str]:
    code = cli.main([command, recipe, *SMALL, f"train.output_dir={out}", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("perceptrl:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def train_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if "reward" in row]


# ----------------------------------------------------------------------------------------------
# The decision table
# ----------------------------------------------------------------------------------------------


def cfg(*overrides: str, recipe: str = "grpo"):
    return load_config(ROOT / "recipes" / f"{recipe}.yaml", ["train.output_dir=/runs/x", *overrides])


def folder(saved=None, checkpoints=(), finished_at=None, metrics=False) -> FolderState:
    record = {}
    if finished_at is not None:
        record = {"status": "finished", "step": finished_at, "before": {"accuracy": 0.1}, "after": {"accuracy": 0.2}}
    return FolderState(Path("/runs/x"), checkpoints=[Path(f"/runs/x/checkpoint-{s}") for s in checkpoints],
                       saved_config=saved.to_dict() if saved is not None else None, record=record,
                       has_final=finished_at is not None, has_metrics=metrics or bool(checkpoints))


def test_plan_table():
    base = cfg("train.max_steps=4")
    # an empty folder: a fresh start
    assert plan_start(base, folder()).checkpoint is None
    # the same run, interrupted: resume its newest checkpoint (only resumable keys changed)
    plan = plan_start(cfg("train.max_steps=6", "train.num_threads=3", "train.log_every=2", "train.save_steps=1",
                          "train.progress=true", "train.report_to=[jsonl]", "model.device=cpu"),
                      folder(base, checkpoints=[2, 3]))
    assert plan.checkpoint.name == "checkpoint-3" and plan.step == 3 and not plan.replace and not plan.forced
    assert "resuming from /runs/x/checkpoint-3 at step 3 of 6" in plan.notes
    # a different run: refused, naming each key that differs
    for changed, key in [(cfg("train.lr=1e-4"), "train.lr"), (cfg("train.seed=3"), "train.seed"),
                         (cfg(recipe="papo_g"), "recipe"), (cfg("model.path=warmstart"), "model.path")]:
        with pytest.raises(RunDirError, match=f"holds checkpoints of a different run .*{key} "):
            plan_start(changed, folder(base, checkpoints=[2]))
    # ... unless forced (recorded) or replaced
    plan = plan_start(cfg("train.lr=1e-4", "train.resume=force"), folder(base, checkpoints=[2]))
    assert plan.checkpoint.name == "checkpoint-2" and plan.forced == {"train.lr": (2e-5, 1e-4)}
    assert plan_start(cfg("train.lr=1e-4", "train.overwrite=true"), folder(base, checkpoints=[2])).replace
    # a checkpoint past the budget is refused, not relabelled
    with pytest.raises(RunDirError, match="checkpoint-5: step 5 is past train.max_steps = 4"):
        plan_start(base, folder(base, checkpoints=[5]))
    # a finished run: reported (same budget), continued (larger budget, from its checkpoint), kept otherwise
    assert plan_start(base, folder(base, checkpoints=[4], finished_at=4)).done["after"] == {"accuracy": 0.2}
    assert plan_start(base, folder(base, finished_at=4)).done is not None
    plan = plan_start(cfg("train.max_steps=8"), folder(base, checkpoints=[4], finished_at=4))
    assert plan.checkpoint.name == "checkpoint-4" and plan.done is None
    with pytest.raises(RunDirError, match="finished run without a checkpoint"):
        plan_start(cfg("train.max_steps=8"), folder(base, finished_at=4))
    with pytest.raises(RunDirError, match="holds a finished different run .*train.lr"):
        plan_start(cfg("train.lr=1e-4"), folder(base, finished_at=4))
    with pytest.raises(RunDirError, match="finished at step 4: nothing to continue"):
        plan_start(cfg("train.lr=1e-4", "train.resume=force", "train.max_steps=4"), folder(base, checkpoints=[4], finished_at=4))
    assert plan_start(cfg("train.overwrite=true"), folder(base, finished_at=4)).replace
    # train.resume=none replaces only when asked
    with pytest.raises(RunDirError, match="train.resume=none would start over"):
        plan_start(cfg("train.resume=none"), folder(base, checkpoints=[2]))
    assert plan_start(cfg("train.resume=none", "train.overwrite=true"), folder(base, checkpoints=[2])).replace
    # leftovers of an interrupted attempt without a checkpoint: the same run starts again, another is refused
    assert plan_start(base, folder(base, metrics=True)).replace
    with pytest.raises(RunDirError, match="holds files of a different run"):
        plan_start(cfg("train.lr=1e-4"), folder(base, metrics=True))
    with pytest.raises(RunDirError, match="train.resume=force: .* holds no complete checkpoint"):
        plan_start(cfg("train.resume=force"), folder(base, metrics=True))
    # a config saved by an older perceptrl lacks keys added since: they count as their defaults
    older = base.to_dict()
    del older["train"]["report_to"], older["algorithm"]["kl_bias_correction"]
    state = folder(base, checkpoints=[2])
    state.saved_config = older
    assert plan_start(base, state).checkpoint.name == "checkpoint-2"
    assert plan_start(cfg("algorithm.kl_bias_correction=true", "train.resume=force"), state).forced == {
        "algorithm.kl_bias_correction": (False, True)}
    # ... and may name a key by its old name (train.prompts_per_step, now data.rollout_batch_size)
    renamed = base.to_dict()
    renamed["train"]["prompts_per_step"] = renamed["data"].pop("rollout_batch_size")
    state.saved_config = renamed
    assert plan_start(base, state).checkpoint.name == "checkpoint-2"
    with pytest.raises(RunDirError, match="data.rollout_batch_size"):
        plan_start(cfg("data.rollout_batch_size=4"), state)


# ----------------------------------------------------------------------------------------------
# End to end: perceptrl train / sft into a folder that holds a run
# ----------------------------------------------------------------------------------------------


def test_reused_output_folder(tmp_path, capsys):
    out = tmp_path / "run"
    grpo = "recipes/grpo.yaml"
    code, stdout, err = run_cli(capsys, "train", grpo, out, "train.max_steps=2", "train.save_steps=1")
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["step"] == 2 and len(record["starts"]) == 1
    assert record["starts"][0]["command"].startswith("perceptrl train recipes/grpo.yaml")
    card = (out / "final" / "README.md").read_text()  # the model card
    assert "base_model" not in card.split("---")[1]  # tiny is not a Hub model
    for fragment in ["recipe `grpo`", "2 optimizer steps from `tiny`", "| accuracy |", "perceptrl train recipes/grpo.yaml",
                     f"train.output_dir={out}", "library_name: transformers", "pipeline_tag: image-text-to-text"]:
        assert fragment in card, fragment
    assert f"| accuracy | {record['before']['accuracy']:.3f} | {record['after']['accuracy']:.3f} |" in card
    finished = snapshot(out)

    # the same command again: reported, nothing redone or changed
    code, stdout, err = run_cli(capsys, "train", grpo, out, "train.max_steps=2", "train.save_steps=1")
    assert code == 0 and "already holds this run, finished at step 2: nothing to do" in err, err
    assert f"{record['after']['accuracy']:.3f}" in stdout
    assert snapshot(out) == finished

    # a different run into the same folder: refused at once, naming what differs; nothing changed
    for extra, fragments in [(["train.lr=1e-4"], ["train.lr 2e-05 -> 0.0001"]),
                             (["recipe=drgrpo", "algorithm.adv_scale=none"], ["recipe 'grpo' -> 'drgrpo'",
                                                                              "algorithm.adv_scale 'group' -> 'none'"]),
                             (["train.max_steps=1"], ["checkpoint-2: step 2 is past train.max_steps = 1"])]:
        t0 = time.perf_counter()
        code, _, err = run_cli(capsys, "train", grpo, out, "train.save_steps=1", *(extra if "train.max_steps=1" in extra
                                                                                   else ["train.max_steps=2", *extra]))
        line = one_line(err)
        assert code == 2 and line.startswith("perceptrl: output folder: "), err
        assert all(f in line for f in fragments), line
        assert time.perf_counter() - t0 < 5.0
        assert snapshot(out) == finished

    # a larger budget continues from the last checkpoint, and says so
    code, _, err = run_cli(capsys, "train", grpo, out, "train.max_steps=3", "train.save_steps=1")
    assert code == 0 and f"[perceptrl] resuming from {out / 'checkpoint-2'} at step 2 of 3" in err, err
    assert train_steps(out) == [1, 2, 3]

    # train.resume=force continues another config, and run.json records what differed
    code, _, err = run_cli(capsys, "train", grpo, out, "train.max_steps=4", "train.save_steps=1", "train.lr=1e-4",
                           "train.resume=force")
    assert code == 0 and "train.resume=force: resuming although the config differs (train.lr 2e-05 -> 0.0001)" in err
    record = json.loads((out / "run.json").read_text())
    assert [s["step"] for s in record["starts"]] == [0, 2, 3] and record["starts"][-1]["forced"] == {
        "train.lr": [2e-05, 0.0001]}
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 1e-4
    assert train_steps(out) == [1, 2, 3, 4]

    # train.overwrite=true replaces it: the old checkpoints, metrics and record are gone
    code, _, err = run_cli(capsys, "train", grpo, out, "train.max_steps=1", "train.save_steps=1", "train.seed=7",
                           "train.overwrite=true")
    assert code == 0 and "train.overwrite=true: deleting the previous run" in err, err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert train_steps(out) == [1] and len(json.loads((out / "run.json").read_text())["starts"]) == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no lock, no leftovers


def test_finished_run_without_checkpoints_is_kept(tmp_path, capsys):
    """The issue's third case: ``final/`` and metrics of a run without checkpoints were replaced silently."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "sft", "recipes/sft.yaml", out, "train.max_steps=2", "data.rollout_batch_size=4")
    assert code == 0, err
    assert "`sft`" not in (out / "final" / "README.md").read_text() and "supervised warm start" in (
        out / "final" / "README.md").read_text()
    finished = snapshot(out)
    code, _, err = run_cli(capsys, "sft", "recipes/sft.yaml", out, "train.max_steps=2", "data.rollout_batch_size=4",
                           "train.lr=1e-4")
    assert code == 2 and "holds a finished different run (train.lr 0.001 -> 0.0001)" in one_line(err)
    code, _, err = run_cli(capsys, "train", "recipes/grpo.yaml", out, "train.max_steps=2")
    assert code == 2 and "recipe 'sft' -> 'grpo'" in one_line(err)
    code, _, err = run_cli(capsys, "sft", "recipes/sft.yaml", out, "train.max_steps=4", "data.rollout_batch_size=4")
    assert code == 2 and "finished run without a checkpoint" in one_line(err)
    code, _, err = run_cli(capsys, "sft", "recipes/sft.yaml", out, "train.max_steps=2", "data.rollout_batch_size=4")
    assert code == 0 and "nothing to do" in err
    assert snapshot(out) == finished
    code, _, err = run_cli(capsys, "sft", "recipes/sft.yaml", out, "train.max_steps=2", "data.rollout_batch_size=4",
                           "train.lr=1e-4", "train.overwrite=true")
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 1e-4
    assert len([line for line in (out / "sft_metrics.jsonl").read_text().splitlines() if "sft/loss" in line]) == 2


# ----------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from perceptrl.train.output_lock import OutputLock
lock = OutputLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
if sys.argv[2] == "die":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
"""


def start_holder(folder: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_its_holder_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    holder = start_holder(out, "hold")
    try:
        before = snapshot(out)
        t0 = time.perf_counter()
        code, _, err = run_cli(capsys, "train", "recipes/grpo.yaml", out, "train.max_steps=1")
        line = one_line(err)
        assert code == 2 and f"{out} is in use by another perceptrl run (pid {holder.pid} on " in line, line
        assert time.perf_counter() - t0 < 5.0
        assert snapshot(out) == before
        # in one process too: a second lock on the folder is refused
        with pytest.raises(FolderInUse, match=f"pid {holder.pid}"):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file is still there, but no process holds it
    assert json.loads((out / ".perceptrl.lock").read_text())["pid"] == holder.pid
    code, _, err = run_cli(capsys, "train", "recipes/grpo.yaml", out, "train.max_steps=1")
    assert code == 0, err
    assert f"took over the lock of an earlier run that ended without releasing it (pid {holder.pid} on " in err
    assert not (out / ".perceptrl.lock").exists() and (out / "notes.txt").is_file()


def test_two_runs_started_at_once_into_one_folder(tmp_path):
    """The issue's second case: both used to exit 0, the folder holding a mixture. Now exactly one runs."""
    out = tmp_path / "run"
    script = Path(sys.executable).with_name("perceptrl")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "perceptrl.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [*base, "train", "recipes/grpo.yaml", *SMALL, "train.max_steps=1", f"train.output_dir={out}"]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append((proc.returncode, stderr))
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # math-verify workers of the run
        except (ProcessLookupError, PermissionError):
            pass
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(p for p, (code, _) in zip(procs, results) if code == 0)
    loser_err = next(err for code, err in results if code == 2)
    assert loser_err.count("\n") == 1 and f"is in use by another perceptrl run (pid {winner.pid} on " in loser_err
    assert json.loads((out / "run.json").read_text())["starts"][0]["pid"] == winner.pid
    assert train_steps(out) == [1]


def test_lock_on_a_file_system_without_flock(tmp_path, monkeypatch):
    """Windows, some network file systems: a lock file whose pid runs on this host holds the folder."""
    import socket

    from perceptrl.train import output_lock

    monkeypatch.setattr(output_lock, "_flock", lambda fd, exclusive: None)
    lock_file = tmp_path / ".perceptrl.lock"
    lock_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(FolderInUse, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        OutputLock(tmp_path).acquire()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid no longer runs
    lock_file.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert lock.stale["pid"] == gone.pid and json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()
