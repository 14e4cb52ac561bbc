"""Bad-input corpus, through the user-facing entry points.

Every case is generated in ``tmp_path`` (no binary fixtures) and run through ``perceptrl train``
(or ``perceptrl sft``) with a YAML config pointing at the bad dataset. Each must be answered with
exit code 2 and one line ``perceptrl: ...`` on stderr naming the input (file, row and field, or the
config key), without a Python traceback, within a few seconds, and before anything is written
(the output folder is not even created: the data is validated before the model is loaded). Where
the user asked to skip bad rows (``data.on_bad_sample: skip``) they are skipped, counted and logged,
and training runs. Images in grayscale, RGBA, palette and 16-bit load as the right RGB pixels.
Adversarial completions go through the reward function: scored wrong, fast, never executed.

The in-process cases call ``perceptrl.cli.main`` (the console script's function); a few cases also
run the installed ``perceptrl`` script in a subprocess to check the real stderr and exit code.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from perceptrl import cli

ROOT = Path(__file__).resolve().parents[1]
CASE_SECONDS = 5.0  # "a few seconds", generous for a loaded 2-core machine
SMALL = {"train": {"max_steps": 1, "progress": False},
         "rollout": {"n": 2, "max_new_tokens": 8}, "data": {"val_per_family": 2, "rollout_batch_size": 2}}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep the `datasets` parquet cache out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


# ----------------------------------------------------------------------------------------------
# Generated inputs
# ----------------------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_image(seed: int = 0, size: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_raw(width: int, height: int, idat: bytes = b"") -> bytes:
    """A grayscale 8-bit PNG with the given header size and IDAT payload."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_bytes() -> bytes:
    """A real decompression bomb: a ~100 KB PNG that decodes to 10000 x 10000 pixels (100 MB)."""
    side = 10_000
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one row of black pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_raw(side, side, data)


class Case:
    """A folder with a dataset, a config pointing at it, and what the error line must contain."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True)
        self.out = root / "out"
        (self.data / "good.png").write_bytes(png(rgb_image()))

    def row(self, **fields) -> dict:
        base = {"images": "good.png", "problem": "How many shapes?", "answer": "3"}
        base.update(fields)
        return {k: v for k, v in base.items() if v is not Ellipsis}

    def jsonl(self, rows: list, name: str = "train.jsonl") -> Path:
        path = self.data / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path

    def config(self, data: dict | None = None, **sections) -> Path:
        base = yaml.safe_load((ROOT / "recipes" / "grpo.yaml").read_text())
        for section, values in {**SMALL, **sections}.items():
            base.setdefault(section, {}).update(values)
        base["data"].update(data or {})
        base["train"]["output_dir"] = str(self.out)
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(base))
        return path


def run_cli(capsys, argv: list[str]) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    seconds = time.perf_counter() - t0
    return code, capsys.readouterr().err, seconds


def assert_clear_error(code: int, err: str, seconds: float, must_contain: list[str]) -> str:
    lines = [line for line in err.splitlines() if line.startswith("perceptrl:")]
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for fragment in must_contain:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert seconds < CASE_SECONDS, f"took {seconds:.1f} s"
    return lines[0]


# ----------------------------------------------------------------------------------------------
# The corpus: each builder makes its case and returns (command, config overrides, expected fragments)
# ----------------------------------------------------------------------------------------------


def _image_file_case(content: bytes, name: str = "bad.png"):
    def build(c: Case):
        (c.data / name).write_bytes(content)
        f = c.jsonl([c.row(), c.row(images=name)])
        return {"train_files": str(f)}, [f"{f}: record 1 (line 2): images:"]

    return build


def truncated_png(c: Case):
    data = png(rgb_image(1))
    return _image_file_case(data[: len(data) // 2])(c) + (["truncated"],)


def corrupt_png(c: Case):
    data = bytearray(png(rgb_image(2)))
    data[60:200] = np.random.default_rng(0).integers(0, 256, 140, dtype=np.uint8).tobytes()  # garbage in the pixel stream
    return _image_file_case(bytes(data))(c)


def missing_image(c: Case):
    f = c.jsonl([c.row(images="nope/missing.png")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "missing.png", "no such file"]


def zero_byte_image(c: Case):
    return _image_file_case(b"")(c) + (["0 bytes"],)


def zero_size_png(c: Case):
    return _image_file_case(png_raw(0, 0))(c) + (["zero width or height"],)


def decompression_bomb(c: Case, bomb: bytes):
    (c.data / "bomb.png").write_bytes(bomb)
    f = c.jsonl([c.row(images="bomb.png")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "decompression bomb"]


def image_over_pixel_cap(c: Case):
    f = c.jsonl([c.row()])
    return {"train_files": str(f), "max_image_pixels": 1000}, [f"{f}: record 0 (line 1): images:", "data.max_image_pixels = 1000"]


def not_an_image(c: Case):
    return _image_file_case(b"#!/bin/sh\necho this is a shell script\n", "script.png")(c) + (["cannot identify"],)


def remote_image(c: Case):
    f = c.jsonl([c.row(images="https://example.com/cat.png")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "URL"]


def path_escapes_with_dotdot(c: Case):
    (c.root / "secret.png").write_bytes(png(rgb_image(3)))
    f = c.jsonl([c.row(images="../secret.png")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "outside the dataset folder"]


def absolute_path_outside(c: Case):
    f = c.jsonl([c.row(images="/etc/passwd")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "outside the dataset folder"]


def symlink_escape(c: Case):
    (c.root / "secret.png").write_bytes(png(rgb_image(3)))
    (c.data / "link.png").symlink_to(c.root / "secret.png")
    f = c.jsonl([c.row(), c.row(), c.row(images=["good.png", "link.png"])])
    return {"train_files": str(f)}, [f"{f}: record 2 (line 3): images[1]:", "outside the dataset folder"]


def bad_base64_image(c: Case):
    f = c.jsonl([c.row(images="data:image/png;base64,@@@not-base64@@@")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "base64"]


def image_cell_wrong_type(c: Case):
    f = c.jsonl([c.row(images=42)])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "int"]


def no_images(c: Case):
    f = c.jsonl([c.row(images=[])])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): images:", "no images"]


def missing_answer(c: Case):
    f = c.jsonl([c.row(), c.row(answer=...)])
    return {"train_files": str(f)}, [f"{f}: record 1 (line 2): answer:", "null"]


def null_answer(c: Case):
    f = c.jsonl([c.row(answer=None)])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): answer:", "null"]


def nan_answer(c: Case):
    f = c.jsonl(['{"images": "good.png", "problem": "How many?", "answer": NaN}'])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): answer:", "NaN"]


def non_string_problem(c: Case):
    f = c.jsonl([c.row(problem=12345)])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): problem:", "expected a string"]


def special_token_in_problem(c: Case):
    f = c.jsonl([c.row(problem="Count <|image_pad|> these")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): problem:", "special token"]


def very_long_problem(c: Case):
    f = c.jsonl([c.row(problem="x" * 100_000)])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): problem:", "data.max_prompt_chars"]


def duplicate_ids(c: Case):
    f = c.jsonl([c.row(id="a"), c.row(id="b"), c.row(id="a")])
    return {"train_files": str(f)}, [f"{f}: record 2 (line 3): id:", "duplicate id 'a'", f"{f}: record 0 (line 1)"]


def unknown_answer_type(c: Case):
    f = c.jsonl([c.row(answer_type="poem")])
    return {"train_files": str(f)}, [f"{f}: record 0 (line 1): answer_type:", "poem"]


def malformed_json_line(c: Case):
    f = c.jsonl([c.row(), '{"images": "good.png", "problem": "cut short'])
    return {"train_files": str(f)}, [f"{f}: record 1 (line 2):", "invalid JSON"]


def bad_row_after_blank_lines(c: Case):
    """Record numbers skip blank lines, line numbers do not: an editor's line is named too."""
    f = c.data / "train.jsonl"
    f.write_text("\n".join([json.dumps(c.row()), "", "", json.dumps(c.row(answer=None)), ""]))
    return {"train_files": str(f)}, [f"{f}: record 1 (line 4): answer:", "null"]


def missing_column(c: Case):
    f = c.jsonl([{"image": "good.png", "problem": "How many?", "answer": "3"}])
    return {"train_files": str(f)}, [f"{f}: images:", "column not found", "data.image_key"]


def data_file_not_found(c: Case):
    f = c.data / "absent.jsonl"
    return {"train_files": str(f)}, [f"{f}:", "not found"]


def unknown_extension(c: Case):
    f = c.data / "train.csv"
    f.write_text("images,problem,answer\ngood.png,How many?,3\n")
    return {"train_files": str(f)}, [f"{f}:", "unknown extension '.csv'"]


def not_parquet(c: Case):
    f = c.data / "train.parquet"
    f.write_bytes(b"PAR1 this is not really parquet")
    return {"train_files": str(f)}, [f"{f}:", "cannot read parquet"]


def bad_validation_file(c: Case):
    good = c.jsonl([c.row()])
    val = c.jsonl([c.row(), c.row(answer=None)], name="val.jsonl")
    return {"train_files": str(good), "val_files": str(val)}, [f"{val}: record 1 (line 2): answer:"]


def image_dir_missing(c: Case):
    f = c.jsonl([c.row()])
    return {"train_files": str(f), "image_dir": str(c.root / "no-such-dir")}, ["no-such-dir", "data.image_dir"]


def skip_mode_but_nothing_valid(c: Case):
    f = c.jsonl([c.row(answer=None), c.row(images="missing.png")])
    return ({"train_files": str(f), "on_bad_sample": "skip"},
            [str(f), "no valid rows", "skipped 2 of 2 rows", "empty_answer: 1", "missing_image: 1"])


DATA_CASES = {
    "truncated_png": truncated_png,
    "corrupt_png": corrupt_png,
    "missing_image": missing_image,
    "zero_byte_image": zero_byte_image,
    "zero_size_png": zero_size_png,
    "decompression_bomb": decompression_bomb,
    "image_over_pixel_cap": image_over_pixel_cap,
    "not_an_image": not_an_image,
    "remote_image": remote_image,
    "path_escapes_with_dotdot": path_escapes_with_dotdot,
    "absolute_path_outside": absolute_path_outside,
    "symlink_escape": symlink_escape,
    "bad_base64_image": bad_base64_image,
    "image_cell_wrong_type": image_cell_wrong_type,
    "no_images": no_images,
    "missing_answer": missing_answer,
    "null_answer": null_answer,
    "nan_answer": nan_answer,
    "non_string_problem": non_string_problem,
    "special_token_in_problem": special_token_in_problem,
    "very_long_problem": very_long_problem,
    "duplicate_ids": duplicate_ids,
    "unknown_answer_type": unknown_answer_type,
    "malformed_json_line": malformed_json_line,
    "bad_row_after_blank_lines": bad_row_after_blank_lines,
    "missing_column": missing_column,
    "data_file_not_found": data_file_not_found,
    "unknown_extension": unknown_extension,
    "not_parquet": not_parquet,
    "bad_validation_file": bad_validation_file,
    "image_dir_missing": image_dir_missing,
    "skip_mode_but_nothing_valid": skip_mode_but_nothing_valid,
}


SFT_CASES = ["missing_image", "nan_answer", "path_escapes_with_dotdot", "duplicate_ids"]  # sft shares the loader


@pytest.mark.parametrize("command,name", [("train", n) for n in sorted(DATA_CASES)] + [("sft", n) for n in SFT_CASES])
def test_bad_data_is_named(tmp_path, capsys, bomb_bytes, name, command):
    case = Case(tmp_path)
    build = DATA_CASES[name]
    built = build(case, bomb_bytes) if name == "decompression_bomb" else build(case)
    data, expected = built[0], [*built[1], *(built[2] if len(built) > 2 else [])]
    code, err, seconds = run_cli(capsys, [command, str(case.config(data))])
    line = assert_clear_error(code, err, seconds, expected)
    assert line.startswith("perceptrl: data error: ")
    assert not case.out.exists(), "the run started (output folder created) before the data was validated"


# ----------------------------------------------------------------------------------------------
# Config and command-line cases
# ----------------------------------------------------------------------------------------------


def _config_text(c: Case, text: str) -> list[str]:
    path = c.root / "bad.yaml"
    path.write_text(text)
    return [str(path)]


CONFIG_CASES = {
    # name: (argv after "train", fragments)
    "malformed_yaml": (lambda c: _config_text(c, "train:\n  lr: [1e-5\n  max_steps: 3\n"),
                       ["bad.yaml", "malformed YAML", "line"]),
    "top_level_not_a_mapping": (lambda c: _config_text(c, "- just\n- a list\n"), ["bad.yaml", "mapping"]),
    "unknown_recipe_key": (lambda c: _config_text(c, "train:\n  learning_rate: 1e-5\n"),
                           ["bad.yaml", "unknown key 'train.learning_rate'"]),
    "unknown_override_key": (lambda c: ["recipes/grpo.yaml", "train.learnig_rate=1e-5"],
                             ["override 'train.learnig_rate=1e-5': unknown key 'train.learnig_rate'"]),
    "negative_learning_rate": (lambda c: ["recipes/grpo.yaml", "train.lr=-1e-5"], ["train.lr must be > 0"]),
    "group_of_one": (lambda c: ["recipes/grpo.yaml", "rollout.n=1"], ["rollout.n must be >= 2", "group advantage"]),
    "eps_high_below_eps_low": (lambda c: ["recipes/grpo.yaml", "algorithm.eps_low=0.3", "algorithm.eps_high=0.2"],
                               ["algorithm.eps_high must be >= algorithm.eps_low"]),
    "wrong_type": (lambda c: ["recipes/grpo.yaml", "train.max_steps=many"], ["train.max_steps", "integer"]),
    "nan_hyperparameter": (lambda c: ["recipes/grpo.yaml", "train.lr=.nan"], ["train.lr", "NaN"]),
    "config_file_not_found": (lambda c: [str(c.root / "nope.yaml")], ["nope.yaml", "not found"]),
    "unknown_template": (lambda c: ["recipes/grpo.yaml", "data.template=poem"], ["data.template", "poem"]),
    "unknown_family": (lambda c: ["recipes/grpo.yaml", "data.families=[unicorns]"], ["data.families", "unicorns"]),
    "bad_on_bad_sample": (lambda c: ["recipes/grpo.yaml", "data.on_bad_sample=ignore"], ["data.on_bad_sample"]),
    "model_path_missing": (lambda c: ["recipes/grpo.yaml", f"model.path={c.root / 'no-model'}"],
                           ["model.path", "no-model", "does not exist"]),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_bad_config_is_named(tmp_path, capsys, name):
    case = Case(tmp_path)
    build, expected = CONFIG_CASES[name]
    argv = ["train", *build(case), f"train.output_dir={case.out}"]
    code, err, seconds = run_cli(capsys, argv)
    line = assert_clear_error(code, err, seconds, expected)
    if name == "unknown_override_key":  # the recipe file is not to blame
        assert "grpo.yaml" not in line, line


# ----------------------------------------------------------------------------------------------
# The real console script: stderr is exactly one line, exit code 2
# ----------------------------------------------------------------------------------------------


def perceptrl_script() -> list[str]:
    script = Path(sys.executable).with_name("perceptrl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "perceptrl.cli"]


@pytest.mark.parametrize("name", ["missing_image", "nan_answer", "not_parquet"])
def test_console_script_prints_one_line(tmp_path, name):
    case = Case(tmp_path)
    data, expected = DATA_CASES[name](case)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    result = subprocess.run([*perceptrl_script(), "train", str(case.config(data))], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("perceptrl: data error: "), result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert result.stdout == ""


# ----------------------------------------------------------------------------------------------
# Image modes that must load correctly, and skip mode end to end
# ----------------------------------------------------------------------------------------------


def mode_images() -> dict[str, tuple[Image.Image, tuple[int, int, int]]]:
    """An image per mode and the RGB value every pixel must have after loading."""
    size = (56, 56)
    palette = Image.new("P", size, 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 1
    sixteen = Image.fromarray(np.full((56, 56), 257 * 100, dtype=np.uint16))
    return {
        "gray.png": (Image.new("L", size, 77), (77, 77, 77)),
        "rgba_opaque.png": (Image.new("RGBA", size, (0, 0, 255, 255)), (0, 0, 255)),
        "rgba_clear.png": (Image.new("RGBA", size, (255, 0, 0, 0)), (255, 255, 255)),
        "la_half.png": (Image.new("LA", size, (0, 128)), (127, 127, 127)),
        "palette.png": (palette, (10, 200, 30)),
        "palette_transparent.png": (transparent_palette, (255, 255, 255)),
        "gray16.png": (sixteen, (100, 100, 100)),
        "bilevel.png": (Image.new("1", size, 1), (255, 255, 255)),
    }


def test_image_modes_load_as_rgb(tmp_path):
    from perceptrl.config import DataConfig
    from perceptrl.data.files import load_samples

    case = Case(tmp_path)
    rows = []
    for name, (image, _) in mode_images().items():
        image.save(case.data / name)
        rows.append(case.row(images=name, id=name))
    samples = load_samples(case.jsonl(rows), DataConfig())
    for sample in samples:
        expected = mode_images()[sample.id][1]
        pixels = np.asarray(sample.images[0])
        assert sample.images[0].mode == "RGB" and pixels.dtype == np.uint8, sample.id
        assert np.abs(pixels.astype(int) - expected).max() <= 1, (sample.id, pixels[0, 0], expected)
    assert Image.open(case.data / "gray16.png").mode.startswith("I")  # really a 16-bit file


def test_skip_mode_trains_and_reports_skips(tmp_path):
    """``data.on_bad_sample: skip`` through the console script: bad rows are skipped, counted per
    reason in one warning line, and training runs on the rest (all image modes)."""
    case = Case(tmp_path)
    rows = []
    for name, (image, _) in mode_images().items():
        image.save(case.data / name)
        rows.append(case.row(images=name))
    (case.data / "trunc.png").write_bytes(png(rgb_image(1))[:100])
    rows += [case.row(answer=None), case.row(images="trunc.png"), case.row(images="../x.png"),
             case.row(problem=7), '{"broken json']
    f = case.jsonl(rows)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    t0 = time.perf_counter()
    result = subprocess.run([*perceptrl_script(), "train", str(case.config({"train_files": str(f), "val_files": str(f),
                                                                          "on_bad_sample": "skip"}))],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = [line for line in result.stderr.splitlines() if "skipped 5 of 13 rows" in line]
    assert len(summary) == 2, result.stderr  # once for the training files, once for validation
    for reason in ("empty_answer: 1", "corrupt_image: 1", "outside_root: 1", "bad_problem: 1", "invalid_row: 1"):
        assert reason in summary[0], summary[0]
    assert f"{f}: record 8 (line 9) (answer)" in summary[0]
    assert "Traceback" not in result.stderr
    assert (case.out / "final" / "model.safetensors").is_file()
    print(f"skip-mode run: {time.perf_counter() - t0:.1f} s")


# ----------------------------------------------------------------------------------------------
# Adversarial completions for the verifier
# ----------------------------------------------------------------------------------------------


def adversarial_completions(marker: Path) -> dict[str, str]:
    code = f"__import__('pathlib').Path('{marker}').touch()"
    return {
        "power_tower": r"\boxed{9^{9^{9^{9}}}}",
        "huge_power": r"\boxed{123456789^{123456789}}",
        "huge_factorial": r"\boxed{100000!}",
        "deep_nesting": r"\boxed{" + "{" * 40 + "3" + "}" * 40 + "}",
        "nested_boxes": r"\boxed{" * 30 + "4" + "}" * 30,
        "two_different_boxes": r"\boxed{3} or maybe \boxed{4}",
        "unclosed_box": r"The answer is \boxed{3",
        "empty_box": r"\boxed{}",
        "very_long": "think " * 50_000 + r"\boxed{" + "1+" * 5_000 + "2}",
        "python_code": r"\boxed{" + code + "}",
        "python_exec": r"\boxed{exec(\"" + code.replace("'", "\\'") + "\")}",
        "plain_expression_code": "The final answer is 1+2 " + code + " I hope",
        "latex_command_injection": r"\boxed{\input{/etc/passwd}\write18{touch " + str(marker) + "}}",
        "nul_and_control": "\\boxed{\x00\x1b[2J}",
        "lone_surrogate": "\\boxed{\ud800}",
        "division_by_zero": r"\boxed{\frac{1}{0}}",
        "integral_timeout": r"\boxed{\int_0^{\infty} e^{-x^{99}} \sin(x^{77}) dx}",
    }


def test_adversarial_completions_are_wrong_fast_and_inert(tmp_path, monkeypatch):
    from perceptrl.data.types import Sample
    from perceptrl.rewards import RewardFunction

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    reward = RewardFunction("boxed")
    gold = Sample(id="g", images=[], problem="How many?", answer="3", answer_type="math")
    reward([r"\boxed{x+1}"], [gold])  # wait for the math-verify workers to start (once per process)
    slowest = 0.0
    for name, completion in adversarial_completions(marker).items():
        t0 = time.perf_counter()
        scores = reward([completion], [gold])
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        assert scores["accuracy"] == [0.0], name
        assert all(math.isfinite(v) for v in scores["reward"]), name
        assert seconds < CASE_SECONDS, f"{name}: {seconds:.1f} s"
    assert not marker.exists(), "a completion was executed as code"
    # the reward can still say yes (the checks above can fail)
    assert reward([r"so \boxed{3}"], [gold])["accuracy"] == [1.0]
    assert reward([r"\boxed{\frac{6}{2}}"], [gold])["accuracy"] == [1.0]
    print(f"adversarial completions: slowest {slowest:.2f} s")


@pytest.mark.xfail(strict=True, reason="known verifier leniency (docs/RELIABILITY.md): when LaTeX parsing fails on junk, "
                   "math-verify falls back to extracting a number from the text")
def test_junk_around_a_number_is_not_accepted():
    from perceptrl.rewards.verifiers import verify

    assert not verify("2[2J 3", "3", "math")


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ValueError("also a bug"), KeyError("bug")])
def test_real_bugs_keep_their_traceback(monkeypatch, error):
    """Only input errors become one line; anything else propagates (the traceback is printed)."""
    from perceptrl.train import rl

    def broken(config, policy=None):
        raise error

    monkeypatch.setattr(rl, "train", broken)
    with pytest.raises(type(error)):
        cli.main(["train", "recipes/grpo.yaml", "train.progress=false"])
