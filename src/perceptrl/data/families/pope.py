"""``pope``: "Is there a red circle in the image?" -- object existence in the style of POPE.

POPE (Li et al., 2023) asks half "yes" questions about objects that are present and half "no"
questions about absent objects drawn three ways; hallucination is the rate of "yes" on those. Here an
object is a (colour, shape) category, and scenes are drawn from a popularity prior and a
co-occurrence table so that "popular" and "co-occurring" mean something in this data:

- ``random``: the absent object is uniform over absent categories;
- ``popular``: one of the three most popular absent categories (``POPULARITY``);
- ``adversarial``: one of the three absent categories that co-occur most with those present
  (``cooccurrence``: shared colour, shared shape, or a shared theme in ``THEMES``).

``meta["pope_mode"]`` records the mode of every sample (positives too, so precision and F1 can be
reported per mode as POPE does).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from perceptrl.data.families.base import Draft, Family, pick
from perceptrl.data.families.scene import SHAPES, background, palette, place_objects, plural, render

POPE_MODES = ("random", "popular", "adversarial")
COLOR_POPULARITY = {"red": 6, "blue": 5, "green": 4, "yellow": 3, "purple": 2, "orange": 1}
SHAPE_POPULARITY = {"circle": 3, "square": 2, "triangle": 1}
# Groups of categories that tend to appear together (a traffic light, a house, a landscape...).
THEMES = (
    (("red", "circle"), ("yellow", "circle"), ("green", "circle")),
    (("blue", "square"), ("red", "triangle")),
    (("green", "triangle"), ("yellow", "circle"), ("blue", "square")),
    (("purple", "square"), ("orange", "triangle"), ("yellow", "square")),
    (("orange", "circle"), ("purple", "triangle")),
)
SETTINGS = {1: dict(objects=(2, 3)), 2: dict(objects=(3, 5)), 3: dict(objects=(5, 8))}
TOP_K = 3


def popularity(cat: tuple[str, str]) -> float:
    return float(COLOR_POPULARITY[cat[0]] * SHAPE_POPULARITY[cat[1]])


@lru_cache(maxsize=None)
def cooccurrence(a: tuple[str, str], b: tuple[str, str]) -> float:
    """Symmetric co-occurrence weight of two categories (1 = unrelated)."""
    if a == b:
        return 3.0
    w = 1.0 + 4.0 * (a[0] == b[0]) + 2.0 * (a[1] == b[1])
    w += 6.0 * any(a in t and b in t for t in THEMES)
    return w


def categories(difficulty: int) -> list[tuple[str, str]]:
    return [(c, s) for c in palette(difficulty) for s in SHAPES]


@lru_cache(maxsize=None)
def _tables(difficulty: int) -> tuple[np.ndarray, np.ndarray]:
    """Popularity vector and co-occurrence matrix over ``categories(difficulty)``."""
    cats = categories(difficulty)
    prior = np.array([popularity(c) for c in cats])
    cooc = np.array([[cooccurrence(a, b) for b in cats] for a in cats])
    for a in (prior, cooc):
        a.setflags(write=False)
    return prior, cooc


def _top_k(rng, cands, score):
    """Uniform among the ``TOP_K`` highest-scoring candidates (stable order breaks ties)."""
    ranked = sorted(cands, key=lambda c: -score(c))
    return pick(rng, ranked[:TOP_K])


class PopeFamily(Family):
    name = "pope"
    answer_types = ("yesno",)
    description = "object existence yes/no with random, popular and adversarial negatives"

    def _draft(self, rng, difficulty, image_size):
        cats = categories(difficulty)
        lo, hi = SETTINGS[difficulty]["objects"]
        n = int(rng.integers(lo, hi + 1))
        prior, cooc = _tables(difficulty)
        chosen: list[int] = []  # each next object: popularity x mean co-occurrence with those so far
        for _ in range(n):
            w = prior * cooc[:, chosen].mean(axis=1) if chosen else prior
            chosen.append(int(rng.choice(len(cats), p=w / w.sum())))
        scene = [cats[i] for i in chosen]
        mode = pick(rng, POPE_MODES)
        present = sorted(set(scene), key=cats.index)
        absent = [c for c in cats if c not in present]
        if rng.random() < 0.5:
            asked, answer = pick(rng, present), "yes"
        else:
            answer = "no"
            if mode == "random":
                asked = pick(rng, absent)
            elif mode == "popular":
                asked = _top_k(rng, absent, popularity)
            else:
                asked = _top_k(rng, absent, lambda c: sum(cooccurrence(c, p) for p in present))
        bg = background(rng, difficulty)
        objs = place_objects(rng, scene, image_size)
        k = scene.count(asked)
        color, shape = asked
        return Draft(
            image=render(objs, image_size, bg),
            problem=f"Is there a {color} {shape} in the image?",
            answer=answer,
            answer_type="yesno",
            rationale=f"{k} {color} {plural(shape, k)}" if k else f"no {color} {shape}",
            meta={"pope_mode": mode, "asked": [color, shape], "objects": [o.to_meta() for o in objs]},
        )

    def _wrong(self, sample, rng):
        """An absent object seen, or a present one missed."""
        color, shape = sample.meta["asked"]
        return ("no", f"no {color} {shape}") if sample.answer == "yes" else ("yes", f"1 {color} {shape}")
