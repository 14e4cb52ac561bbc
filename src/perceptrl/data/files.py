"""Local dataset files (JSONL, JSON, parquet) in the EasyR1 / PAPO / ViRL39K convention -> ``Sample``.

Columns (names configurable): ``data.image_key`` (default ``images``), ``data.prompt_key``
(``problem``), ``data.answer_key`` (``answer``); optional ``data.answer_type_key`` (``answer_type``,
one of ``perceptrl.data.types.ANSWER_TYPES``; default ``math``), ``data.id_key`` (``id``; default id
``"<file stem>-<row>"``), ``family`` (default ``"external"``) and ``vision_dependent`` (default true).
Columns the loader does not use are ignored.

Files: ``data.train_files`` / ``data.val_files`` is one path, a comma-separated list, a list, or glob
patterns; the format comes from the extension: ``.jsonl``/``.ndjson`` (one JSON object per line),
``.json`` (a list of objects, an object of equal-length column lists, or JSON Lines), ``.parquet``
(read with Hugging Face ``datasets``, memory-mapped from its cache, so embedded image bytes are not
held in RAM). JSON is parsed with the standard library rather than ``datasets``: ``datasets`` turns a
column of mixed strings and numbers into numbers (``"03"`` became ``3``) and reports a bad line
without its number, whereas here values are kept exactly and errors name the row.

Images: the image cell is one image or a list of them; an image is a path (relative to the data
file's folder, or to ``data.image_dir`` if set; an absolute path must also lie inside that folder:
symlinks and ``..`` are resolved and anything escaping it is refused), raw encoded bytes (a parquet
binary column), a ``{"bytes": ..., "path": ...}`` dict as ``datasets`` writes an ``Image`` feature
(the bytes win; ``path`` is then only a name), or a ``data:image/...;base64,...`` URI. They are
converted to RGB 8-bit (``perceptrl.data.images.to_rgb``: alpha over white, 16-bit scaled).

Text: ``<image>`` placeholders are removed from the problem (the policy's chat template inserts the
image tokens itself, one per image, before the text); a problem that was nothing but placeholders
becomes ``""`` (the question is in the image). Answers may be strings or numbers (``3.0`` -> ``"3"``).

Validation happens up front, when the source is built: every row is parsed and every image opened,
size-checked and fully decoded once (then dropped: images are decoded again lazily when a sample is
requested, so memory stays at the text plus, for JSON, any embedded bytes). A bad row raises
``DataError`` whose message starts ``<file>: record <N> (line <M>): <field>:`` (``N`` is the 0-based
record index, as in the default id and in ``datasets``; ``M`` the 1-based line an editor shows, for
JSON Lines files, where blank lines are not records; parquet and JSON arrays have no lines). With
``data.on_bad_sample: skip`` bad rows are skipped instead, counted per reason, and one warning line
summarises them (with the first few locations); if no valid row is left, ``DataError`` is raised.
File-level problems (missing file, unknown extension, missing required column, unreadable parquet)
always raise. Ids must be unique across the files of one load when an id column exists.

API: ``load_samples(files, data_cfg)`` (eval: every valid row, decoded) and ``FileSource(data_cfg,
seed)`` (training: ``train_sample(index)`` walks the training rows in a shuffled order that is new
each epoch and a pure function of ``(seed, epoch)``; ``val_samples()`` returns the first
``data.val_per_family`` rows of each family of ``data.val_files``, in file order, or ``[]`` when no
validation files are given).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from perceptrl.data.images import ImageError, decode_image, image_source, split_image_cell
from perceptrl.data.types import ANSWER_TYPES, Sample

logger = logging.getLogger(__name__)

__all__ = ["DataError", "FileSource", "LoadReport", "load_samples", "parse_file_list", "strip_image_placeholders"]

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
FAMILY_KEY = "family"
VISION_DEPENDENT_KEY = "vision_dependent"
# Special tokens of the Qwen-VL chat template: in a problem they would break the image-token count.
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
SKIP_HINT = "(set data.on_bad_sample=skip to skip bad rows)"
_EXAMPLES_PER_REASON = 5


def _where(file: str | Path, row: int | None, line: int | None = None) -> str:
    """``<file>: record <row> (line <line>)``, ``<file>: record <row>``, or ``<file>``."""
    if row is None:
        return str(file)
    return f"{file}: record {row}" + (f" (line {line})" if line is not None else "")


class DataError(ValueError):
    """A data file or one of its rows is unusable. The message starts ``<file>: record <row> (line
    <line>): <field>:`` (``<file>: <field>:`` for file-level problems); the parts are also attributes."""

    def __init__(self, file: str | Path, row: int | None, field: str | None, message: str, reason: str = "invalid",
                 line: int | None = None):
        location = _where(file, row, line)
        super().__init__(f"{location}: {field}: {message}" if field else f"{location}: {message}")
        self.file, self.row, self.field, self.reason, self.detail = str(file), row, field, reason, message
        self.line, self.location = line, location


# ----------------------------------------------------------------------------------------------
# Reading one file into a table of rows
# ----------------------------------------------------------------------------------------------


class _Table:
    """One data file: its column names, its rows as dicts (a row may be a parse error instead)."""

    path: Path
    columns: list[str]
    num_rows: int

    def rows(self, columns: Sequence[str]) -> Iterator[tuple[int, dict | DataError]]:
        raise NotImplementedError

    def cell(self, row: int, column: str) -> Any:
        raise NotImplementedError

    def line_of(self, row: int) -> int | None:
        """The 1-based line of the file where record ``row`` is (None: a format without lines)."""
        return None

    keeps_cells = False  # True: embedded image bytes can be fetched again cheaply (memory-mapped)


class _JsonTable(_Table):
    def __init__(self, path: Path, kind: str):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(path, None, None, f"not UTF-8 text ({err})", "unreadable") from None
        except OSError as err:
            raise DataError(path, None, None, f"cannot read file ({err})", "unreadable") from None
        self._rows: list[dict | DataError] = []
        self._lines: list[int] = []  # JSON Lines: the line of each record
        if kind == "json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                if err.msg != "Extra data":
                    raise DataError(path, None, None, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}",
                                    "unreadable") from None
                kind = "jsonl"  # a .json file holding JSON Lines, as `datasets` also accepts
            else:
                self._rows = self._records(data)
        if kind == "jsonl":
            # split on newlines only: str.splitlines would also split at U+2028 and the like, which
            # JSON allows raw inside strings
            for number, line in enumerate(text.split("\n"), start=1):
                if not line.strip():
                    continue
                row = len(self._rows)
                self._lines.append(number)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    self._rows.append(DataError(path, row, None, f"invalid JSON ({err.msg} at column {err.colno})",
                                                "invalid_row", line=number))
                    continue
                if not isinstance(record, dict):
                    record = DataError(path, row, None, f"expected a JSON object, got {type(record).__name__}",
                                       "invalid_row", line=number)
                self._rows.append(record)
        columns: dict[str, None] = {}
        for record in self._rows:
            if isinstance(record, dict):
                columns.update(dict.fromkeys(record))
        self.columns = list(columns)
        self.num_rows = len(self._rows)

    def _records(self, data: Any) -> list[dict | DataError]:
        if isinstance(data, list):
            return [
                r if isinstance(r, dict)
                else DataError(self.path, i, None, f"expected a JSON object, got {type(r).__name__}", "invalid_row")
                for i, r in enumerate(data)
            ]
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            lengths = {len(v) for v in data.values()}
            if len(lengths) == 1:
                (n,) = lengths
                return [{k: v[i] for k, v in data.items()} for i in range(n)]
            raise DataError(self.path, None, None, f"columns have different lengths ({sorted(lengths)})", "unreadable")
        raise DataError(
            self.path, None, None,
            f"top-level JSON {type(data).__name__}: expected a list of row objects or an object of equal-length column lists",
            "unreadable",
        )

    def rows(self, columns):
        for i, record in enumerate(self._rows):
            yield i, record

    def cell(self, row, column):
        record = self._rows[row]
        return record.get(column) if isinstance(record, dict) else None

    def line_of(self, row: int) -> int | None:
        return self._lines[row] if row < len(self._lines) else None

    def release(self) -> None:
        self._rows = []


class _ParquetTable(_Table):
    keeps_cells = True

    def __init__(self, path: Path):
        import datasets

        self.path = path
        bars_were_on = not datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(logging.CRITICAL)  # its "Failed to read schema" line: the error says it
        try:
            dataset = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
        except Exception as err:  # noqa: BLE001 - any reader failure is a file-level data error
            cause = err.__cause__ or err.__context__ or err
            raise DataError(path, None, None, f"cannot read parquet ({type(cause).__name__}: {cause})", "unreadable") from err
        finally:
            datasets.logging.set_verbosity(verbosity)
            if bars_were_on:
                datasets.utils.enable_progress_bars()
        self._table = dataset.data.table  # a pyarrow Table over the memory-mapped cache: no decoding of Image features
        self._dataset = dataset  # keeps the memory map alive
        self.columns = list(dataset.column_names)
        self.num_rows = dataset.num_rows

    def rows(self, columns, batch_size: int = 256):
        table = self._table.select([c for c in columns if c in self.columns])
        for start in range(0, self.num_rows, batch_size):
            for offset, record in enumerate(table.slice(start, batch_size).to_pylist()):
                yield start + offset, record

    def cell(self, row, column):
        return self._table.column(column)[row].as_py()

    def release(self) -> None:
        pass


def parse_file_list(files: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """``"a.jsonl,b.parquet"``, a list, or glob patterns -> existing files with a known extension."""
    if files is None:
        parts: list[str] = []
    elif isinstance(files, (str, Path)):
        parts = [p.strip() for p in str(files).split(",")]
    else:
        parts = [str(p).strip() for p in files]
    paths: list[Path] = []
    for part in filter(None, parts):
        if glob.has_magic(part) and not Path(part).exists():
            matches = sorted(glob.glob(part))
            if not matches:
                raise DataError(part, None, None, "pattern matches no file", "missing_file")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(part))
    if not paths:
        raise DataError("data files", None, None, f"no files given ({files!r})", "missing_file")
    for path in paths:
        if not path.exists():
            raise DataError(path, None, None, "data file not found", "missing_file")
        if path.is_dir():
            raise DataError(path, None, None, "is a folder; list the data files (globs allowed)", "missing_file")
        if path.suffix.lower() not in FORMATS:
            raise DataError(path, None, None, f"unknown extension {path.suffix!r}; use one of {', '.join(FORMATS)}",
                            "unknown_format")
    return paths


def _open_table(path: Path) -> _Table:
    kind = FORMATS[path.suffix.lower()]
    return _ParquetTable(path) if kind == "parquet" else _JsonTable(path, kind)


# ----------------------------------------------------------------------------------------------
# Rows -> records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CellImage:
    """An embedded image that stays in the (memory-mapped) table until it is needed."""

    table: _Table
    row: int
    column: str
    index: int
    single: bool  # the cell held one image rather than a list


@dataclass(frozen=True)
class _Record:
    id: str
    problem: str
    answer: str
    answer_type: str
    family: str
    vision_dependent: bool
    file: str
    row: int
    images: tuple  # Path | bytes | _CellImage per image
    image_fields: tuple[str, ...]
    placeholders: int
    line: int | None = None  # JSON Lines: the line of the file


@dataclass
class LoadReport:
    """What one load did: rows read and kept, skipped rows per reason with their first locations."""

    files: list[str]
    rows: int = 0
    kept: int = 0
    images: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    placeholder_mismatch: int = 0

    def add_skip(self, err: DataError) -> None:
        self.skipped[err.reason] += 1
        where = err.location + (f" ({err.field})" if err.field else "")
        self.examples.setdefault(err.reason, [])
        if len(self.examples[err.reason]) < _EXAMPLES_PER_REASON:
            self.examples[err.reason].append(where)

    def summary(self) -> str:
        parts = [
            f"{reason}: {count} (e.g. {', '.join(self.examples.get(reason, []))})"
            for reason, count in self.skipped.most_common()
        ]
        return (f"{', '.join(self.files)}: skipped {sum(self.skipped.values())} of {self.rows} rows; "
                + "; ".join(parts))


_PLACEHOLDER_LINE = re.compile(r"(?m)^(?:[ \t]*<image>)+[ \t]*(?:\r?\n|$)")
_PLACEHOLDER_INLINE = re.compile(r"[ \t]*<image>[ \t]*")


def strip_image_placeholders(text: str) -> tuple[str, int]:
    """Remove ``<image>`` placeholders (lines holding only placeholders vanish; an inline one becomes
    a space); returns the text and how many placeholders there were."""
    count = text.count("<image>")
    if not count:
        return text.strip(), 0
    text = _PLACEHOLDER_LINE.sub("", text)
    text = _PLACEHOLDER_INLINE.sub(" ", text)
    return text.strip(), count


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _type_of(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


class _RowParser:
    def __init__(self, data_cfg, table: _Table, root: Path, id_prefix: str, seen_ids: dict[str, str]):
        self.cfg = data_cfg
        self.table = table
        self.root = root
        self.id_prefix = id_prefix
        self.seen_ids = seen_ids
        self.file = str(table.path)
        self.has_id = data_cfg.id_key in table.columns

    def error(self, row: int, field: str | None, message: str, reason: str) -> DataError:
        return DataError(self.file, row, field, message, reason, line=self.table.line_of(row))

    def parse(self, row: int, record: dict) -> _Record:
        cfg = self.cfg
        sample_id = self._id(row, record)
        problem, placeholders = self._problem(row, record.get(cfg.prompt_key))
        answer = self._answer(row, record.get(cfg.answer_key))
        answer_type = self._answer_type(row, record.get(cfg.answer_type_key))
        family = self._family(row, record.get(FAMILY_KEY))
        vision_dependent = self._vision_dependent(row, record.get(VISION_DEPENDENT_KEY))
        images, fields = self._images(row, record.get(cfg.image_key))
        if self.has_id:  # registered only once the row is valid: a skipped row never blocks a later one
            self.seen_ids[sample_id] = _where(self.file, row, self.table.line_of(row))
        return _Record(sample_id, problem, answer, answer_type, family, vision_dependent, self.file, row,
                       tuple(images), tuple(fields), placeholders, self.table.line_of(row))

    def _id(self, row: int, record: dict) -> str:
        key = self.cfg.id_key
        if not self.has_id:
            return f"{self.id_prefix}-{row}"
        value = record.get(key)
        if value is None or _is_nan(value):
            raise self.error(row, key, "is null", "bad_id")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(row, key, f"expected a string or integer id, got {_type_of(value)}", "bad_id")
        text = str(value).strip()
        if not text:
            raise self.error(row, key, "is empty", "bad_id")
        if text in self.seen_ids:
            raise self.error(row, key, f"duplicate id {text!r} (first at {self.seen_ids[text]})", "duplicate_id")
        return text

    def _problem(self, row: int, value: Any) -> tuple[str, int]:
        key = self.cfg.prompt_key
        if value is None:
            raise self.error(row, key, "is null", "bad_problem")
        if not isinstance(value, str):
            raise self.error(row, key, f"expected a string, got {_type_of(value)}", "bad_problem")
        if not value.strip():
            raise self.error(row, key, "is empty", "bad_problem")
        for token in VISION_SPECIAL_TOKENS:
            if token in value:
                raise self.error(row, key, f"contains the model's special token {token}; use <image> or nothing",
                                 "bad_problem")
        text, placeholders = strip_image_placeholders(value)
        if len(text) > self.cfg.max_prompt_chars:
            raise self.error(row, key, f"text of {len(text)} characters exceeds data.max_prompt_chars = "
                             f"{self.cfg.max_prompt_chars}", "text_too_long")
        return text, placeholders

    def _answer(self, row: int, value: Any) -> str:
        key = self.cfg.answer_key
        if value is None:
            raise self.error(row, key, "is null", "empty_answer")
        if _is_nan(value):
            raise self.error(row, key, "is NaN", "empty_answer")
        if isinstance(value, bool):
            raise self.error(row, key, f"expected a string or number, got {_type_of(value)}", "bad_answer")
        if isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            if math.isinf(value):
                raise self.error(row, key, "is infinite", "bad_answer")
            text = str(int(value)) if value.is_integer() else repr(value)
        elif isinstance(value, str):
            text = value.strip()
        else:
            raise self.error(row, key, f"expected a string or number, got {_type_of(value)}", "bad_answer")
        if not text:
            raise self.error(row, key, "is empty", "empty_answer")
        if len(text) > self.cfg.max_prompt_chars:
            raise self.error(row, key, f"text of {len(text)} characters exceeds data.max_prompt_chars = "
                             f"{self.cfg.max_prompt_chars}", "text_too_long")
        return text

    def _answer_type(self, row: int, value: Any) -> str:
        if value is None or _is_nan(value) or (isinstance(value, str) and not value.strip()):
            return "math"
        if not isinstance(value, str) or value.strip() not in ANSWER_TYPES:
            raise self.error(row, self.cfg.answer_type_key, f"unknown answer type {value!r}; expected one of "
                             f"{', '.join(ANSWER_TYPES)}", "bad_answer_type")
        return value.strip()

    def _family(self, row: int, value: Any) -> str:
        if value is None or _is_nan(value) or (isinstance(value, str) and not value.strip()):
            return "external"
        if not isinstance(value, str):
            raise self.error(row, FAMILY_KEY, f"expected a string, got {_type_of(value)}", "bad_family")
        return value.strip()

    def _vision_dependent(self, row: int, value: Any) -> bool:
        if value is None or _is_nan(value):
            return True
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise self.error(row, VISION_DEPENDENT_KEY, f"expected true or false, got {_type_of(value)}",
                         "bad_vision_dependent")

    def _images(self, row: int, value: Any) -> tuple[list, list[str]]:
        key = self.cfg.image_key
        try:
            items = split_image_cell(value)
        except ImageError as err:
            raise self.error(row, key, err.message, err.reason) from None
        if not items:
            raise self.error(row, key, "no images (null or empty list); every row needs at least one image",
                             "no_images")
        single = not isinstance(value, (list, tuple, np.ndarray))
        refs, fields = [], []
        for index, item in enumerate(items):
            name = key if single else f"{key}[{index}]"
            try:
                source = image_source(item, self.root)
                decode_image(source, self.cfg.max_image_pixels)  # validate now; decoded again when used
            except ImageError as err:
                raise self.error(row, name, err.message, err.reason) from None
            except OSError as err:  # the file vanished or is unreadable
                raise self.error(row, name, f"cannot read image ({err})", "missing_image") from None
            if isinstance(source, bytes) and self.table.keeps_cells:
                source = _CellImage(self.table, row, key, index, single)
            refs.append(source)
            fields.append(name)
        return refs, fields


def _image_root(data_cfg, path: Path) -> Path:
    if data_cfg.image_dir:
        root = Path(data_cfg.image_dir)
        if not root.is_dir():
            raise DataError(data_cfg.image_dir, None, "data.image_dir", "folder not found", "missing_file")
        return Path(os.path.realpath(root))
    return Path(os.path.realpath(path.absolute().parent))


def _id_prefixes(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    absolute = [p.absolute() for p in paths]
    common = os.path.commonpath([str(p.parent) for p in absolute])
    return [str(p.with_suffix("").relative_to(common)).replace(os.sep, "/") for p in absolute]


def _check_mode(data_cfg) -> str:
    mode = getattr(data_cfg, "on_bad_sample", "error")
    if mode not in ("error", "skip"):
        from perceptrl.config import ConfigError

        raise ConfigError(f"data.on_bad_sample must be 'error' or 'skip', got {mode!r}")
    return mode


def _load_records(files, data_cfg, on_bad_sample: str | None = None) -> tuple[list[_Record], LoadReport]:
    """Parse and validate every row of ``files``; bad rows raise or are skipped per the mode."""
    mode = on_bad_sample or _check_mode(data_cfg)
    paths = parse_file_list(files)
    report = LoadReport(files=[str(p) for p in paths])
    records: list[_Record] = []
    seen_ids: dict[str, str] = {}
    required = {"data.image_key": data_cfg.image_key, "data.prompt_key": data_cfg.prompt_key,
                "data.answer_key": data_cfg.answer_key}
    optional = [data_cfg.id_key, data_cfg.answer_type_key, FAMILY_KEY, VISION_DEPENDENT_KEY]
    for path, prefix in zip(paths, _id_prefixes(paths)):
        table = _open_table(path)
        for option, column in required.items():
            if column not in table.columns:
                if table.num_rows == 0:
                    break
                raise DataError(path, None, column, f"column not found ({option} = {column!r}); available columns: "
                                f"{', '.join(table.columns) or '(none)'}", "missing_column")
        parser = _RowParser(data_cfg, table, _image_root(data_cfg, path), prefix, seen_ids)
        for row, record in table.rows(list(required.values()) + optional):
            report.rows += 1
            try:
                if isinstance(record, DataError):
                    raise record
                parsed = parser.parse(row, record)
            except DataError as err:
                if mode == "error":
                    raise DataError(err.file, err.row, err.field, f"{err.detail} {SKIP_HINT}", err.reason, err.line) from None
                report.add_skip(err)
                continue
            records.append(parsed)
            report.images += len(parsed.images)
            if parsed.placeholders and parsed.placeholders != len(parsed.images):
                report.placeholder_mismatch += 1
        table.release()
    report.kept = len(records)
    if report.skipped:
        logger.warning("%s", report.summary())
    if report.placeholder_mismatch:
        logger.warning("%s: %d rows have a number of <image> placeholders different from their number of images "
                       "(placeholders are removed; all images are used)", ", ".join(report.files),
                       report.placeholder_mismatch)
    if not records:
        detail = f" ({report.summary()})" if report.skipped else ""
        raise DataError(", ".join(report.files), None, None, f"no valid rows: {report.rows} rows read{detail}",
                        "no_valid_rows")
    logger.info("%s: %d rows, %d images", ", ".join(report.files), report.kept, report.images)
    return records, report


def _decode_record(record: _Record, max_pixels: int | None) -> list:
    images = []
    for source, name in zip(record.images, record.image_fields):
        try:
            if isinstance(source, _CellImage):
                cell = source.table.cell(source.row, source.column)
                source = image_source(split_image_cell(cell)[0 if source.single else source.index], Path("/"))
            images.append(decode_image(source, max_pixels))
        except (ImageError, OSError, IndexError) as err:
            message = getattr(err, "message", None) or f"cannot read image ({err})"
            raise DataError(record.file, record.row, name, f"{message} (changed since the data was validated?)",
                            getattr(err, "reason", "missing_image"), record.line) from None
    return images


def _to_sample(record: _Record, max_pixels: int | None, **meta: Any) -> Sample:
    return Sample(
        id=record.id,
        images=_decode_record(record, max_pixels),
        problem=record.problem,
        answer=record.answer,
        answer_type=record.answer_type,
        family=record.family,
        vision_dependent=record.vision_dependent,
        meta={"file": record.file, "row": record.row, **meta},
    )


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def load_samples(files, data_cfg, on_bad_sample: str | None = None) -> list[Sample]:
    """Every valid row of ``files`` (a path, comma-separated paths, a list, or globs) as a ``Sample``
    with decoded RGB images, in file order. ``on_bad_sample`` overrides ``data_cfg.on_bad_sample``."""
    if on_bad_sample is not None and on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    records, _ = _load_records(files, data_cfg, on_bad_sample)
    return [_to_sample(r, data_cfg.max_image_pixels) for r in records]


class FileSource:
    """Prompts from local files: ``train_sample(index)`` over ``data.train_files``, ``val_samples()``
    from ``data.val_files``. Everything is validated when the source is built."""

    def __init__(self, data_cfg, seed: int = 0):
        _check_mode(data_cfg)
        if not data_cfg.train_files:
            raise DataError("data.train_files", None, None, "no training files given", "missing_file")
        self.data_cfg = data_cfg
        self.seed = int(seed)
        self._train, self.train_report = _load_records(data_cfg.train_files, data_cfg)
        self._val: list[_Record] = []
        self.val_report: LoadReport | None = None
        if data_cfg.val_files:
            self._val, self.val_report = _load_records(data_cfg.val_files, data_cfg)
            overlap = {r.id for r in self._train} & {r.id for r in self._val}
            if overlap:
                logger.warning("%d ids appear in both the training and the validation files (e.g. %s)",
                               len(overlap), ", ".join(sorted(overlap)[:5]))
        self._orders: dict[int, np.ndarray] = {}
        self._val_cache: list[Sample] | None = None

    def __len__(self) -> int:
        return len(self._train)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of training rows used in ``epoch`` (a pure function of seed and epoch)."""
        order = self._orders.get(epoch)
        if order is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, epoch, 0x9E3779B9]))
            order = rng.permutation(len(self._train))
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return order

    def train_sample(self, index: int) -> Sample:
        """Training prompt number ``index`` (any ``index >= 0``: the rows repeat, reshuffled each epoch)."""
        if index < 0:
            raise IndexError(f"train_sample index must be >= 0, got {index}")
        epoch, position = divmod(int(index), len(self._train))
        record = self._train[int(self.epoch_order(epoch)[position])]
        return _to_sample(record, self.data_cfg.max_image_pixels, epoch=epoch)

    def keep_rows(self, keep: Callable[[Sample], bool]) -> tuple[int, int]:
        """Keep only the training and validation rows whose sample passes ``keep`` (every row is decoded
        once); returns ``(training rows dropped, validation rows dropped)``. Call before training starts:
        the epoch orders are over the rows kept."""
        before = len(self._train), len(self._val)
        self._train = [r for r in self._train if keep(_to_sample(r, self.data_cfg.max_image_pixels))]
        self._val = [r for r in self._val if keep(_to_sample(r, self.data_cfg.max_image_pixels))]
        self._orders.clear()
        self._val_cache = None
        if not self._train:
            raise DataError(", ".join(self.train_report.files), None, None,
                            f"no training rows left after dropping {before[0]} too long prompts", "no_valid_rows")
        return before[0] - len(self._train), before[1] - len(self._val)

    def val_samples(self) -> list[Sample]:
        """The first ``data.val_per_family`` validation rows of each family (file order); [] without
        ``data.val_files``. Decoded once and cached."""
        if self._val_cache is None:
            cap, taken, chosen = self.data_cfg.val_per_family, Counter(), []
            for record in self._val:
                if taken[record.family] < cap:
                    taken[record.family] += 1
                    chosen.append(record)
            if len(chosen) < len(self._val):
                logger.info("validation: using %d of %d rows (data.val_per_family = %d)", len(chosen), len(self._val), cap)
            self._val_cache = [_to_sample(r, self.data_cfg.max_image_pixels) for r in chosen]
        return list(self._val_cache)
