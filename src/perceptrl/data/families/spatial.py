"""``spatial``: "Is the red shape left of the blue shape?" (yes/no) or "Which colour is above the
green shape? (A) red (B) blue" (choice).

Every object has its own colour, so "the red shape" is unambiguous. A relation holds when the two
shapes are at least one grid cell apart along its axis; options that are wrong lie at least one cell
on the other side, never level with the reference, so no answer hinges on a pixel or two.
"""

from __future__ import annotations

from perceptrl.data.families.base import Draft, Family, choice_text, pick
from perceptrl.data.families.scene import SHAPES, background, palette, place_objects, render

# objects: inclusive range of shapes in the scene; p_choice: share of multiple-choice questions.
SETTINGS = {
    1: dict(objects=(2, 2), p_choice=0.0, n_options=2),
    2: dict(objects=(3, 4), p_choice=0.5, n_options=2),
    3: dict(objects=(4, 6), p_choice=0.5, n_options=3),
}
RELATIONS = {"left of": (1, -1), "right of": (1, 1), "above": (0, -1), "below": (0, 1)}  # (axis, sign)
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _offset(a, b, rel):
    """Cells by which ``a`` is in direction ``rel`` of ``b`` (positive: it is)."""
    axis, sign = RELATIONS[rel]
    pa, pb = (a.row, a.col), (b.row, b.col)
    return sign * (pa[axis] - pb[axis])


class SpatialFamily(Family):
    name = "spatial"
    answer_types = ("yesno", "choice")
    description = "left/right/above/below between coloured shapes (yes/no or choice)"

    def _draft(self, rng, difficulty, image_size):
        cfg = SETTINGS[difficulty]
        colors = palette(difficulty)
        n = int(rng.integers(cfg["objects"][0], cfg["objects"][1] + 1))
        want_choice = rng.random() < cfg["p_choice"]
        want_yes = rng.random() < 0.5
        bg = background(rng, difficulty)
        for _ in range(1000):
            scene_colors = [colors[i] for i in rng.choice(len(colors), size=n, replace=False)]
            objs = place_objects(rng, [(c, pick(rng, SHAPES)) for c in scene_colors], image_size)
            rel = pick(rng, list(RELATIONS))
            if want_choice:
                draft = self._choice(rng, objs, rel, cfg["n_options"])
            else:
                draft = self._yesno(rng, objs, rel, want_yes)
            if draft is not None:
                problem, answer, answer_type, rationale, meta = draft
                break
        else:  # pragma: no cover
            raise RuntimeError("spatial: no valid scene found")
        return Draft(
            image=render(objs, image_size, bg),
            problem=problem,
            answer=answer,
            answer_type=answer_type,
            rationale=rationale,
            meta={**meta, "objects": [o.to_meta() for o in objs]},
        )

    @staticmethod
    def _yesno(rng, objs, rel, want_yes):
        i, j = rng.choice(len(objs), size=2, replace=False)
        a, b = objs[int(i)], objs[int(j)]
        off = _offset(a, b, rel)
        if off == 0:
            return None
        if (off > 0) != want_yes:  # ask the opposite relation to get the wanted answer
            rel = OPPOSITE[rel]
        yes = _offset(a, b, rel) > 0
        truth = rel if yes else OPPOSITE[rel]
        problem = f"Is the {a.color} shape {rel} the {b.color} shape?"
        meta = {"relation": rel, "pair": [a.color, b.color]}
        return problem, "yes" if yes else "no", "yesno", f"{a.color} {truth} {b.color}", meta

    @staticmethod
    def _choice(rng, objs, rel, n_options):
        ref = objs[int(rng.integers(len(objs)))]
        true = [o for o in objs if o is not ref and _offset(o, ref, rel) > 0]
        false = [o for o in objs if o is not ref and _offset(o, ref, rel) < 0]
        if not true or len(false) < n_options - 1:
            return None
        right = true[int(rng.integers(len(true)))]
        wrong = [false[int(k)] for k in rng.choice(len(false), size=n_options - 1, replace=False)]
        opts = [right, *wrong]
        perm = rng.permutation(len(opts))
        opts = [opts[int(k)] for k in perm]
        answer = chr(65 + opts.index(right))
        problem = f"Which colour is {rel} the {ref.color} shape? {choice_text([o.color for o in opts])}"
        meta = {"relation": rel, "reference": ref.color, "options": [o.color for o in opts]}
        return problem, answer, "choice", f"{right.color} {rel} {ref.color}", meta

    def _wrong(self, sample, rng):
        """The relation seen reversed ("red right of blue" for "red left of blue"), or another option."""
        meta = sample.meta
        if sample.answer_type == "yesno":
            a, b = meta["pair"]
            truth = meta["relation"] if sample.answer == "yes" else OPPOSITE[meta["relation"]]
            return ("no" if sample.answer == "yes" else "yes"), f"{a} {OPPOSITE[truth]} {b}"
        right = ord(sample.answer) - 65
        j = pick(rng, [i for i in range(len(meta["options"])) if i != right])
        return chr(65 + j), f"{meta['options'][j]} {meta['relation']} {meta['reference']}"
