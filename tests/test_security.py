"""Security: nothing executed that should not be, nothing written where it should not be.

- The source tree has no pickle, no ``torch.load`` without ``weights_only=True``, no ``eval`` /
  ``exec`` / ``compile`` / ``__import__`` calls, no ``trust_remote_code=True``, no unsafe YAML or
  numpy loading, no shell commands (an AST scan, so comments, docstrings and ``model.eval()`` do not
  count; the scanner is itself tested on a bad snippet).
- ``trust_remote_code`` is off unless the user sets it: a model folder whose config points at its
  own Python code loads without running it.
- Model output is never evaluated as code. sympy's ``parse_expr`` *does* evaluate Python (shown
  below); math-verify calls it on text extracted from the model's answer, but only on matches of a
  pattern of digits, ``.``, whitespace, ``+ - * / ^ ( )``, ``×`` and ``÷``: no name, attribute or
  string can reach ``eval``. The test records every ``parse_expr`` input while checking adversarial
  answers and fails if any input could name something.
- A training run writes nothing outside ``train.output_dir`` and the system temporary folder (HOME,
  cwd and TMPDIR fresh folders; every file-creating system call traced with strace when available).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "perceptrl"

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _name(node: ast.AST) -> str:
    """``a.b.c`` for an attribute chain, the id for a name, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _kw(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def scan(code: str, filename: str = "<snippet>") -> list[str]:
    """Unsafe constructs in Python source ``code``, as ``file:line: what`` strings."""
    found = []
    for node in ast.walk(ast.parse(code, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: imports {name}")
        elif isinstance(node, (ast.Name, ast.Attribute)) and "pickle" in _name(node).lower():
            found.append(f"{where}: uses {_name(node)}")
        elif isinstance(node, ast.Call):
            func = _name(node.func)
            if isinstance(node.func, ast.Name) and func in UNSAFE_BUILTINS:
                found.append(f"{where}: calls {func}()")
            if func == "torch.load":
                if _kw(node, "weights_only") is not True:
                    found.append(f"{where}: torch.load without weights_only=True")
            if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                found.append(f"{where}: {func} (use yaml.safe_load)")
            if func.endswith(".load") and func.split(".")[0] in ("np", "numpy") and _kw(node, "allow_pickle") is True:
                found.append(f"{where}: {func} with allow_pickle=True")
            if func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{where}: {func}")
            if func.startswith("subprocess.") and _kw(node, "shell") is True:
                found.append(f"{where}: {func} with shell=True")
            if _kw(node, "trust_remote_code") is True:
                found.append(f"{where}: trust_remote_code=True")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if isinstance(node.value, ast.Constant) and node.value.value is True:
                found.append(f"{where}: allow_pickle=True")
    return found


def test_scanner_catches_unsafe_code():
    bad = '''
import pickle
from joblib import load
import torch, yaml, numpy as np, subprocess, os
state = torch.load("x.pt")
ok = torch.load("x.pt", weights_only=True)
also_bad = torch.load("x.pt", weights_only=False)
cfg = yaml.load(open("c.yaml"))
arr = np.load("a.npy", allow_pickle=True)
value = eval(model_output)
exec(model_output)
subprocess.run(cmd, shell=True)
os.system("ls")
model = AutoModel.from_pretrained(path, trust_remote_code=True)
model.eval()  # fine
df = pandas.read_pickle("x")
'''
    found = scan(bad)
    expected = ["imports pickle", "imports joblib", "torch.load without", "yaml.load", "allow_pickle=True",
                "calls eval()", "calls exec()", "shell=True", "os.system", "trust_remote_code=True", "read_pickle"]
    for what in expected:
        assert any(what in f for f in found), (what, found)
    assert sum("torch.load without" in f for f in found) == 2  # the weights_only=True call is fine
    assert sum("eval" in f for f in found) == 1, found  # model.eval() is not eval()


def test_source_tree_has_no_unsafe_code():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20
    found = [f for path in files for f in scan(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)
    # and the loading code really uses the safe forms
    checkpoint = (SOURCE / "train" / "checkpoint.py").read_text()
    assert "weights_only=True" in checkpoint and "safetensors" in checkpoint


# ----------------------------------------------------------------------------------------------
# trust_remote_code
# ----------------------------------------------------------------------------------------------


def test_remote_code_in_a_model_folder_is_not_run(tmp_path, tiny):
    from perceptrl.config import ModelConfig
    from perceptrl.models.loading import load_model_and_processor, save_pretrained

    assert ModelConfig().trust_remote_code is False
    model, processor = tiny
    folder = save_pretrained(model, processor, tmp_path / "model")
    marker = tmp_path / "REMOTE_CODE_RAN"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    for module in ("modeling_evil", "processing_evil", "tokenization_evil"):
        (folder / f"{module}.py").write_text(payload + "class Evil:\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.Evil", "AutoModelForImageTextToText": "modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    for name, key, module in (("processor_config.json", "AutoProcessor", "processing_evil"),
                              ("tokenizer_config.json", "AutoTokenizer", "tokenization_evil")):
        path = folder / name
        if path.exists():
            raw = json.loads(path.read_text())
            raw["auto_map"] = {key: f"{module}.Evil"} if key != "AutoTokenizer" else {key: [f"{module}.Evil", None]}
            path.write_text(json.dumps(raw))
    try:
        loaded, _ = load_model_and_processor(str(folder))
    except ValueError as err:  # refusing is fine too, as long as nothing ran
        assert "trust_remote_code" in str(err)
    else:
        assert type(loaded).__name__ == type(model).__name__
    assert not marker.exists(), "code shipped in the model folder was executed"


# ----------------------------------------------------------------------------------------------
# Model output is never evaluated as code
# ----------------------------------------------------------------------------------------------


def test_sympy_parse_expr_does_evaluate_code():
    """Why the next test matters: parse_expr runs Python (sympy documents this)."""
    from sympy.parsing.sympy_parser import parse_expr

    assert parse_expr("__import__('os').getpid()") == os.getpid()


SAFE_EXPR = re.compile(r"[\d\s.+\-*/()^×÷]*")


def test_math_verify_never_hands_names_to_parse_expr(tmp_path, monkeypatch):
    import latex2sympy2_extended.latex2sympy2 as l2s
    import math_verify.parser as mv_parser
    import sympy.parsing.sympy_parser as sp_parser

    from perceptrl.rewards import _math_worker

    _math_worker.warm_up()  # sympy's own lazy imports (unit prefixes, ...) parse constant strings
    seen: list[str] = []

    def recording(original):
        def parse_expr(text, *args, **kwargs):
            seen.append(text)
            return original(text, *args, **kwargs)

        return parse_expr

    for module in (mv_parser, l2s, sp_parser):  # sympify(str) looks parse_expr up in sympy_parser
        monkeypatch.setattr(module, "parse_expr", recording(module.parse_expr))
    mv_parser.parse_expr_cached.cache_clear()
    _math_worker._parse_gold.cache_clear()

    marker = tmp_path / "PWNED"
    code = f"__import__('pathlib').Path('{marker}').touch()"
    answers = [
        code, f"1+2 {code}", f"1+2*{code}", f"(1+2) and {code}", f"final answer is 1+{code} I hope",
        f"answer: 2*({code})", f"\\text{{{code}}}", f"x = {code}", "1 + 2", "2^3 - 5", "(1+2)*1", "3*1.0",
        f"{code} = 1+2", "1+2 lambda: 0", "9**9**9**9", "1+2 ; import os", "[1+2]", "1+2 # comment",
    ]
    for pred in answers:
        _math_worker.check(pred, "3", soft_timeout=2.0)
    assert seen, "parse_expr was never reached: this test no longer exercises the expression path"
    # anything with a name in it that came from the answers (sympy may parse constant strings of its own)
    unsafe = [text for text in seen if not SAFE_EXPR.fullmatch(text.replace("**", "^"))
              and any(text.strip() in a.replace("^", "**") or text.strip() in a for a in answers)]
    assert not unsafe, f"model text with names reached parse_expr: {unsafe}"
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Nothing written outside output_dir and TMPDIR
# ----------------------------------------------------------------------------------------------


def _strace_works() -> bool:
    if not shutil.which("strace"):
        return False
    try:
        return subprocess.run(["strace", "-f", "-qq", "-e", "trace=none", "true"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_WRITE_CALL = re.compile(r"^(openat|open|creat|mkdir|mkdirat|rename|renameat2?|link|linkat|"
                         r"symlink|symlinkat|unlink|unlinkat|rmdir|truncate)\((.*)\)\s+=\s+(-?\d+)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _joined_calls(trace: str) -> list[str]:
    """``strace -f`` lines with each ``<unfinished ...>`` call joined to its ``<... resumed>`` rest."""
    pending: dict[str, str] = {}
    calls = []
    for line in trace.splitlines():
        pid, _, text = line.partition(" ")
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>\s?(.*)", text)
        if resumed:
            text = pending.pop(pid, "") + resumed.group(1)
        calls.append(text.strip())
    return calls


def written_paths(trace: str, cwd: Path) -> set[str]:
    """Paths created, written, renamed or deleted by successful calls in an ``strace -f`` log."""
    paths = set()
    for line in _joined_calls(trace):
        m = _WRITE_CALL.search(line)
        if not m or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
            continue
        for text in _QUOTED.findall(args):
            path = Path(text) if text.startswith("/") else cwd / text
            paths.add(os.path.normpath(str(path)))
    return paths


def test_training_writes_only_to_output_dir_and_tmpdir(tmp_path):
    import io

    import datasets
    import numpy as np
    from PIL import Image

    base = tmp_path / "fresh"
    home, cwd, tmpdir, out, data = (base / n for n in ("home", "cwd", "tmp", "out", "data"))
    for folder in (home, cwd, tmpdir, data):
        folder.mkdir(parents=True)
    rows = []
    for i in range(6):  # a parquet dataset: `datasets` caches its Arrow conversion somewhere
        buffer = io.BytesIO()
        Image.fromarray(np.full((56, 56, 3), 40 * i, dtype=np.uint8)).save(buffer, format="PNG")
        rows.append({"images": [{"bytes": buffer.getvalue(), "path": None}], "problem": "How bright?",
                     "answer": str(i), "answer_type": "integer"})
    datasets.Dataset.from_list(rows).to_parquet(str(data / "train.parquet"))
    before = {p for p in base.rglob("*")}

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "XDG_", "MPL", "TRANSFORMERS_", "TORCH", "PERCEPTRL_"))}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1")
    script = Path(sys.executable).with_name("perceptrl")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "perceptrl.cli"]
    cmd += ["train", str(ROOT / "recipes" / "grpo.yaml"), f"train.output_dir={out}", "train.max_steps=2",
            "train.save_steps=1", "train.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8",
            "train.progress=false", f"data.train_files={data / 'train.parquet'}",
            f"data.val_files={data / 'train.parquet'}", "data.val_per_family=2"]
    trace_file = tmp_path / "strace.log"
    traced = _strace_works()
    if traced:
        cmd = ["strace", "-f", "-qq", "-o", str(trace_file), "-e",
               "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
               "unlink,unlinkat,rmdir,truncate", *cmd]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file() and (out / "checkpoint-2").is_dir()

    allowed = (str(out), str(tmpdir))
    created = sorted(str(p) for p in set(base.rglob("*")) - before if not str(p).startswith(allowed))
    assert not created, f"files created outside output_dir and TMPDIR: {created}"
    if traced:
        ignore = ("/dev/null", "/dev/tty", "/proc/", "/dev/shm/sem.")  # POSIX semaphores: unlinked at once
        outside = sorted(p for p in written_paths(trace_file.read_text(), cwd)
                         if not p.startswith(allowed) and not p.startswith(ignore))
        assert not outside, f"system calls wrote outside output_dir and TMPDIR: {outside}"
    else:
        pytest.skip("strace unavailable: checked HOME and cwd only")  # the folder check above passed


# ----------------------------------------------------------------------------------------------
# A checkpoint with a malicious pickle is refused, not run
# ----------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this touches a file: what a malicious ``trainer_state.pt`` would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused(tmp_path, tiny, capsys):
    import torch

    from perceptrl import cli
    from perceptrl.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model, _ = tiny
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = tmp_path / "run"
    path = save_checkpoint(out, 1, model, optimizer, loop_state={"data_position": 2})
    marker = tmp_path / "UNPICKLED"
    torch.save({"optimizer": _Payload(marker)}, path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt: unreadable"):
        load_checkpoint(path, model, optimizer)
    assert not marker.exists()
    # through the CLI: resuming from it is a one-line error, and nothing ran
    code = cli.main(["train", "recipes/grpo.yaml", f"train.output_dir={out}", f"train.resume={path}",
                     "train.progress=false", "data.val_per_family=2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("perceptrl: checkpoint error: ") and "trainer_state.pt" in err
    assert not marker.exists()
