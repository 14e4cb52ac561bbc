"""``arith``: read numbers drawn as seven-segment strokes and do arithmetic on them.

Every question is symmetric in the numbers (sum, larger minus smaller, product), so the answer
depends only on which numbers are drawn, not on how a reader orders them.
"""

from __future__ import annotations

from perceptrl.data.families.base import Draft, Family, pick
from perceptrl.data.families.scene import (
    COLORS,
    INK,
    SHAPES,
    background,
    boxes_overlap,
    canvas,
    cell_size,
    draw_objects,
    number_mask,
    object_in_cell,
    paint,
    palette,
    sample_cells,
    to_image,
)

# ops: (name, count of numbers, low, high) drawn uniformly. clutter: inclusive range of shapes.
SETTINGS = {
    1: dict(ops=(("sum", 2, 0, 9),), clutter=(0, 0), height=(1.0, 1.15)),
    2: dict(ops=(("sum", 2, 0, 20), ("diff", 2, 0, 20)), clutter=(0, 0), height=(1.0, 1.3)),
    3: dict(
        ops=(("sum", 3, 0, 20), ("diff", 2, 10, 60), ("product", 2, 2, 9)),
        clutter=(1, 3),
        height=(1.0, 1.3),
    ),
}
QUESTIONS = {
    ("sum", 2): "What is the sum of the two numbers?",
    ("sum", 3): "What is the sum of the three numbers?",
    ("diff", 2): "What is the larger number minus the smaller number?",
    ("product", 2): "What is the product of the two numbers?",
}


def _apart(a, b, cell):
    """Two numbers must not read as one: side by side they are ``0.7 * cell`` px apart (several
    times the gap between digits), stacked they are at least 3 px apart."""
    h_gap = max(b[0] - a[2], a[0] - b[2])
    v_gap = max(b[1] - a[3], a[1] - b[3])
    return v_gap >= 3 or h_gap >= round(0.7 * cell)


def solve(op: str, reading: list[int]) -> tuple[int, str]:
    """The answer and its one-line working ("3+5=8", "7-2=5", "3*4=12") for numbers read left to right."""
    if op == "sum":
        answer = sum(reading)
        return answer, "+".join(map(str, reading)) + f"={answer}"
    if op == "diff":
        a, b = max(reading), min(reading)
        return a - b, f"{a}-{b}={a - b}"
    return reading[0] * reading[1], f"{reading[0]}*{reading[1]}={reading[0] * reading[1]}"


def misread(rng, op: str, reading: list[int], low: int, high: int) -> tuple[int, str]:
    """A wrong answer from one number misread as another value in ``low..high`` (distinct numbers
    stay distinct for ``diff``), with the working that misreading gives."""
    answer, _ = solve(op, reading)
    for _ in range(1000):
        i = int(rng.integers(len(reading)))
        wrong = list(reading)
        wrong[i] = int(rng.integers(low, high + 1))
        if op == "diff" and len(set(wrong)) < len(wrong):
            continue
        got, working = solve(op, wrong)
        if got != answer:
            return got, working
    raise AssertionError(f"no misreading changes {op}{reading}")  # pragma: no cover


class ArithFamily(Family):
    name = "arith"
    answer_types = ("integer",)
    description = "read drawn numbers and add, subtract or multiply them"

    def _draft(self, rng, difficulty, image_size):
        cfg = SETTINGS[difficulty]
        op, k, lo, hi = pick(rng, cfg["ops"])
        if op == "diff":  # distinct, so "larger" is well defined
            nums = [int(x) for x in rng.choice(hi - lo + 1, size=k, replace=False) + lo]
        else:
            nums = [int(x) for x in rng.integers(lo, hi + 1, size=k)]
        cs = cell_size(image_size)
        bg = background(rng, difficulty)
        arr = canvas(image_size, bg)

        boxes = []
        for _ in range(1000):
            boxes = []
            for v in nums:
                h = int(rng.integers(round(cfg["height"][0] * cs), round(cfg["height"][1] * cs) + 1))
                m = number_mask(v, h)
                x0 = int(rng.integers(1, image_size - m.shape[1]))
                y0 = int(rng.integers(1, image_size - m.shape[0]))
                box = (x0, y0, x0 + m.shape[1], y0 + m.shape[0])
                if any(not _apart(box, b[0], cs) for b in boxes):
                    break
                boxes.append((box, m, v))
            if len(boxes) == len(nums):
                break
        else:  # pragma: no cover - the settings leave plenty of room
            raise RuntimeError("could not place the numbers")
        for (x0, y0, _, _), m, _ in boxes:
            paint(arr, m, x0, y0, INK)

        # clutter: coloured shapes in cells no number touches
        n_clutter = int(rng.integers(cfg["clutter"][0], cfg["clutter"][1] + 1))
        objs = []
        if n_clutter:
            busy = {
                (r, c)
                for r in range(image_size // cs)
                for c in range(image_size // cs)
                for b in boxes
                if boxes_overlap((c * cs, r * cs, (c + 1) * cs, (r + 1) * cs), b[0], margin=1)
            }
            free = (image_size // cs) ** 2 - len(busy)
            cells = sample_cells(rng, min(n_clutter, free), exclude=busy)
            colors = palette(difficulty)
            objs = [object_in_cell(rng, pick(rng, colors), pick(rng, SHAPES), cell, image_size) for cell in cells]
            draw_objects(arr, objs)

        reading = [b[2] for b in sorted(boxes, key=lambda b: (b[0][0], b[0][1]))]  # left to right
        answer, rationale = solve(op, reading)
        assert set(COLORS.values()).isdisjoint({INK})
        return Draft(
            image=to_image(arr),
            problem=QUESTIONS[(op, k)],
            answer=str(answer),
            answer_type="integer",
            rationale=rationale,
            meta={
                "op": op,
                "numbers": reading,
                "boxes": [list(b[0]) for b in sorted(boxes, key=lambda b: (b[0][0], b[0][1]))],
                "objects": [o.to_meta() for o in objs],
            },
        )

    def _wrong(self, sample, rng):
        """One number misread: "3+6=9" for "3+5=8"."""
        op, reading = sample.meta["op"], sample.meta["numbers"]
        _, _, low, high = next(o for o in SETTINGS[sample.meta["difficulty"]]["ops"] if o[0] == op and o[1] == len(reading))
        answer, working = misread(rng, op, reading, low, high)
        return str(answer), working
