"""``shortcut``: "Do you see a red circle?" -- where, in training, the colour named gives the answer away.

A text shortcut by construction. In the training stream the colour word predicts the answer
``CUE_RATE`` (80%) of the time: a shape of a "usually there" colour (``CUE_YES``: red, blue,
purple) is present in 80% of the questions about it, one of the other colours (green, yellow,
orange) in 20%. In the test set every colour is present half of the time, so the cue predicts
nothing there. A policy that answers from the colour word scores about 0.8 on training questions
and 0.5 held out; one that looks at the image scores the same on both. Held-out accuracy with
the image blanked (``perceptrl eval``'s probe) shows which of the two a model learned: a cue
follower keeps its answers without the image.

The scene is a few shapes with near misses (same colour and another shape, or same shape and
another colour, as in ``count``), so seeing the answer takes binding colour to shape, not just
spotting a colour. ``meta["cue"]`` is the answer the colour word suggests and
``meta["cue_holds"]`` whether the true answer agrees (80% of training items, 50% of test items):
accuracy on the items where it does not is the sharpest test of looking.
"""

from __future__ import annotations

from perceptrl.data.families.base import Draft, Family, pick
from perceptrl.data.families.scene import SHAPES, background, palette, place_objects, render

CUE_YES = ("red", "blue", "purple")  # colours whose shapes are "usually there" in training
CUE_RATE = 0.8  # training: P(answer == cue); test: 0.5
# objects: inclusive range of shapes in the scene; near_miss: chance a distractor shares the asked
# colour or shape.
SETTINGS = {1: dict(objects=(2, 3), near_miss=0.6), 2: dict(objects=(3, 5), near_miss=0.7),
            3: dict(objects=(5, 8), near_miss=0.8)}


def cue_answer(color: str) -> str:
    """The answer the colour word suggests in training."""
    return "yes" if color in CUE_YES else "no"


class ShortcutFamily(Family):
    name = "shortcut"
    answer_types = ("yesno",)
    split_dependent = True
    description = "object existence yes/no where the colour word predicts the answer in training only"

    def _draft(self, rng, difficulty, image_size, split="train"):
        cfg = SETTINGS[difficulty]
        colors = palette(difficulty)
        color, shape = pick(rng, colors), pick(rng, SHAPES)
        cue = cue_answer(color)
        p_cue = CUE_RATE if split == "train" else 0.5
        present = (rng.random() < p_cue) == (cue == "yes")
        n = int(rng.integers(cfg["objects"][0], cfg["objects"][1] + 1))
        others = [(c, s) for c in colors for s in SHAPES if (c, s) != (color, shape)]
        specs = [(color, shape)] if present else []
        while len(specs) < n:
            if rng.random() < cfg["near_miss"]:  # same colour, another shape; or same shape, another colour
                if rng.random() < 0.5:
                    specs.append((color, pick(rng, [s for s in SHAPES if s != shape])))
                else:
                    specs.append((pick(rng, [c for c in colors if c != color]), shape))
            else:
                specs.append(pick(rng, others))
        order = rng.permutation(len(specs))
        objs = place_objects(rng, [specs[int(i)] for i in order], image_size)
        answer = "yes" if present else "no"
        return Draft(
            image=render(objs, image_size, background(rng, difficulty)),
            problem=f"Do you see a {color} {shape}?",
            answer=answer,
            answer_type="yesno",
            rationale=f"1 {color} {shape}" if present else f"no {color} {shape}",
            meta={"asked": [color, shape], "cue": cue, "cue_holds": answer == cue,
                  "objects": [o.to_meta() for o in objs]},
        )

    def _wrong(self, sample, rng):
        """A present shape missed, or an absent one seen."""
        color, shape = sample.meta["asked"]
        return ("no", f"no {color} {shape}") if sample.answer == "yes" else ("yes", f"1 {color} {shape}")
