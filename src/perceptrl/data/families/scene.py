"""Shared drawing for the synthetic families: palette, shapes, grid placement, seven-segment digits.

Images are rasterised with numpy at pixel centres (no anti-aliasing, no fonts) and wrapped in a PIL
RGB image, so an image is a pure function of its scene: byte-identical across Pillow versions,
FreeType builds and platforms (the pinned test-set hash depends on that), and every pixel of an
object has exactly its palette colour, so a checker can recover the scene from the pixels.

Layout: the canvas is a ``GRID x GRID`` grid of square cells (``cell = image_size // GRID``, 14 px at
56 px, i.e. one vision patch). Each shape sits inside one cell and never touches the cell's border
rows or columns, so two shapes are always at least two pixels apart (separate connected components).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

GRID = 4
MIN_IMAGE_SIZE = 56
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)  # digits
# Saturated, pairwise distinct colours; no anti-aliasing, so these are the only object pixel values.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 160, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 60, 190),
    "orange": (250, 130, 0),
}
SHAPES = ("circle", "square", "triangle")
# Light backgrounds used at difficulty 3 (none is a palette colour or ink).
BACKGROUND_TINTS = ((255, 255, 255), (244, 244, 244), (242, 238, 228), (232, 240, 246), (238, 246, 234))


def palette(difficulty: int) -> list[str]:
    """Colours in play: 4 at difficulty 1 (red, green, blue, yellow), +purple at 2, +orange at 3."""
    return list(COLORS)[: min(len(COLORS), 3 + difficulty)]


def plural(word: str, n: int) -> str:
    return word if n == 1 else word + "s"


def check_image_size(image_size: int) -> int:
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < MIN_IMAGE_SIZE or image_size % 28:
        raise ValueError(
            f"image_size must be a multiple of 28 (patch 14 x merge 2) and at least {MIN_IMAGE_SIZE}, got {image_size}"
        )
    return int(image_size)


def cell_size(image_size: int) -> int:
    return image_size // GRID


def shape_size_range(image_size: int) -> tuple[int, int]:
    """Inclusive range of a shape's bounding-box side: 10..12 px at 56 px (radius >= 5)."""
    cell = cell_size(image_size)
    return math.ceil(0.7 * cell), cell - 2


@lru_cache(maxsize=None)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of a shape filling its bounding box (pixel-centre sampling)."""
    c = (np.arange(size) + 0.5) - size / 2.0
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        m = x * x + y * y <= (size / 2.0) ** 2
    elif shape == "square":
        m = np.ones((size, size), dtype=bool)
    elif shape == "triangle":  # apex up, base on the bottom row
        m = np.abs(x) <= (y + size / 2.0) / 2.0
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    m.setflags(write=False)
    return m


@dataclass(frozen=True)
class Obj:
    """A shape of ``color`` whose ``size x size`` bounding box starts at pixel ``(x0, y0)``."""

    color: str
    shape: str
    x0: int
    y0: int
    size: int
    row: int
    col: int

    @property
    def cx(self) -> float:
        return self.x0 + self.size / 2.0

    @property
    def cy(self) -> float:
        return self.y0 + self.size / 2.0

    def to_meta(self) -> list:
        return [self.color, self.shape, self.x0, self.y0, self.size]


def sample_cells(rng: np.random.Generator, n: int, exclude: set[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """``n`` distinct grid cells ``(row, col)`` in random order."""
    free = [(r, c) for r in range(GRID) for c in range(GRID) if not exclude or (r, c) not in exclude]
    if n > len(free):
        raise ValueError(f"cannot place {n} objects in {len(free)} free cells")
    idx = rng.choice(len(free), size=n, replace=False)
    return [free[i] for i in idx]


def object_in_cell(rng: np.random.Generator, color: str, shape: str, cell: tuple[int, int], image_size: int) -> Obj:
    lo, hi = shape_size_range(image_size)
    cs = cell_size(image_size)
    size = int(rng.integers(lo, hi + 1))
    slack = cs - 2 - size  # keep the cell's border rows and columns empty
    r, c = cell
    x0 = c * cs + 1 + int(rng.integers(0, slack + 1))
    y0 = r * cs + 1 + int(rng.integers(0, slack + 1))
    return Obj(color, shape, x0, y0, size, r, c)


def place_objects(
    rng: np.random.Generator,
    specs: list[tuple[str, str]],
    image_size: int,
    exclude: set[tuple[int, int]] | None = None,
) -> list[Obj]:
    """Put each ``(color, shape)`` of ``specs`` in its own random cell."""
    cells = sample_cells(rng, len(specs), exclude)
    return [object_in_cell(rng, col, shp, cell, image_size) for (col, shp), cell in zip(specs, cells)]


def background(rng: np.random.Generator, difficulty: int) -> tuple[int, int, int]:
    """White below difficulty 3; a random light tint at 3 (always drawn, so rng use is uniform)."""
    i = int(rng.integers(len(BACKGROUND_TINTS)))
    return BACKGROUND_TINTS[i] if difficulty >= 3 else BACKGROUND


def canvas(image_size: int, color: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    arr = np.empty((image_size, image_size, 3), dtype=np.uint8)
    arr[...] = color
    return arr


def paint(arr: np.ndarray, mask: np.ndarray, x0: int, y0: int, color: tuple[int, int, int]) -> None:
    h, w = mask.shape
    arr[y0 : y0 + h, x0 : x0 + w][mask] = color


def draw_objects(arr: np.ndarray, objs: list[Obj]) -> np.ndarray:
    for o in objs:
        paint(arr, shape_mask(o.shape, o.size), o.x0, o.y0, COLORS[o.color])
    return arr


def to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).convert("RGB")


def render(objs: list[Obj], image_size: int, bg: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    return to_image(draw_objects(canvas(image_size, bg), objs))


# ---------------------------------------------------------------- seven-segment digits
#   aaa
#  f   b
#   ggg
#  e   c
#   ddd
SEGMENTS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}


def stroke(height: int) -> int:
    return max(2, round(height / 7))


def digit_width(height: int) -> int:
    return max(5, round(0.55 * height))


@lru_cache(maxsize=None)
def digit_mask(digit: str, height: int) -> np.ndarray:
    """Boolean mask of one seven-segment digit; "1" is a bare bar (proportional spacing)."""
    t = stroke(height)
    w = digit_width(height)
    mid = height // 2
    g0 = mid - t // 2
    m = np.zeros((height, w), dtype=bool)
    seg = {
        "a": (slice(0, t), slice(0, w)),
        "d": (slice(height - t, height), slice(0, w)),
        "g": (slice(g0, g0 + t), slice(0, w)),
        "f": (slice(0, mid + 1), slice(0, t)),
        "e": (slice(mid, height), slice(0, t)),
        "b": (slice(0, mid + 1), slice(w - t, w)),
        "c": (slice(mid, height), slice(w - t, w)),
    }
    for s in SEGMENTS[digit]:
        m[seg[s]] = True
    if digit == "1":
        m = m[:, w - t :]
    m = np.ascontiguousarray(m)
    m.setflags(write=False)
    return m


def number_mask(value: int, height: int) -> np.ndarray:
    """Mask of a non-negative integer written in seven-segment digits, ``stroke`` px apart."""
    if value < 0:
        raise ValueError("only non-negative numbers are drawn")
    parts = [digit_mask(ch, height) for ch in str(value)]
    gap = stroke(height)
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    m = np.zeros((height, width), dtype=bool)
    x = 0
    for p in parts:
        m[:, x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return m


def boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 0) -> bool:
    """Axis-aligned boxes ``(x0, y0, x1, y1)`` (exclusive ends) closer than ``margin`` px."""
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def noise_image(rng: np.random.Generator, image_size: int) -> Image.Image:
    """Seeded noise: either faint noise around white or full-range RGB noise."""
    if rng.random() < 0.5:
        arr = rng.integers(225, 256, size=(image_size, image_size, 3), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
    return to_image(arr)
