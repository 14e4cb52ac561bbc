"""Local dataset files (perceptrl.data.files): formats, image sources, validation, skip mode, modes."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from perceptrl.config import ConfigError, DataConfig
from perceptrl.data.files import DataError, FileSource, load_samples, strip_image_placeholders
from perceptrl.data.images import to_rgb


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep the `datasets` parquet cache out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def rgb(seed: int, width: int = 32, height: int = 28) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows -> JSONL, JSON (a list) or parquet, by extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def folder(tmp_path):
    """A dataset folder with four PNGs in images/ and the originals in memory."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    originals = {name: rgb(i, 32 + 4 * i, 28 + 2 * i) for i, name in enumerate("abcd")}
    for name, image in originals.items():
        image.save(root / "images" / f"{name}.png")
    return root, originals


def cfg(files, **kw) -> DataConfig:
    return DataConfig(train_files=str(files), **kw)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet"])
def test_paths_load_in_every_format(folder, ext):
    root, originals = folder
    rows = [
        {"images": ["images/a.png"], "problem": "<image>How many dots?", "answer": "3"},
        {"images": ["images/b.png", "images/c.png"], "problem": "<image>\n<image>\nWhich is larger?", "answer": "B"},
        {"images": ["./images/d.png"], "problem": "Left of <image> is what?", "answer": "cat"},
        {"images": [str(root / "images" / "a.png")], "problem": "Absolute path inside.", "answer": "1/2"},
    ]
    path = write_rows(root / f"train.{ext}", rows)
    samples = load_samples(str(path), cfg(path))
    assert [s.id for s in samples] == [f"train-{i}" for i in range(4)]
    assert [s.problem for s in samples] == ["How many dots?", "Which is larger?", "Left of is what?", "Absolute path inside."]
    assert [s.answer for s in samples] == ["3", "B", "cat", "1/2"]
    assert [len(s.images) for s in samples] == [1, 2, 1, 1]
    expected = [["a"], ["b", "c"], ["d"], ["a"]]
    for sample, names in zip(samples, expected):
        assert sample.answer_type == "math" and sample.family == "external" and sample.vision_dependent is True
        assert sample.meta["file"] == str(path)
        for image, name in zip(sample.images, names):
            assert np.array_equal(pixels(image), np.asarray(originals[name]))


def test_embedded_bytes_in_parquet_as_datasets_writes_them(folder):
    import datasets

    root, originals = folder
    data = {
        "images": [[originals["a"]], [originals["b"], originals["c"]]],
        "problem": ["<image>What is shown?", "<image><image>Compare."],
        "answer": ["x", "y"],
    }
    features = datasets.Features({
        "images": datasets.Sequence(datasets.Image()), "problem": datasets.Value("string"), "answer": datasets.Value("string"),
    })
    path = root / "embedded.parquet"
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    assert pq.read_schema(path).field("images").type.value_type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    samples = load_samples(path, cfg(path))
    assert [len(s.images) for s in samples] == [1, 2]
    assert [s.problem for s in samples] == ["What is shown?", "Compare."]
    for image, name in zip(samples[0].images + samples[1].images, "abc"):
        assert np.array_equal(pixels(image), np.asarray(originals[name]))


def test_raw_bytes_dicts_and_data_uris(folder):
    root, originals = folder
    path = root / "raw.parquet"
    images = [[png_bytes(originals["a"])], [png_bytes(originals["b"]), png_bytes(originals["c"])]]
    pq.write_table(pa.table({"images": pa.array(images, type=pa.list_(pa.binary())), "problem": ["q0", "q1"],
                             "answer": ["0", "1"]}), path)
    samples = load_samples(path, cfg(path))
    got = [img for s in samples for img in s.images]
    assert len(got) == 3
    for image, name in zip(got, "abc"):
        assert np.array_equal(pixels(image), np.asarray(originals[name]))
    # JSON: a single {"path"} dict, a {"bytes": None, "path"} list, and a base64 data URI
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png_bytes(originals["d"])).decode()
    rows = [
        {"images": {"path": "images/a.png"}, "problem": "q", "answer": "1"},
        {"images": [{"bytes": None, "path": "images/b.png"}, uri], "problem": "q", "answer": "2"},
    ]
    path = write_rows(root / "dicts.jsonl", rows)
    samples = load_samples(path, cfg(path))
    got = [img for s in samples for img in s.images]
    for image, name in zip(got, "abd"):
        assert np.array_equal(pixels(image), np.asarray(originals[name]))


def test_single_raw_bytes_column(folder):
    root, originals = folder
    path = root / "single.parquet"
    pq.write_table(pa.table({"images": pa.array([png_bytes(originals["a"])], type=pa.binary()),
                             "problem": ["q"], "answer": [7]}), path)
    (sample,) = load_samples(path, cfg(path))
    assert np.array_equal(pixels(sample.images[0]), np.asarray(originals["a"]))
    assert sample.answer == "7"


def test_column_renaming_and_optional_columns(folder):
    root, originals = folder
    rows = [
        {"img": ["images/a.png"], "question": "How many?", "solution": 4, "kind": "integer", "uid": "u1",
         "family": "counting", "vision_dependent": False},
        {"img": "images/b.png", "question": "Is it red?", "solution": "yes", "kind": "yesno", "uid": 17},
        {"img": ["images/c.png"], "question": "Value?", "solution": 2.0, "uid": "u3"},
    ]
    path = write_rows(root / "renamed.jsonl", rows)
    config = cfg(path, image_key="img", prompt_key="question", answer_key="solution", answer_type_key="kind", id_key="uid")
    samples = load_samples(path, config)
    assert [s.id for s in samples] == ["u1", "17", "u3"]
    assert [s.answer for s in samples] == ["4", "yes", "2"]
    assert [s.answer_type for s in samples] == ["integer", "yesno", "math"]
    assert [s.family for s in samples] == ["counting", "external", "external"]
    assert [s.vision_dependent for s in samples] == [False, True, True]
    # with the default keys the same file is missing its columns, and the error lists what exists
    with pytest.raises(DataError, match=r"renamed\.jsonl: images: column not found .*available columns: img, question"):
        load_samples(path, cfg(path))


def test_several_files_comma_list_and_list(folder):
    root, _ = folder
    a = write_rows(root / "a.jsonl", [{"images": "images/a.png", "problem": "p", "answer": "1"}])
    b = write_rows(root / "b.parquet", [{"images": ["images/b.png"], "problem": "p", "answer": "2"}] * 2)
    for files in (f"{a}, {b}", [str(a), str(b)], str(root / "*.*l") + "," + str(b)):
        samples = load_samples(files, cfg(a))
        assert [s.id for s in samples] == ["a-0", "b-0", "b-1"]


def test_placeholders_are_stripped():
    assert strip_image_placeholders("<image>\n<image>\nWhat?") == ("What?", 2)
    assert strip_image_placeholders("A <image> B") == ("A B", 1)
    assert strip_image_placeholders("<image>") == ("", 1)
    assert strip_image_placeholders("  plain\nline  ") == ("plain\nline", 0)


def test_file_source_order_is_seeded_per_epoch(folder):
    root, _ = folder
    rows = [{"images": f"images/{'abcd'[i % 4]}.png", "problem": f"q{i}", "answer": str(i)} for i in range(12)]
    train = write_rows(root / "train.jsonl", rows)
    config = cfg(train)
    source = FileSource(config, seed=3)
    assert len(source) == 12 and source.val_samples() == []
    first = [source.train_sample(i).answer for i in range(36)]
    epochs = [first[k * 12 : (k + 1) * 12] for k in range(3)]
    for epoch in epochs:
        assert sorted(epoch, key=int) == [str(i) for i in range(12)]  # every row once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled each epoch
    assert epochs[0] != [str(i) for i in range(12)]
    again = FileSource(config, seed=3)
    assert [again.train_sample(i).answer for i in (35, 0, 13)] == [first[35], first[0], first[13]]  # random access
    other = FileSource(config, seed=4)
    assert [other.train_sample(i).answer for i in range(12)] != epochs[0]
    assert source.train_sample(5).meta["epoch"] == 0 and source.train_sample(29).meta["epoch"] == 2
    # lazily decoded: the source keeps references, not pixels
    assert not any(isinstance(ref, Image.Image) for record in source._train for ref in record.images)
    with pytest.raises(IndexError):
        source.train_sample(-1)


def test_val_samples_from_val_files(folder):
    root, originals = folder
    train = write_rows(root / "train.jsonl", [{"images": "images/a.png", "problem": "p", "answer": "1"}])
    val_rows = [{"images": "images/b.png", "problem": f"v{i}", "answer": str(i), "family": "fa" if i < 3 else "fb"}
                for i in range(5)]
    val = write_rows(root / "val.json", val_rows)
    source = FileSource(DataConfig(train_files=str(train), val_files=str(val), val_per_family=2), seed=0)
    val_samples = source.val_samples()
    assert [s.problem for s in val_samples] == ["v0", "v1", "v3", "v4"]
    assert np.array_equal(pixels(val_samples[0].images[0]), np.asarray(originals["b"]))


# ----------------------------------------------------------------------------------------------
# Malformed rows: one clear error each, and skip mode counts them
# ----------------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _file(root: Path, name: str, data: bytes) -> str:
    (root / "images" / name).write_bytes(data)
    return f"images/{name}"


def _outside(root: Path) -> Path:
    outside = root.parent / "outside.png"
    rgb(9).save(outside)
    return outside


def _symlink(root: Path) -> str:
    os.symlink(_outside(root), root / "images" / "link.png")
    return "images/link.png"


def _image(root: Path, name: str, size: int) -> str:
    rgb(5, size, size).save(root / "images" / name)
    return f"images/{name}"


# name -> (root -> column updates for the bad row, field regex, reason, message fragment, config overrides)
BAD_ROWS = {
    "null_answer": (lambda r: {"answer": None}, "answer", "empty_answer", "null", {}),
    "nan_answer": (lambda r: {"answer": float("nan")}, "answer", "empty_answer", "NaN", {}),
    "empty_answer": (lambda r: {"answer": "   "}, "answer", "empty_answer", "empty", {}),
    "list_answer": (lambda r: {"answer": ["1", "2"]}, "answer", "bad_answer", "string or number", {}),
    "int_problem": (lambda r: {"problem": 42}, "problem", "bad_problem", "expected a string, got int", {}),
    "null_problem": (lambda r: {"problem": None}, "problem", "bad_problem", "null", {}),
    "special_token_problem": (lambda r: {"problem": "<|image_pad|> what?"}, "problem", "bad_problem", "special token", {}),
    "long_problem": (lambda r: {"problem": "x" * 101}, "problem", "text_too_long", "max_prompt_chars", {"max_prompt_chars": 100}),
    "missing_image": (lambda r: {"images": ["images/nope.png"]}, r"images\[0\]", "missing_image", "no such file", {}),
    "dotdot_outside": (lambda r: {"images": [str(Path("..") / _outside(r).name)]}, r"images\[0\]", "outside_root", "outside the dataset folder", {}),
    "absolute_outside": (lambda r: {"images": [str(_outside(r))]}, r"images\[0\]", "outside_root", "refusing", {}),
    "symlink_outside": (lambda r: {"images": [_symlink(r)]}, r"images\[0\]", "outside_root", "outside the dataset folder", {}),
    "truncated": (lambda r: {"images": [_file(r, "t.png", png_bytes(rgb(1, 64, 64))[:300])]}, r"images\[0\]", "corrupt_image", "truncated", {}),
    "not_an_image": (lambda r: {"images": [_file(r, "notes.png", b"just some text\n" * 10)]}, r"images\[0\]", "not_an_image", "cannot identify", {}),
    "zero_bytes": (lambda r: {"images": [_file(r, "empty.png", b"")]}, r"images\[0\]", "empty_image", "0 bytes", {}),
    "zero_width": (lambda r: {"images": [_file(r, "zero.png", _png_header_only(0, 5))]}, r"images\[0\]", "empty_image", "zero width", {}),
    "over_our_cap": (lambda r: {"images": [_image(r, "big.png", 80)]}, r"images\[0\]", "image_too_large", "max_image_pixels", {"max_image_pixels": 5000}),
    "pil_bomb_warning": (lambda r: {"images": [_image(r, "bomb1.png", 60)]}, r"images\[0\]", "image_too_large", "MAX_IMAGE_PIXELS", {"max_image_pixels": 10**9}),
    "pil_bomb_error": (lambda r: {"images": [_image(r, "bomb2.png", 100)]}, r"images\[0\]", "image_too_large", "decompression", {"max_image_pixels": 10**9}),
    "second_image_bad": (lambda r: {"images": ["images/a.png", "images/missing.png"]}, r"images\[1\]", "missing_image", "no such file", {}),
    "no_images": (lambda r: {"images": []}, "images", "no_images", "at least one image", {}),
    "bad_image_value": (lambda r: {"images": 12}, "images", "bad_image_value", "got int", {}),
    "url_image": (lambda r: {"images": "https://example.com/x.png"}, "images", "remote_image", "URL", {}),
    "duplicate_id": (lambda r: {"id": "r0"}, "id", "duplicate_id", "first at", {}),
    "null_id": (lambda r: {"id": None}, "id", "bad_id", "null", {}),
    "bad_answer_type": (lambda r: {"answer_type": "essay"}, "answer_type", "bad_answer_type", "expected one of", {}),
    "bad_vision_dependent": (lambda r: {"vision_dependent": "maybe"}, "vision_dependent", "bad_vision_dependent", "true or false", {}),
}
BAD_ROW = 2


def _write_with_bad_row(root: Path, change, ext: str = "jsonl") -> Path:
    rows = [{"id": f"r{i}", "images": ["images/a.png"], "problem": f"q{i}", "answer": str(i)} for i in range(5)]
    rows[BAD_ROW].update(change(root))
    return write_rows(root / f"data.{ext}", rows)


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_row_is_named_then_skipped(folder, name, monkeypatch, caplog):
    change, field, reason, fragment, overrides = BAD_ROWS[name]
    if name.startswith("pil_bomb"):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # warns above 3000 px, raises above 6000 px
    root, _ = folder
    path = _write_with_bad_row(root, change)
    with pytest.raises(DataError) as info:
        FileSource(cfg(path, **overrides))
    message = str(info.value)
    assert re.match(rf"{re.escape(str(path))}: record {BAD_ROW} \(line {BAD_ROW + 1}\): {field}: ", message), message
    assert fragment in message, message
    assert info.value.reason == reason and info.value.row == BAD_ROW
    assert isinstance(info.value, ValueError)

    with caplog.at_level(logging.WARNING, logger="perceptrl.data.files"):
        source = FileSource(cfg(path, on_bad_sample="skip", **overrides))
    assert len(source) == 4
    assert source.train_report.skipped == {reason: 1} and source.train_report.rows == 5
    assert sorted(source.train_sample(i).id for i in range(4)) == ["r0", "r1", "r3", "r4"]
    summaries = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(summaries) == 1 and f"{reason}: 1" in summaries[0] and f"{path}: record {BAD_ROW} (line {BAD_ROW + 1})" in summaries[0]


def test_invalid_json_line(folder):
    root, _ = folder
    path = root / "broken.jsonl"
    good = json.dumps({"images": "images/a.png", "problem": "q", "answer": "1"})
    path.write_text(f"{good}\n{good}\n{{not json\n\n{good}\n[1, 2]\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: record 2 \(line 3\): invalid JSON"):
        load_samples(path, cfg(path))
    source = FileSource(cfg(path, on_bad_sample="skip"))
    assert len(source) == 3 and source.train_report.skipped == {"invalid_row": 2}


def test_corrupt_embedded_bytes_in_parquet(folder):
    root, originals = folder
    good = png_bytes(originals["a"])
    path = root / "bytes.parquet"
    images = [[{"bytes": good, "path": "a.png"}], [{"bytes": good[:200], "path": "cut.png"}], [{"bytes": good, "path": None}]]
    pq.write_table(pa.table({"images": images, "problem": ["a", "b", "c"], "answer": ["1", "2", "3"]}), path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: record 1: images\[0\]: corrupt or truncated"):
        load_samples(path, cfg(path))
    samples = load_samples(path, cfg(path), on_bad_sample="skip")
    assert [s.id for s in samples] == ["bytes-0", "bytes-2"]


def test_skip_mode_counts_several_reasons_and_refuses_empty_result(folder, caplog):
    root, _ = folder
    rows = [
        {"images": "images/a.png", "problem": "ok", "answer": "1"},
        {"images": "images/missing.png", "problem": "q", "answer": "1"},
        {"images": "images/a.png", "problem": "q", "answer": None},
        {"images": "images/a.png", "problem": "q", "answer": ""},
        {"images": "../../x.png", "problem": "q", "answer": "1"},
    ]
    path = write_rows(root / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="perceptrl.data.files"):
        source = FileSource(cfg(path, on_bad_sample="skip"))
    assert source.train_report.skipped == {"empty_answer": 2, "missing_image": 1, "outside_root": 1}
    (summary,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "skipped 4 of 5 rows" in summary and f"{path}: record 2 (line 3)" in summary and f"{path}: record 3 (line 4)" in summary
    bad_only = write_rows(root / "bad.jsonl", rows[1:])
    with pytest.raises(DataError, match="no valid rows"):
        FileSource(cfg(bad_only, on_bad_sample="skip"))


def test_file_level_errors(folder, tmp_path):
    root, _ = folder
    with pytest.raises(DataError, match="data file not found"):
        load_samples(root / "missing.jsonl", cfg(root))
    (root / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.csv: unknown extension '\.csv'"):
        load_samples(root / "data.csv", cfg(root))
    bad_json = root / "bad.json"
    bad_json.write_text('[{"problem": "x",]')
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON at line 1"):
        load_samples(bad_json, cfg(bad_json))
    no_answer = write_rows(root / "noanswer.parquet", [{"images": ["images/a.png"], "problem": "q", "label": "1"}])
    with pytest.raises(DataError, match=r"noanswer\.parquet: answer: column not found \(data\.answer_key = 'answer'\); "
                                        r"available columns: images, problem, label"):
        FileSource(cfg(no_answer, on_bad_sample="skip"))  # a missing column is never skipped
    with pytest.raises(ConfigError, match="on_bad_sample"):
        FileSource(cfg(no_answer, on_bad_sample="ignore"))


def test_image_dir_moves_the_root(folder, tmp_path):
    root, originals = folder
    data_dir = tmp_path / "meta"
    data_dir.mkdir()
    path = write_rows(data_dir / "train.jsonl", [{"images": "images/c.png", "problem": "q", "answer": "1"}])
    with pytest.raises(DataError, match="no such file"):
        load_samples(path, cfg(path))
    (sample,) = load_samples(path, cfg(path, image_dir=str(root)))
    assert np.array_equal(pixels(sample.images[0]), np.asarray(originals["c"]))


# ----------------------------------------------------------------------------------------------
# Mode conversions
# ----------------------------------------------------------------------------------------------


def _load_one(root: Path, image: Image.Image, name: str) -> Image.Image:
    image.save(root / "images" / name)
    path = write_rows(root / f"{Path(name).stem}.jsonl", [{"images": f"images/{name}", "problem": "q", "answer": "1"}])
    (sample,) = load_samples(path, cfg(path))
    return sample.images[0]


def test_grayscale_to_rgb(folder):
    root, _ = folder
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    out = pixels(_load_one(root, Image.fromarray(gray, mode="L"), "gray.png"))
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    bits = (np.indices((8, 8)).sum(0) % 2).astype(bool)
    out = pixels(to_rgb(Image.fromarray(bits)))  # mode "1"
    assert np.array_equal(out[..., 0], bits * 255)


def test_rgba_composited_over_white(folder):
    root, _ = folder
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    out = pixels(_load_one(root, Image.fromarray(np.dstack([colour, alpha]), mode="RGBA"), "rgba.png")).astype(int)
    a = alpha[..., None] / 255.0
    expected = colour * a + 255 * (1 - a)
    assert np.abs(out - expected).max() <= 1
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == tuple(colour[0, 1])
    la = Image.fromarray(np.dstack([colour[..., 0], alpha]), mode="LA")
    out = pixels(to_rgb(la)).astype(int)
    assert np.abs(out[..., 1] - (colour[..., 0] * a[..., 0] + 255 * (1 - a[..., 0]))).max() <= 1


def test_palette_to_rgb(folder):
    root, _ = folder
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30], [200, 200, 0]], dtype=np.uint8)
    index = np.random.default_rng(1).integers(0, 4, (9, 11)).astype(np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.flatten().tolist())
    out = pixels(_load_one(root, image, "palette.png"))
    assert np.array_equal(out, palette[index])
    # a transparent palette entry becomes white
    image.info["transparency"] = 2
    out = pixels(_load_one(root, image, "palette_t.png"))
    expected = palette[index].copy()
    expected[index == 2] = 255
    assert np.array_equal(out, expected)


def test_16_bit_grayscale_scaled_to_8_bit(folder):
    root, _ = folder
    values = np.array([[0, 257, 1000, 32768], [40000, 65280, 65534, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out = pixels(_load_one(root, image, "deep.png"))
    expected = np.rint(values / 257).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    assert out[0, 0, 0] == 0 and out[1, 3, 0] == 255
    out_i = pixels(to_rgb(Image.fromarray(values.astype(np.int32))))  # mode "I" reads as 16-bit too
    assert np.array_equal(out_i[..., 1], expected)
