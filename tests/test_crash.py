"""Crash test: ``perceptrl train`` killed with SIGKILL at random moments always resumes, and ends
with final parameters bitwise identical to an uninterrupted run.

Each trial starts the same command (a subprocess, ``train.save_steps=1``, deterministic), kills it
with SIGKILL, and checks what is on disk right after the kill: every folder named
``checkpoint-<step>`` is complete, ``final/`` (if present) is complete. Trials are chained (up to
``KILLS_PER_RUN`` kills on one output folder, each run resuming where the last one was killed);
then the command is run once more without a kill and its ``final/model.safetensors`` must equal the
uninterrupted run's, tensor by tensor, bit for bit, and ``metrics.jsonl`` must hold each training
step exactly once.

The run takes two PPO mini-batches per rollout step (two optimizer steps; checkpoints are written
at rollout-step boundaries only), so a kill can also land between the two optimizer steps of one
rollout step; :func:`test_kill_between_minibatches_resumes_bitwise` makes sure one does.

Three ways to kill, cycled through the trials:

- ``hook``: ``PERCEPTRL_CRASH_AT=<point>@<step>`` makes the run SIGKILL itself at a named point of
  ``save_checkpoint`` / ``save_final`` (``perceptrl.train.checkpoint.CRASH_POINTS``): inside the
  temporary folder, after the rename, while pruning, while writing ``final/``, or (``minibatch``)
  between the two optimizer steps of a rollout step;
- ``poll``: the test watches the output folder and sends SIGKILL as soon as the temporary folder
  of a chosen step's checkpoint appears (an outside kill landing inside the write);
- ``timer``: SIGKILL after a random delay (anywhere: start-up, evaluation, rollout, update, ...).

Environment: ``PERCEPTRL_CRASH_TRIALS`` (kills, default 3), ``PERCEPTRL_CRASH_SEED`` (plan seed,
default 1234; printed), ``PERCEPTRL_CRASH_REPORT`` (optional path: write the trial log as JSON).
The full run documented in docs/RELIABILITY.md uses 12 trials.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from perceptrl.train.checkpoint import CRASH_ENV, CRASH_POINTS, PREFIX, is_complete, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TRIALS = int(os.environ.get("PERCEPTRL_CRASH_TRIALS", "3"))
SEED = int(os.environ.get("PERCEPTRL_CRASH_SEED", "1234"))
KILLS_PER_RUN = 3
MAX_STEPS = 5
SAVE_TOTAL_LIMIT = 2
RUN_TIMEOUT = 300
OVERRIDES = [
    f"train.max_steps={MAX_STEPS}", "train.save_steps=1", f"train.save_total_limit={SAVE_TOTAL_LIMIT}",
    "train.deterministic=true", "train.num_threads=1", "train.progress=false", "train.lr=1e-3",
    "train.prompts_per_step=2", "train.global_batch_size=1", "rollout.n=4", "rollout.max_new_tokens=8",
    "data.val_per_family=2",
]


def command(output_dir: Path) -> list[str]:
    script = Path(sys.executable).with_name("perceptrl")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "perceptrl.cli"]
    return [*base, "train", "recipes/grpo.yaml", *OVERRIDES, f"train.output_dir={output_dir}"]


def start(output_dir: Path, log: Path, crash_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    with open(log, "ab") as handle:
        return subprocess.Popen(command(output_dir), cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def reap(proc: subprocess.Popen) -> int:
    """Wait for the run; then end whatever it started (math-verify workers) in its own session."""
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return code


def run_to_end(output_dir: Path, log: Path) -> float:
    t0 = time.perf_counter()
    code = reap(start(output_dir, log))
    assert code == 0, f"run exited {code}; log:\n{log.read_text()[-3000:]}"
    return time.perf_counter() - t0


def latest_step(output_dir: Path) -> int:
    found = list_checkpoints(output_dir)
    return int(found[-1].name[len(PREFIX):]) if found else 0


def kill_when_tmp_appears(proc: subprocess.Popen, output_dir: Path, step: int | None) -> bool:
    """SIGKILL ``proc`` as soon as its temporary folder of checkpoint ``step`` (or later) exists;
    ``step=None``: its temporary ``final`` folder."""
    suffix = f"-{proc.pid}"  # not a folder an earlier killed run left behind

    def target(name: str) -> bool:
        if not (name.startswith(".tmp-") and name.endswith(suffix)):
            return False
        if step is None:
            return name.startswith(".tmp-final-")
        return name.startswith(f".tmp-{PREFIX}") and int(name[len(f".tmp-{PREFIX}"):].split("-")[0]) >= step

    while proc.poll() is None:
        try:
            names = [e.name for e in os.scandir(output_dir)] if output_dir.is_dir() else []
        except FileNotFoundError:
            names = []
        if any(target(name) for name in names):
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.0005)
    return False


def check_on_disk(output_dir: Path) -> dict:
    """What a crash may leave: usable folders are complete; leftovers are only hidden dot-folders."""
    names = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    for name in names:
        path = output_dir / name
        if name.startswith(PREFIX):
            assert is_complete(path), f"{path} exists but is incomplete: {sorted(os.listdir(path))}"
        if name == "final":
            files = set(os.listdir(path))
            assert {"model.safetensors", "config.json"} <= files, f"final/ is incomplete: {sorted(files)}"
    return {
        "checkpoints": [n for n in names if n.startswith(PREFIX)],
        "leftovers": [n for n in names if n.startswith(".")],
        "final": "final" in names,
    }


def plan_kill(rng: random.Random, index: int, output_dir: Path, run_seconds: float, points: list[str]) -> dict:
    """Trial ``index``: hook, poll or timer in turn; hook trials take the crash points in the seeded
    order ``points`` (so 9 hook trials, 27 trials in all, reach every point)."""
    mode = ("hook", "poll", "timer")[index % 3]
    done = latest_step(output_dir)
    step = rng.randint(done + 1, MAX_STEPS) if done < MAX_STEPS else None  # None: only final/ is left to write
    if mode == "hook":
        point = points[(index // 3) % len(points)] if step is not None else "final"
        if point == "pruning" and step <= SAVE_TOTAL_LIMIT:  # nothing to prune yet at this step
            step = rng.randint(SAVE_TOTAL_LIMIT + 1, MAX_STEPS)
        return {"mode": mode, "crash_at": f"{point}@{step}" if point != "final" else "final"}
    if mode == "poll":  # the checkpoint of ``step``, or (one time in six, or when all are written) final/
        return {"mode": mode, "step": None if step is None or rng.random() < 1 / 6 else step}
    return {"mode": mode, "delay": round(rng.uniform(0.5, max(1.0, 0.8 * run_seconds)), 3)}


def kill_once(plan: dict, output_dir: Path, log: Path) -> dict:
    with open(log, "a") as handle:
        handle.write(f"\n===== trial {plan} =====\n")
    proc = start(output_dir, log, plan.get("crash_at"))
    t0 = time.perf_counter()
    if plan["mode"] == "poll":
        kill_when_tmp_appears(proc, output_dir, plan["step"])
    elif plan["mode"] == "timer":
        try:
            proc.wait(timeout=plan["delay"])
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    code = reap(proc)
    outcome = {**plan, "seconds": round(time.perf_counter() - t0, 2), "exit": code,
               "killed": code == -signal.SIGKILL}
    assert code in (0, -signal.SIGKILL), f"run exited {code}; log:\n{log.read_text()[-3000:]}"
    outcome.update(check_on_disk(output_dir))
    return outcome


def train_steps(output_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if "reward" in row]


def assert_same_weights(reference: Path, resumed: Path) -> None:
    a = load_file(str(reference / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: (output folder, seconds it took)."""
    folder = tmp_path_factory.mktemp("reference")
    run_seconds = run_to_end(folder / "run", folder / "runs.log")
    assert train_steps(folder / "run") == list(range(1, MAX_STEPS + 1))
    return folder / "run", run_seconds


def test_kill_between_minibatches_resumes_bitwise(tmp_path, reference):
    """SIGKILL after the first of rollout step 3's two optimizer steps: the resumed run redoes step 3
    from checkpoint-2 (rollout, both mini-batches) and ends bitwise equal to the uninterrupted run."""
    reference, _ = reference
    log, out = tmp_path / "runs.log", tmp_path / "crashed"
    outcome = kill_once({"mode": "hook", "crash_at": "minibatch@3"}, out, log)
    assert outcome["killed"] and outcome["checkpoints"] == ["checkpoint-1", "checkpoint-2"], outcome
    assert train_steps(out) == [1, 2]  # step 3 never logged
    run_to_end(out, log)
    assert_same_weights(reference, out)
    assert train_steps(out) == list(range(1, MAX_STEPS + 1))


def test_killed_runs_resume_bitwise(tmp_path, reference):
    rng = random.Random(SEED)
    print(f"\ncrash test: seed {SEED}, {TRIALS} kills (PERCEPTRL_CRASH_SEED / PERCEPTRL_CRASH_TRIALS)")
    log = tmp_path / "runs.log"
    reference, run_seconds = reference

    points = rng.sample(CRASH_POINTS, len(CRASH_POINTS))
    trials: list[dict] = []
    chain = 0
    while len(trials) < TRIALS:
        out = tmp_path / f"crashed-{chain}"
        for _ in range(min(KILLS_PER_RUN, TRIALS - len(trials))):
            outcome = kill_once(plan_kill(rng, len(trials), out, run_seconds, points), out, log)
            outcome["chain"] = chain
            trials.append(outcome)
            print("  trial", len(trials), json.dumps(outcome))
        run_to_end(out, log)  # the same command again: resumes and finishes
        check_on_disk(out)
        assert_same_weights(reference, out)
        assert train_steps(out) == list(range(1, MAX_STEPS + 1)), train_steps(out)
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "leftover temporary folders"
        chain += 1

    killed = sum(t["killed"] for t in trials)
    inside = sum(t["killed"] and t["mode"] in ("hook", "poll") for t in trials)
    print(f"crash test: seed {SEED}: {killed} of {len(trials)} runs killed ({inside} inside a checkpoint or "
          f"final write), {chain} resumed runs bitwise identical to the uninterrupted run")
    if os.environ.get("PERCEPTRL_CRASH_REPORT"):
        Path(os.environ["PERCEPTRL_CRASH_REPORT"]).write_text(json.dumps(
            {"seed": SEED, "trials": trials, "killed": killed, "inside_write": inside, "chains": chain}, indent=2))
    assert killed >= 1, "no run was killed: the test did not test anything"
    if TRIALS >= 3:
        assert inside >= 1, "no kill landed inside a checkpoint write"


@pytest.mark.parametrize("point", ["weights_written", "renamed", "pruning"])
def test_kill_inside_save_keeps_a_complete_checkpoint(tmp_path, tiny, point, monkeypatch):
    """In-process check of each crash point's on-disk state (the hook's kill replaced by an exception)."""
    from perceptrl.train import checkpoint as ck

    class Killed(BaseException):
        pass

    def crash(name, step=None):
        if name == point and step == 3:
            raise Killed

    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in (1, 2):
        ck.save_checkpoint(tmp_path, step, model, opt, keep=2)
    monkeypatch.setattr(ck, "_crash_point", crash)
    with pytest.raises(Killed):
        ck.save_checkpoint(tmp_path, 3, model, opt, keep=2)
    check_on_disk(tmp_path)
    newest = ck.latest_checkpoint(tmp_path)
    assert newest.name == ("checkpoint-2" if point == "weights_written" else "checkpoint-3")
    assert ck.clean_partial(tmp_path) == (0 if point == "renamed" else 1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(ck.is_complete(p) for p in ck.list_checkpoints(tmp_path))


def test_kill_while_replacing_a_checkpoint_restores_the_old_one(tmp_path, tiny, monkeypatch):
    """Re-saving an existing step (after resuming from an older checkpoint): killed between moving the
    old folder aside and moving the new one in, the old one comes back on the next resume."""
    from perceptrl.train import checkpoint as ck

    class Killed(BaseException):
        pass

    model, _ = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in (1, 2):
        ck.save_checkpoint(tmp_path, step, model, opt, keep=3)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old -> .replaced-... happened; tmp -> checkpoint-2 is killed
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(Killed):
        ck.save_checkpoint(tmp_path, 2, model, opt, keep=3)
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert calls[0][1].startswith(".replaced-checkpoint-2-")
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["checkpoint-1"]
    ck.clean_partial(tmp_path)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """A row cut off by a kill, rows after the checkpoint and an end-of-run evaluation row at the
    checkpoint's step are dropped (they are redone); a fresh start drops everything."""
    from perceptrl.train.rl import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "eval/accuracy": 0.1}, {"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.6},
            {"step": 2, "eval/accuracy": 0.2}, {"step": 3, "reward": 0.7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')
    truncate_metrics(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    truncate_metrics(path, -1)
    assert path.read_text() == ""
