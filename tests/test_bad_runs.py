"""Bad output folders, model folders, devices, command options and a full disk (issue 17).

Each case goes through the user-facing command (``perceptrl.cli.main``, or the console script in a
subprocess where the case needs a mount namespace) and must be answered with exit code 2, one line
``perceptrl: ...`` on stderr naming the input, no traceback, within a few seconds, and nothing
changed in the output folder (a folder that did not exist is not created; one that held files holds
the same files with the same contents). The full disk is the one case that happens mid-run: there
the checkpoint before it must stay intact and the same command must resume from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perceptrl import cli
from test_bad_inputs import run_cli  # exit code, stderr and seconds of one CLI call

ROOT = Path(__file__).resolve().parents[1]
CASE_SECONDS = 5.0  # "a few seconds", generous for a loaded 2-core machine
SMALL = ["data.rollout_batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8", "data.val_per_family=2",
         "train.progress=false", "train.num_threads=1", "train.max_steps=1"]


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every file under ``folder`` with a hash of its content (None: the folder does not exist)."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}



def assert_one_line(code: int, err: str, seconds: float, fragments: list[str], kind: str | None = None) -> str:
    lines = [line for line in err.splitlines() if line.startswith("perceptrl:")]
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    if kind is not None:
        assert lines[0].startswith(f"perceptrl: {kind}: "), lines[0]
    assert seconds < CASE_SECONDS, f"took {seconds:.1f} s"
    return lines[0]


@pytest.fixture
def previous_run(tmp_path) -> Path:
    """An output folder that already holds something of the user's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept\n")
    return out


def train_argv(out: Path, *extra: str) -> list[str]:
    return ["train", "recipes/grpo.yaml", *SMALL, f"train.output_dir={out}", *extra]


# ----------------------------------------------------------------------------------------------
# Model folders and devices: checked before anything loads or is written
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny) -> Path:
    from perceptrl.models.loading import save_pretrained

    folder = tmp_path_factory.mktemp("model") / "tiny-vl"
    model, processor = tiny
    save_pretrained(model, processor, folder)
    return folder


def _broken_model(base: Path, dest: Path, change) -> tuple[Path, list[str]]:
    shutil.copytree(base, dest)
    return dest, change(dest)


def no_weights(folder: Path):
    (folder / "model.safetensors").unlink()
    return [str(folder), "has no weights", "model.safetensors"]


def truncated_weights(folder: Path):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return [str(weights), "truncated"]


def corrupt_header(folder: Path):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00\xff" * 16  # inside the JSON header
    weights.write_bytes(bytes(data))
    return [str(weights), "corrupt safetensors header"]


def absurd_header_length(folder: Path):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    weights.write_bytes(bytes(data))
    return [str(weights), "corrupt safetensors header"]


def pickle_only(folder: Path):
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return [str(folder / "pytorch_model.bin"), "pickle weights are not loaded", "safetensors only", "save_pretrained"]


def missing_shard(folder: Path):
    index = {"metadata": {}, "weight_map": {"model.a": "model-00001-of-00002.safetensors",
                                            "model.b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return [str(folder), "model-00002-of-00002.safetensors", "missing"]


def no_config(folder: Path):
    (folder / "config.json").unlink()
    return [str(folder), "no config.json"]


def bad_config_json(folder: Path):
    (folder / "config.json").write_text("{not json")
    return [str(folder / "config.json"), "not valid JSON"]


MODEL_CASES = {f.__name__: f for f in (no_weights, truncated_weights, corrupt_header, absurd_header_length,
                                        pickle_only, missing_shard, no_config, bad_config_json)}


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_bad_model_folder_is_named(tmp_path, capsys, model_folder, previous_run, name):
    folder, fragments = _broken_model(model_folder, tmp_path / name, MODEL_CASES[name])
    before = snapshot(previous_run)
    code, err, seconds = run_cli(capsys, train_argv(previous_run, f"model.path={folder}"))
    assert_one_line(code, err, seconds, fragments, kind="model error")
    assert snapshot(previous_run) == before


def test_model_path_that_is_a_file(tmp_path, capsys, previous_run):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\0" * 16)
    code, err, seconds = run_cli(capsys, train_argv(previous_run, f"model.path={path}"))
    assert_one_line(code, err, seconds, [str(path), "is a file"], kind="model error")


def test_bad_model_folder_in_eval(tmp_path, capsys, model_folder):
    folder, fragments = _broken_model(model_folder, tmp_path / "m", pickle_only)
    out = tmp_path / "eval-out"
    code, err, seconds = run_cli(capsys, ["eval", "--model", str(folder), "--run-config", "none",
                                          "--output-dir", str(out), "--k", "0"])
    assert_one_line(code, err, seconds, fragments, kind="model error")
    assert not out.exists()


def test_the_intact_folder_still_loads(model_folder):
    """The checks refuse broken folders only: the saved folder itself loads."""
    from perceptrl.models.loading import check_model_folder, load_model_and_processor

    check_model_folder(model_folder)
    model, _ = load_model_and_processor(str(model_folder))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("device,fragment", [("cuda", "model.device=cuda: "), ("cuda:3", "model.device=cuda:3"),
                                             ("gpu", "model.device: 'gpu' is not a device")])
def test_unavailable_device(capsys, previous_run, device, fragment):
    before = snapshot(previous_run)
    code, err, seconds = run_cli(capsys, train_argv(previous_run, f"model.device={device}"))
    line = assert_one_line(code, err, seconds, [fragment], kind="model error")
    assert device == "gpu" or "model.device=auto or cpu" in line
    assert snapshot(previous_run) == before


# ----------------------------------------------------------------------------------------------
# Output folders that cannot be written, and resume paths: refused before any slow work
# ----------------------------------------------------------------------------------------------


def test_output_folder_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "out"
    path.write_text("a file\n")
    for out, fragments in [(path, [str(path), "is a file, not a folder"]),
                           (path / "run", [str(path / "run"), f"{path} is a file, not a folder"])]:
        code, err, seconds = run_cli(capsys, train_argv(out))
        assert_one_line(code, err, seconds, ["train.output_dir", *fragments], kind="output folder")
        assert path.read_text() == "a file\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits (see the read-only mount test)")
def test_output_folder_without_write_permission(capsys, previous_run):
    previous_run.chmod(0o555)
    try:
        before = snapshot(previous_run)
        code, err, seconds = run_cli(capsys, train_argv(previous_run))
        assert_one_line(code, err, seconds, [str(previous_run), "not writable"], kind="output folder")
        assert snapshot(previous_run) == before
    finally:
        previous_run.chmod(0o755)


def _mount_namespace_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=1m tmpfs /tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


MOUNTS = pytest.mark.skipif(not _mount_namespace_available(), reason="needs root and mount namespaces (unshare -m)")


def perceptrl_script() -> str:
    script = Path(sys.executable).with_name("perceptrl")
    return str(script) if script.exists() else f"{sys.executable} -m perceptrl.cli"


def in_mount_namespace(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace: its mounts vanish with it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


READ_ONLY_RUNS = """
import sys
from perceptrl import cli
for out in sys.argv[2:]:
    print("exit=%d" % cli.main(["train", "recipes/grpo.yaml", *sys.argv[1].split(), "train.output_dir=" + out]))
"""


@MOUNTS
def test_read_only_output_folder(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    out = mount / "out"
    (tmp_path / "runs.py").write_text(READ_ONLY_RUNS)
    result = in_mount_namespace(f"""
        set -e
        mount -t tmpfs -o size=4m tmpfs {mount}
        mkdir {out} && echo kept > {out}/notes.txt
        mount -o remount,ro {mount}
        {sys.executable} {tmp_path / "runs.py"} "{' '.join(SMALL)}" {out} {out}/new 2>{tmp_path}/err
        find {mount} -type f -exec sha256sum {{}} +
    """)
    err = (tmp_path / "err").read_text().splitlines()
    assert result.stdout.count("exit=2") == 2, result.stdout + result.stderr + "\n".join(err)
    assert err == [f"perceptrl: output folder: train.output_dir: {out}: {out} is on a read-only file system",
                   f"perceptrl: output folder: train.output_dir: {out}/new: {out} is on a read-only file system"], err
    hashes = [line.split()[1] for line in result.stdout.splitlines() if not line.startswith("exit=")]
    assert hashes == [f"{out}/notes.txt"], result.stdout


def test_resume_path_errors_come_at_once(tmp_path, capsys, previous_run):
    """Before: after 11-16 s of loading the model and evaluating it."""
    from perceptrl.train.checkpoint import save_checkpoint

    not_a_checkpoint = tmp_path / "nothing-here"
    not_a_checkpoint.mkdir()
    model = torch.nn.Linear(2, 2)
    late = save_checkpoint(tmp_path / "elsewhere", 5, model, torch.optim.AdamW(model.parameters()))
    before = snapshot(previous_run)
    for resume, fragments in [(not_a_checkpoint, [f"train.resume: '{not_a_checkpoint}'", "not a complete checkpoint"]),
                              (late, [f"train.resume: {late} is at step 5, past train.max_steps = 1"])]:
        code, err, seconds = run_cli(capsys, train_argv(previous_run, f"train.resume={resume}"))
        assert_one_line(code, err, seconds, fragments, kind="output folder")
        assert snapshot(previous_run) == before
    code, err, seconds = run_cli(capsys, train_argv(previous_run, "train.resume=latest"))
    assert_one_line(code, err, seconds, ["train.resume: 'latest' is neither auto, none, force"], kind="config error")


@pytest.mark.parametrize("value,fragment", [("[jsonl,mlflow]", "unknown logger(s) ['mlflow']"),
                                            ("[wandb]", "wandb is not installed (pip install 'perceptrl[wandb]')")])
def test_bad_report_to(capsys, previous_run, monkeypatch, value, fragment):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    before = snapshot(previous_run)
    code, err, seconds = run_cli(capsys, train_argv(previous_run, f"train.report_to={value}"))
    assert_one_line(code, err, seconds, ["train.report_to", fragment], kind="config error")
    assert snapshot(previous_run) == before


# ----------------------------------------------------------------------------------------------
# A full disk while writing a checkpoint
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch, writer):
    """The write of checkpoint-2 fails as a full disk makes it fail: safetensors says "No space left on
    device"; torch.save only says "unexpected pos" (then the free space decides). One line naming the
    file and the space needed; checkpoint-1 intact, no partial folder; the same command resumes from it."""
    from safetensors import SafetensorError

    from perceptrl.train import checkpoint as ck

    out = tmp_path / "out"
    argv = train_argv(out, "train.max_steps=3", "train.save_steps=1")
    real_save_file, real_torch_save, real_usage = ck.save_file, ck.torch.save, ck.shutil.disk_usage
    calls = []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2 and writer == "safetensors":
            Path(path).write_bytes(b"\0" * 1000)  # a partial file, as a full disk leaves it
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, path, metadata=metadata)

    def torch_save(obj, path, *args, **kwargs):
        if len(calls) == 2 and writer == "torch.save" and str(path).endswith("trainer_state.pt"):
            Path(path).write_bytes(b"\0" * 1000)
            monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=2**20))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_torch_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ck, "save_file", save_file)
    monkeypatch.setattr(ck.torch, "save", torch_save)
    code, err, _ = run_cli(capsys, argv)
    file = "model.safetensors" if writer == "safetensors" else "trainer_state.pt"
    line = assert_one_line(code, err, 0.0, [f"no space left on device writing checkpoint-2/{file} in {out}",
                                            "MiB free", "checkpoint-1 is intact: free space, then run the same command "
                                            "to resume from it"], kind="disk full")
    needed = float(line.split("needs about ")[1].split(" MiB")[0])
    assert 5.0 < needed < 10.0  # weights (2.3 MiB) and AdamW moments (4.5 MiB) of the 0.6 M-parameter model
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", "checkpoint"))) == ["checkpoint-1"]
    monkeypatch.undo()
    code, err, _ = run_cli(capsys, argv)
    assert code == 0 and f"resuming from {out / 'checkpoint-1'} at step 1 of 3" in err, err


def test_other_write_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only a full disk becomes one line: a write error with room to spare is a bug and propagates."""
    from perceptrl.train import checkpoint as ck

    def broken(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(ck, "save_file", broken)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="some other failure"):
        ck.save_checkpoint(tmp_path, 1, model, torch.optim.AdamW(model.parameters()))


@pytest.mark.slow  # ~20-35 s on a loaded 2-core machine; the test above checks the same in-process
@MOUNTS
def test_disk_full_on_a_real_small_file_system(tmp_path):
    """The same on a 10 MiB tmpfs: checkpoint-1 (6.8 MiB) fits, and the weights of checkpoint-2 (2.3 MiB),
    but not its optimizer state (4.5 MiB), which torch.save reports only as "unexpected pos"."""
    mount = tmp_path / "small"
    mount.mkdir()
    out = mount / "out"
    args = " ".join(SMALL)
    result = in_mount_namespace(f"""
        mount -t tmpfs -o size=10m tmpfs {mount} || exit 99
        {perceptrl_script()} train recipes/grpo.yaml {args} train.max_steps=3 train.save_steps=1 \
            train.output_dir={out} 2>{tmp_path}/err
        echo "exit=$?"
        ls -a {out} {out}/checkpoint-1
    """)
    err = (tmp_path / "err").read_text()
    assert "exit=2" in result.stdout, result.stdout + result.stderr + err
    assert err.count("\n") == 1 and err.startswith(
        f"perceptrl: disk full: no space left on device writing checkpoint-2/trainer_state.pt in {out}"), err
    assert "checkpoint-1 is intact" in err
    listing = result.stdout.split()
    assert "checkpoint-2" not in listing and not [n for n in listing if n.startswith(".tmp")]
    assert {"model.safetensors", "trainer_state.pt", "state.json"} <= set(listing)


# ----------------------------------------------------------------------------------------------
# Command options
# ----------------------------------------------------------------------------------------------


def test_eval_pass_k_above_k(tmp_path, capsys):
    out = tmp_path / "eval"
    code, err, seconds = run_cli(capsys, ["eval", "--model", "tiny", "--k", "2", "--pass-k", "8",
                                          "--output-dir", str(out)])
    assert_one_line(code, err, seconds, ["--pass-k 8", "--k (2 samples per prompt)"], kind="config error")
    assert not out.exists()


@pytest.mark.parametrize("argv,fragments", [
    (["--recipes", "nosuch"], ["--recipes: unknown nosuch", "grpo"]),
    (["--sizes", "huge"], ["--sizes: unknown huge; choose from tiny, medium"]),
    (["--quick", "--sizes", "tiny", "huge"], ["--sizes: unknown huge"]),
    (["--speedup-variants", "warp"], ["--speedup-variants: unknown warp"]),
    (["--steps", "2", "--warmup", "2"], ["--steps 2: must be more than --warmup (2)"]),
])
def test_bench_options(tmp_path, capsys, argv, fragments):
    out = tmp_path / "bench"
    code, err, seconds = run_cli(capsys, ["bench", *argv, "--output-dir", str(out)])
    assert_one_line(code, err, seconds, fragments, kind="config error")
    assert not out.exists()


def test_bench_quick_keeps_the_options_given():
    """--quick used to replace --sizes (and the other shape options) silently."""
    from perceptrl.bench.commands import QUICK, _fill_defaults

    def parse(*argv):
        args = cli.build_parser().parse_args(["bench", *argv])
        _fill_defaults(args)
        return args

    quick = parse("--quick", "--sizes", "medium", "--steps", "4")
    assert quick.sizes == ["medium"] and quick.steps == 4 and quick.prompts == QUICK["prompts"]
    assert parse("--quick").sizes == ["tiny"]
    assert parse().sizes == ["tiny", "medium"] and parse().steps == 5


def test_compare_with_an_unknown_recipe_creates_nothing(tmp_path, capsys):
    out = tmp_path / "compare"
    code, err, seconds = run_cli(capsys, ["compare", "--recipes", "grpo", "nosuch", "--output-dir", str(out)])
    assert_one_line(code, err, seconds, ["recipe 'nosuch' not found"])
    assert not out.exists()


def test_bare_recipe_name(capsys, tmp_path):
    """``perceptrl train grpo`` is ``perceptrl train recipes/grpo.yaml``, as in ``perceptrl compare``."""
    config, overrides = cli._split_config(argparse.Namespace(config="grpo", overrides=["train.lr=1e-4"]))
    assert Path(config) == ROOT / "recipes" / "grpo.yaml" and overrides == ["train.lr=1e-4"]
    code, err, seconds = run_cli(capsys, ["train", "nosuch", f"train.output_dir={tmp_path / 'out'}"])
    assert_one_line(code, err, seconds, ["nosuch: no such config file or recipe name", "grpo, "], kind="config error")
    assert not (tmp_path / "out").exists()
