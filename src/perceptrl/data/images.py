"""Decode, check and normalise dataset images: any PIL-readable file in, RGB 8-bit ``PIL.Image`` out.

Everything a dataset can get wrong about an image becomes an ``ImageError`` with a short ``reason``
code and a readable message (the caller, ``perceptrl.data.files``, adds file, row and field):

================  ===============================================================================
reason            when
================  ===============================================================================
missing_image     a path that does not exist or is not a regular file
outside_root      a path that resolves (symlinks and ``..`` followed) outside the allowed folder
remote_image      an ``http(s)://`` URL (nothing is downloaded)
empty_image       a 0-byte file or empty bytes, or a header with zero width or height
not_an_image      bytes that no PIL plugin recognises (a text file renamed ``.png``, ...)
corrupt_image     truncated or otherwise undecodable data (found by a full ``load()``)
image_too_large   more pixels than the cap (``data.max_image_pixels``) or PIL's own
                  ``Image.MAX_IMAGE_PIXELS`` decompression-bomb guard
bad_image_shape   aspect ratio above ``MAX_ASPECT_RATIO`` (the Qwen-VL processors refuse them)
bad_image_mode    a mode PIL cannot convert to RGB
bad_image_value   a cell that is not a path, bytes, a ``{"bytes", "path"}`` dict or a list of them
================  ===============================================================================

Mode conversion (``to_rgb``): ``1``/``L``/``P``/``CMYK``/``YCbCr`` are converted by PIL; anything with
alpha (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, or a ``transparency`` entry as in
palette or grayscale PNGs with ``tRNS``) is composited over white; 16-bit (``I;16``, ``I;16B``,
``I;16L``) and 32-bit integer ``I`` are read as 0..65535 and scaled to 0..255 (``round(v / 257)``);
``F`` is read as 0..1 if its maximum is at most 1, else as 0..255. EXIF orientation is *not* applied
(the same as Qwen's ``qwen_vl_utils`` and EasyR1, so that the pixels match what those tools train on);
multi-frame files (GIF, TIFF, APNG) give their first frame.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_ASPECT_RATIO = 200  # Qwen2-VL / Qwen2.5-VL / Qwen3-VL `smart_resize` raises above this
DEFAULT_MAX_PIXELS = 50_000_000  # below PIL's own MAX_IMAGE_PIXELS (about 89.5 M) so our error comes first

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageError(ValueError):
    """One image is unusable; ``reason`` is a short code (see the module docstring)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ----------------------------------------------------------------------------------------------
# Cell values -> image references
# ----------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def split_image_cell(value: Any) -> list[Any]:
    """The image cell of one row as a list of single-image values (a lone image becomes a list).

    A single image is a path string, raw bytes, or a ``{"bytes": ..., "path": ...}`` dict (as
    ``datasets`` writes an ``Image`` feature to parquet). ``None`` and ``[]`` give ``[]``.
    """
    if value is None:
        return []
    if isinstance(value, (str, bytes, bytearray, memoryview, dict, Path)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == object:
        return list(value)
    raise ImageError(
        "bad_image_value",
        f"expected a path, bytes, a {{'bytes', 'path'}} dict or a list of them, got {type(value).__name__}",
    )


def image_source(value: Any, root: Path) -> Path | bytes:
    """One single-image cell value -> a checked ``Path`` inside ``root``, or the raw encoded bytes.

    ``root`` must already be resolved. Bytes win over a path in a ``{"bytes", "path"}`` dict (the
    path is then only the original file name). Strings starting with ``data:`` are base64 data URIs.
    """
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ImageError("bad_image_value", f"'bytes' must be binary, got {type(data).__name__}")
            return bytes(data)
        if path is None:
            raise ImageError("bad_image_value", "a {'bytes', 'path'} dict with neither bytes nor path")
        value = path
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ImageError(
            "bad_image_value",
            f"expected a path, bytes or a {{'bytes', 'path'}} dict, got {type(value).__name__} {_describe(value)}",
        )
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header:
            raise ImageError("bad_image_value", "only base64 data URIs are supported")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ImageError("corrupt_image", f"data URI is not valid base64 ({err})") from None
    if value.startswith(("http://", "https://")):
        raise ImageError("remote_image", f"{value!r} is a URL; download the images and give local paths")
    return resolve_image_path(value, root)


def resolve_image_path(text: str, root: Path) -> Path:
    """``text`` (relative to ``root``, or absolute) -> the real path; refuses anything outside ``root``."""
    if not text.strip():
        raise ImageError("missing_image", "empty image path")
    path = Path(text)
    candidate = path if path.is_absolute() else root / path
    real = Path(os.path.realpath(candidate))  # follows symlinks and '..', even for missing files
    if not real.is_relative_to(root):
        raise ImageError(
            "outside_root",
            f"{text!r} resolves to {real}, outside the dataset folder {root}; refusing to read it "
            "(move the image inside, or set data.image_dir)",
        )
    if not real.exists():
        raise ImageError("missing_image", f"{text!r}: no such file ({candidate})")
    if not real.is_file():
        raise ImageError("missing_image", f"{text!r}: not a regular file ({real})")
    return real


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def _png_zero_dims(head: bytes) -> tuple[int, int] | None:
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return width, height
    return None


def decode_image(source: Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, check and fully decode one image (a file path or encoded bytes); return it as RGB.

    The header is read first (size checks before any pixel is decoded), then ``load()`` decodes the
    whole image so truncated data fails here rather than inside the model's processor.
    """
    if isinstance(source, Path):
        size = source.stat().st_size
        with open(source, "rb") as f:
            head = f.read(32)
    else:
        size, head = len(source), source[:32]
    if size == 0:
        raise ImageError("empty_image", "image is empty (0 bytes)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Image.DecompressionBombError as err:
        raise ImageError("image_too_large", f"decompression-bomb guard: {err}") from None
    except UnidentifiedImageError:
        zero = _png_zero_dims(head)
        if zero is not None:
            raise ImageError("empty_image", f"image has zero width or height ({zero[0]}x{zero[1]})") from None
        raise ImageError("not_an_image", "cannot identify image data (not an image, or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as err:
        raise ImageError("corrupt_image", f"corrupt image header ({type(err).__name__}: {err})") from None
    with image:
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
            width, height = image.size
            raise ImageError(
                "image_too_large",
                f"{width}x{height} = {width * height} pixels exceeds PIL's Image.MAX_IMAGE_PIXELS "
                f"({Image.MAX_IMAGE_PIXELS}): possible decompression bomb",
            )
        check_size(image.size, max_pixels)
        try:
            image.load()
        except Image.DecompressionBombError as err:
            raise ImageError("image_too_large", f"decompression-bomb guard: {err}") from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError) as err:
            raise ImageError("corrupt_image", f"corrupt or truncated image ({type(err).__name__}: {err})") from None
        return to_rgb(image)


def check_size(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError("empty_image", f"image has zero width or height ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"{width}x{height} = {width * height} pixels exceeds data.max_image_pixels = {max_pixels}",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(
            "bad_image_shape",
            f"{width}x{height}: aspect ratio above {MAX_ASPECT_RATIO} (Qwen-VL processors refuse it)",
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB 8-bit image; alpha is composited over white, 16-bit values are scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.convert("RGB")  # a copy, detached from the file
    if mode in _INT16_MODES:
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError("bad_image_mode", f"cannot convert image mode {mode!r} to RGB ({err})") from None
