"""``compare``: "Which colour has the most shapes? (A) red (B) blue (C) green" -- answer is a letter."""

from __future__ import annotations

from perceptrl.data.families.base import Draft, Family, choice_text, pick
from perceptrl.data.families.scene import GRID, SHAPES, background, palette, place_objects, render

# n_options: options shown (every object belongs to one of them). top: range of the extreme count.
# gap1: the runner-up is exactly one away. kinds: (attribute, most|fewest).
SETTINGS = {
    1: dict(n_options=3, top=(2, 4), gap1=False, kinds=(("colour", "most"),)),
    2: dict(n_options=3, top=(2, 5), gap1=False, kinds=(("colour", "most"), ("colour", "fewest"))),
    3: dict(
        n_options=4,
        top=(3, 5),
        gap1=True,
        kinds=(("colour", "most"), ("colour", "fewest"), ("shape", "most"), ("shape", "fewest")),
    ),
}


def _counts(rng, n, top_range, extreme, gap1, capacity):
    """Counts for ``n`` options with a unique maximum (``most``) or unique minimum >= 1 (``fewest``)."""
    while True:
        if extreme == "most":
            top = int(rng.integers(top_range[0], top_range[1] + 1))
            lo = max(0, top - 3) if not gap1 else max(1, top - 2)
            rest = [int(x) for x in rng.integers(lo, top, size=n - 1)]
            if gap1:
                rest[0] = top - 1
        else:
            top = int(rng.integers(1, 3))  # the minimum
            rest = [int(x) for x in rng.integers(top + 1, top + 4, size=n - 1)]
            if gap1:
                rest[0] = top + 1
        if top + sum(rest) <= capacity:
            return top, rest


class CompareFamily(Family):
    name = "compare"
    answer_types = ("choice",)
    description = "which colour or shape is most or least frequent (multiple choice)"

    def _draft(self, rng, difficulty, image_size):
        cfg = SETTINGS[difficulty]
        attr, extreme = pick(rng, cfg["kinds"])
        vocab = palette(difficulty) if attr == "colour" else list(SHAPES)
        n_opt = min(cfg["n_options"], len(vocab))
        options = [vocab[i] for i in rng.choice(len(vocab), size=n_opt, replace=False)]  # random order
        top, rest = _counts(rng, n_opt, cfg["top"], extreme, cfg["gap1"], GRID * GRID)
        answer_idx = int(rng.integers(n_opt))
        others = [i for i in range(n_opt) if i != answer_idx]
        order = rng.permutation(len(others))
        counts = [0] * n_opt
        counts[answer_idx] = top
        for j, i in enumerate(order):
            counts[others[i]] = rest[j]

        colors = palette(difficulty)
        specs = []
        for opt, c in zip(options, counts):
            for _ in range(c):
                specs.append((opt, pick(rng, SHAPES)) if attr == "colour" else (pick(rng, colors), opt))
        bg = background(rng, difficulty)
        objs = place_objects(rng, specs, image_size)

        runner = max(others, key=lambda i: counts[i]) if extreme == "most" else min(others, key=lambda i: counts[i])
        rel = ">" if extreme == "most" else "<"
        noun = "colour has the" if attr == "colour" else "shape is the"
        what = f"{extreme} shapes" if attr == "colour" else ("most common" if extreme == "most" else "least common")
        return Draft(
            image=render(objs, image_size, bg),
            problem=f"Which {noun} {what}? {choice_text(options)}",
            answer=chr(65 + answer_idx),
            answer_type="choice",
            rationale=f"{options[answer_idx]} {top}{rel}{options[runner]} {counts[runner]}",
            meta={
                "attribute": attr,
                "extreme": extreme,
                "options": options,
                "counts": counts,
                "objects": [o.to_meta() for o in objs],
            },
        )

    def _wrong(self, sample, rng):
        """Another option seen as the extreme: its count and the true answer's swapped."""
        options, counts, extreme = sample.meta["options"], list(sample.meta["counts"]), sample.meta["extreme"]
        right = ord(sample.answer) - 65
        j = pick(rng, [i for i in range(len(options)) if i != right])
        counts[right], counts[j] = counts[j], counts[right]
        others = [i for i in range(len(options)) if i != j]
        runner = max(others, key=lambda i: counts[i]) if extreme == "most" else min(others, key=lambda i: counts[i])
        rel = ">" if extreme == "most" else "<"
        return chr(65 + j), f"{options[j]} {counts[j]}{rel}{options[runner]} {counts[runner]}"
