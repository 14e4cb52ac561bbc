"""``text``: a text-only control. The question states everything; the image is seeded noise.

It mirrors ``arith`` (the same operations and ranges, stated in the text) and ``count`` (a scene
described in words), so the gap between a model's ``text`` and vision accuracy isolates perception.
"""

from __future__ import annotations

from perceptrl.data.families.arith import SETTINGS as ARITH_SETTINGS
from perceptrl.data.families.base import Draft, Family, pick
from perceptrl.data.families.scene import SHAPES, noise_image, palette, plural

GROUPS = {1: 2, 2: 3, 3: 4}  # groups in a described scene


class TextFamily(Family):
    name = "text"
    answer_types = ("integer",)
    vision_dependent = False
    description = "text-only control: arithmetic or a described scene; the image is noise"

    def _draft(self, rng, difficulty, image_size):
        if rng.random() < 0.5:
            problem, answer, rationale, meta = self._arith(rng, difficulty)
        else:
            problem, answer, rationale, meta = self._described(rng, difficulty)
        return Draft(
            image=noise_image(rng, image_size),
            problem=problem,
            answer=str(answer),
            answer_type="integer",
            rationale=rationale,
            meta=meta,
        )

    @staticmethod
    def _arith(rng, difficulty):
        op, k, lo, hi = pick(rng, ARITH_SETTINGS[difficulty]["ops"])
        if op == "diff":
            a, b = sorted((int(x) for x in rng.choice(hi - lo + 1, size=2, replace=False) + lo), reverse=True)
            return f"What is {a} minus {b}?", a - b, f"{a}-{b}={a - b}", {"kind": "arith", "op": op}
        nums = [int(x) for x in rng.integers(lo, hi + 1, size=k)]
        if op == "sum":
            total = sum(nums)
            return f"What is {' plus '.join(map(str, nums))}?", total, "+".join(map(str, nums)) + f"={total}", {
                "kind": "arith",
                "op": op,
            }
        a, b = nums
        return f"What is {a} times {b}?", a * b, f"{a}*{b}={a * b}", {"kind": "arith", "op": op}

    @staticmethod
    def _described(rng, difficulty):
        colors = palette(difficulty)
        cats = [(c, s) for c in colors for s in SHAPES]
        groups = [cats[int(i)] for i in rng.choice(len(cats), size=GROUPS[difficulty], replace=False)]
        counts = [int(x) for x in rng.integers(1, 5, size=len(groups))]
        parts = [f"{n} {c} {plural(s, n)}" for n, (c, s) in zip(counts, groups)]
        scene = ", ".join(parts[:-1]) + f" and {parts[-1]}"
        if difficulty >= 2 and rng.random() < 0.5:  # count a shape across colour groups
            shape = pick(rng, SHAPES)
            terms = [n for n, (_, s) in zip(counts, groups) if s == shape]
            total = sum(terms)
            rationale = "+".join(map(str, terms)) + f"={total}" if len(terms) > 1 else f"{total} {plural(shape, total)}"
            question = f"How many {plural(shape, 2)} are there?"
        else:
            i = int(rng.integers(len(groups)))
            total = counts[i]
            c, s = groups[i]
            rationale = parts[i]
            question = f"How many {c} {plural(s, 2)} are there?"
        return f"A picture shows {scene}. {question}", total, rationale, {"kind": "described"}

    def _wrong(self, sample, rng):
        """A slip: the total off by 1 or 2 ("3+5=9"), or a group miscounted ("3 red circles" for 2)."""
        answer = int(sample.answer)
        working = str(sample.meta["rationale"])
        if "=" in working:
            wrong = pick(rng, [answer + d for d in (-2, -1, 1, 2) if answer + d >= 0])
            return str(wrong), working.rsplit("=", 1)[0] + f"={wrong}"
        count, *words = working.split(" ")  # "2 red circles" or "2 circles"
        noun = words[-1][:-1] if int(count) != 1 else words[-1]
        wrong = pick(rng, [n for n in range(1, 5) if n != answer])
        return str(wrong), " ".join([str(wrong), *words[:-1], plural(noun, wrong)])
