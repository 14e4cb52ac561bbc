"""``count``: "How many red circles are there?" -- counting by colour and shape."""

from __future__ import annotations

from perceptrl.data.families.base import Draft, Family, pick
from perceptrl.data.families.scene import SHAPES, background, palette, place_objects, plural, render

# max_target: answers are uniform on 0..max_target. distractors: inclusive range of non-target
# objects. near_miss: chance a distractor shares the target's colour or shape. kinds: question forms.
SETTINGS = {
    1: dict(max_target=4, distractors=(0, 2), near_miss=0.5, kinds=("colour_shape",)),
    2: dict(max_target=6, distractors=(1, 4), near_miss=0.6, kinds=("colour_shape",) * 3 + ("colour", "shape")),
    3: dict(max_target=8, distractors=(2, 6), near_miss=0.8, kinds=("colour_shape",) * 2 + ("colour", "shape")),
}


def _noun(color: str | None, shape: str | None, n: int) -> str:
    """The counted noun phrase in the number ``n`` asks for: "red circles", "red shapes" or "circles"."""
    if color is None:
        return plural(shape, n)
    return f"{color} {plural(shape or 'shape', n)}"


class CountFamily(Family):
    name = "count"
    answer_types = ("integer",)
    description = "count shapes of a colour and/or shape"

    def _draft(self, rng, difficulty, image_size):
        cfg = SETTINGS[difficulty]
        colors = palette(difficulty)
        kind = pick(rng, cfg["kinds"])
        color = pick(rng, colors)
        shape = pick(rng, SHAPES)
        n = int(rng.integers(0, cfg["max_target"] + 1))
        k = int(rng.integers(cfg["distractors"][0], cfg["distractors"][1] + 1))
        k = max(k, 2 - n)  # at least two shapes: empty or one-shape images repeat too often

        def is_target(c, s):
            if kind == "colour_shape":
                return c == color and s == shape
            return c == color if kind == "colour" else s == shape

        specs = []
        for _ in range(n):
            specs.append((color if kind != "shape" else pick(rng, colors), shape if kind != "colour" else pick(rng, SHAPES)))
        for _ in range(k):
            near = kind == "colour_shape" and rng.random() < cfg["near_miss"]
            if near:  # same colour and another shape, or same shape and another colour
                if rng.random() < 0.5:
                    c, s = color, pick(rng, [x for x in SHAPES if x != shape])
                else:
                    c, s = pick(rng, [x for x in colors if x != color]), shape
            else:  # any non-target category
                c, s = pick(rng, [(cc, ss) for cc in colors for ss in SHAPES if not is_target(cc, ss)])
            specs.append((c, s))
        bg = background(rng, difficulty)
        objs = place_objects(rng, specs, image_size)
        assert sum(is_target(o.color, o.shape) for o in objs) == n

        query_color, query_shape = (color if kind != "shape" else None), (shape if kind != "colour" else None)
        return Draft(
            image=render(objs, image_size, bg),
            problem=f"How many {_noun(query_color, query_shape, 2)} are there?",
            answer=str(n),
            answer_type="integer",
            rationale=f"{n} {_noun(query_color, query_shape, n)}",
            meta={
                "query": {"color": query_color, "shape": query_shape},
                "objects": [o.to_meta() for o in objs],
            },
        )

    def _wrong(self, sample, rng):
        """Another count in the family's range, stated as if seen: "3 red circles" for 2."""
        n = int(sample.answer)
        top = SETTINGS[sample.meta["difficulty"]]["max_target"]
        m = pick(rng, [x for x in range(top + 1) if x != n])
        query = sample.meta["query"]
        return str(m), f"{m} {_noun(query['color'], query['shape'], m)}"
