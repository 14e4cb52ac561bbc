"""Tests of the synthetic benchmark (perceptrl.data.synthetic).

The core of this file is an independent *oracle*: it answers each question from the pixels and the
question text alone (colour by hue, shapes by connected components and fill ratio, positions by
centroids, digits by reading seven-segment strokes). It shares no code with the generators, so a
generator that draws something other than what its answer says makes these tests fail; the
``test_oracle_catches_*`` tests check exactly that by breaking the generators on purpose.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from perceptrl.data import synthetic
from perceptrl.data.families import pope as pope_mod
from perceptrl.data.families import scene
from perceptrl.data.synthetic import (
    FAMILIES,
    POPE_MODES,
    SUITE_VERSION,
    TEST_POOL_SIZE,
    Family,
    SyntheticTask,
    build_suite_manifest,
    get_family,
    image_digest,
    sample_digest,
    samples_digest,
)
from perceptrl.data.types import ANSWER_TYPES, Sample

ALL = list(FAMILIES)
VISION = [f for f in ALL if f != "text"]
DIFFS = (1, 2, 3)
EIGHT = np.ones((3, 3), dtype=bool)


class Ambiguous(Exception):
    """The picture does not determine a single answer."""


# ----------------------------------------------------------------------------- pixel oracle
def _hsv(img):
    a = np.asarray(img, dtype=np.float64) / 255.0
    mx, mn = a.max(axis=2), a.min(axis=2)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-9), 0.0)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    d = np.maximum(delta, 1e-9)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return hue, sat, mx


def colour_names(img):
    """Per-pixel colour name by hue (None for background and ink)."""
    hue, sat, val = _hsv(img)
    out = np.full(hue.shape, None, dtype=object)
    vivid = (sat > 0.6) & (val > 0.4)
    bands = {
        "red": (hue < 15) | (hue >= 340),
        "orange": (hue >= 15) & (hue < 40),
        "yellow": (hue >= 40) & (hue < 70),
        "green": (hue >= 90) & (hue < 165),
        "blue": (hue >= 200) & (hue < 250),
        "purple": (hue >= 260) & (hue < 320),
    }
    for name, band in bands.items():
        out[vivid & band] = name
    if (vivid & (out == None)).any():  # noqa: E711  a vivid pixel of no known colour
        raise Ambiguous("vivid pixel of unknown hue")
    return out


def shapes_in(img):
    """Every coloured shape: dicts with colour, shape, centroid (cx, cy) and pixel count."""
    names = colour_names(img)
    found = []
    for colour in ("red", "orange", "yellow", "green", "blue", "purple"):
        lab, n = ndimage.label(names == colour, structure=EIGHT)
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[sl] == k
            h, w = comp.shape
            if comp.sum() < 0.04 * img.size[0] ** 2 / 4:  # tiny speck: not a shape
                raise Ambiguous(f"speck of {colour}")
            if abs(h - w) > max(2, 0.15 * max(h, w)):
                raise Ambiguous(f"{colour} blob of {h}x{w} is not a shape")
            fill = comp.sum() / (h * w)
            shape = "square" if fill > 0.93 else "circle" if fill > 0.65 else "triangle"
            ys, xs = np.nonzero(comp)
            found.append(
                {"colour": colour, "shape": shape, "cx": sl[1].start + xs.mean(), "cy": sl[0].start + ys.mean()}
            )
    return found


SEVEN = {
    "abcdef": 0,
    "bc": 1,
    "abdeg": 2,
    "abcdg": 3,
    "bcfg": 4,
    "acdfg": 5,
    "acdefg": 6,
    "abc": 7,
    "abcdefg": 8,
    "abcdfg": 9,
}


def read_digit(m):
    """Read one seven-segment digit from its boolean crop."""
    h, w = m.shape
    if w <= 0.3 * h:
        if not m.all():
            raise Ambiguous("a thin mark that is not a full bar")
        return 1
    lit = {
        "a": m[0, w // 2],
        "d": m[h - 1, w // 2],
        "g": m[h // 2 - 1 : h // 2 + 1, w // 2].any(),
        "f": m[h // 4, 0],
        "b": m[h // 4, w - 1],
        "e": m[3 * h // 4, 0],
        "c": m[3 * h // 4, w - 1],
    }
    key = "".join(s for s in "abcdefg" if lit[s])
    if key not in SEVEN:
        raise Ambiguous(f"segments {key!r} are no digit")
    return SEVEN[key]


def read_numbers(img):
    """Numbers written in dark ink: digits side by side on the same baseline form one number."""
    _, _, val = _hsv(img)
    lab, n = ndimage.label(val < 0.25, structure=EIGHT)
    digits = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        digits.append((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop, read_digit(lab[sl] == k)))
    digits.sort(key=lambda d: (d[0], d[2]))
    numbers, current = [], None
    for y0, y1, x0, x1, v in sorted(digits, key=lambda d: (d[0], d[1], d[2])):
        if current and (y0, y1) == current["y"] and x0 - current["x1"] <= 0.3 * (y1 - y0):
            current["text"] += str(v)
            current["x1"] = x1
        else:
            current = {"y": (y0, y1), "x1": x1, "text": str(v)}
            numbers.append(current)
    return sorted(int(c["text"]) for c in numbers)


def relation(a, b, rel, margin):
    """True/False if ``a`` clearly is/is not ``rel`` of ``b``; Ambiguous if nearly level."""
    d = {"left of": b["cx"] - a["cx"], "right of": a["cx"] - b["cx"], "above": b["cy"] - a["cy"], "below": a["cy"] - b["cy"]}[rel]
    if abs(d) < margin:
        raise Ambiguous(f"{a['colour']} and {b['colour']} are nearly level")
    return d > 0


def the_one(objs, colour):
    hits = [o for o in objs if o["colour"] == colour]
    if len(hits) != 1:
        raise Ambiguous(f"{len(hits)} {colour} shapes")
    return hits[0]


def options_of(problem):
    return dict(re.findall(r"\(([A-D])\) (\w+)", problem))


def solve(s: Sample) -> str:
    """Answer ``s`` from its pixels and question text only."""
    img, q = s.images[0], s.problem
    if s.family == "text":
        return solve_text(q)
    if s.family == "arith":
        nums = read_numbers(img)
        want = {"two": 2, "three": 3}
        m = re.fullmatch(r"What is the sum of the (two|three) numbers\?", q)
        if m:
            if len(nums) != want[m.group(1)]:
                raise Ambiguous(f"read {nums}")
            return str(sum(nums))
        if len(nums) != 2:
            raise Ambiguous(f"read {nums}")
        if q == "What is the larger number minus the smaller number?":
            return str(max(nums) - min(nums))
        if q == "What is the product of the two numbers?":
            return str(nums[0] * nums[1])
        raise AssertionError(f"unknown arith question {q!r}")
    objs = shapes_in(img)
    margin = 0.08 * img.size[0]
    if s.family == "count":
        m = re.fullmatch(r"How many (?:(\w+) )?(circle|square|triangle|shape)s are there\?", q)
        colour, shape = m.group(1), m.group(2)
        return str(
            sum((colour is None or o["colour"] == colour) and (shape == "shape" or o["shape"] == shape) for o in objs)
        )
    if s.family == "pope":
        colour, shape = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q).groups()
        return "yes" if any(o["colour"] == colour and o["shape"] == shape for o in objs) else "no"
    if s.family == "shortcut":
        colour, shape = re.fullmatch(r"Do you see a (\w+) (\w+)\?", q).groups()
        return "yes" if any(o["colour"] == colour and o["shape"] == shape for o in objs) else "no"
    if s.family == "compare":
        attr, extreme = re.match(r"Which (colour|shape) (?:has|is) the (most|fewest|least)", q).groups()
        opts = options_of(q)
        key = "colour" if attr == "colour" else "shape"
        counts = {k: sum(o[key] == v for o in objs) for k, v in opts.items()}
        if sum(counts.values()) != len(objs):
            raise Ambiguous("shapes outside the options")
        best = (max if extreme == "most" else min)(counts.values())
        winners = [k for k, c in counts.items() if c == best]
        if len(winners) != 1:
            raise Ambiguous(f"tie {counts}")
        return winners[0]
    if s.family == "spatial":
        m = re.fullmatch(r"Is the (\w+) shape (left of|right of|above|below) the (\w+) shape\?", q)
        if m:
            a, rel, b = m.groups()
            return "yes" if relation(the_one(objs, a), the_one(objs, b), rel, margin) else "no"
        rel, ref = re.match(r"Which colour is (left of|right of|above|below) the (\w+) shape\?", q).groups()
        ref_obj = the_one(objs, ref)
        truth = {k: relation(the_one(objs, v), ref_obj, rel, margin) for k, v in options_of(q).items()}
        right = [k for k, t in truth.items() if t]
        if len(right) != 1:
            raise Ambiguous(f"{len(right)} options hold")
        return right[0]
    raise AssertionError(f"no oracle for {s.family}")


WORDS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def solve_text(q: str) -> str:
    m = re.fullmatch(r"What is (\d+(?: (?:plus|minus|times) \d+)+)\?", q)
    if m:
        tokens = m.group(1).split()
        acc = int(tokens[0])
        for op, v in zip(tokens[1::2], tokens[2::2]):
            acc = WORDS[op](acc, int(v))
        return str(acc)
    m = re.fullmatch(r"A picture shows (.+)\. How many (.+) are there\?", q)
    groups = [(int(n), c, sh) for n, c, sh in re.findall(r"(\d+) (\w+) (circle|square|triangle)s?\b", m.group(1))]
    words = m.group(2).split()
    if len(words) == 2:
        colour, shape = words[0], words[1][:-1]
        return str(sum(n for n, c, sh in groups if c == colour and sh == shape))
    return str(sum(n for n, c, sh in groups if sh == words[0][:-1]))


def samples(family, difficulty, n, image_size=56, seed=0):
    task = SyntheticTask([family], difficulty=difficulty, image_size=image_size, seed=seed, decontaminate=False)
    return [task.train_sample(i) for i in range(n)]


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("difficulty", DIFFS)
@pytest.mark.parametrize("family", ALL)
def test_answers_match_pixels(family, difficulty):
    for s in samples(family, difficulty, 80):
        assert solve(s) == s.answer, (s.id, s.problem, s.answer, s.meta)


@pytest.mark.parametrize("image_size", [84, 112])
@pytest.mark.parametrize("family", ALL)
def test_answers_match_pixels_other_sizes(family, image_size):
    for d in DIFFS:
        for s in samples(family, d, 15, image_size=image_size):
            assert s.images[0].size == (image_size, image_size)
            assert solve(s) == s.answer, (s.id, s.problem, s.answer, s.meta)


def test_test_set_answers_match_pixels():
    for d in DIFFS:
        for s in SyntheticTask(ALL, difficulty=d).test_set(15):
            assert solve(s) == s.answer, (s.id, s.problem, s.answer)


def test_arith_metadata_agrees_with_pixels():
    for d in DIFFS:
        for s in samples("arith", d, 40):
            assert read_numbers(s.images[0]) == sorted(s.meta["numbers"])


def check_rationale(s: Sample) -> None:
    """The rationale states the sample's answer (whether or not that answer is true)."""
    r, fam = s.meta["rationale"], s.family
    assert 0 < len(r) <= 22, r
    if fam == "count":
        n = int(s.answer)
        assert r.split()[0] == s.answer and r.endswith("s") == (n != 1), r
    elif fam in ("arith", "text"):
        assert r.endswith("=" + s.answer) or r.split()[0] == s.answer, r
    elif fam == "compare":
        assert r.split()[0] == options_of(s.problem)[s.answer]
    elif fam in ("pope", "shortcut"):
        assert r.startswith("no ") == (s.answer == "no"), r
        assert r.endswith(" ".join(s.meta["asked"])) or r.endswith(" ".join(s.meta["asked"]) + "s"), r
    elif fam == "spatial" and s.answer_type == "choice":
        assert r.split()[0] == options_of(s.problem)[s.answer]
    elif fam == "spatial":
        a, rel, b = re.fullmatch(r"Is the (\w+) shape (.+) the (\w+) shape\?", s.problem).groups()
        assert (r == f"{a} {rel} {b}") == (s.answer == "yes"), (r, s.problem, s.answer)
    else:
        raise AssertionError(f"no rationale check for {fam}")


def test_rationale_supports_answer():
    for d in DIFFS:
        for fam in ALL:
            for s in samples(fam, d, 40):
                check_rationale(s)


# ----------------------------------------------------------------------------- the oracle can fail
def _disagreements(family, n=60, difficulty=2):
    bad = 0
    for s in samples(family, difficulty, n):
        try:
            bad += solve(s) != s.answer
        except Ambiguous:
            bad += 1
    return bad


def test_oracle_agrees_before_breaking():
    for fam in ALL:
        assert _disagreements(fam) == 0


def test_oracle_catches_wrong_colours(monkeypatch):
    monkeypatch.setitem(scene.COLORS, "red", scene.COLORS["blue"])
    monkeypatch.setitem(scene.COLORS, "blue", (230, 25, 25))
    for fam in ("count", "compare", "spatial", "pope"):
        assert _disagreements(fam) >= 5, fam


def test_oracle_catches_wrong_shapes(monkeypatch):
    real = scene.shape_mask
    monkeypatch.setattr(scene, "shape_mask", lambda shape, size: real("square" if shape == "circle" else shape, size))
    for fam in ("count", "pope"):
        assert _disagreements(fam) >= 5, fam


def test_oracle_catches_wrong_digits(monkeypatch):
    scene.digit_mask.cache_clear()
    monkeypatch.setitem(scene.SEGMENTS, "3", scene.SEGMENTS["8"])
    monkeypatch.setitem(scene.SEGMENTS, "6", "abcdfg")  # draws a 9
    try:
        assert _disagreements("arith", n=80) >= 5
    finally:
        monkeypatch.undo()
        scene.digit_mask.cache_clear()


def test_oracle_catches_moved_shapes():
    for s in samples("spatial", 3, 60):
        # mirror left-right and top-bottom: every relation reverses
        flipped = s.images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        t = Sample(s.id, [flipped], s.problem, s.answer, s.answer_type, s.family, s.vision_dependent, s.meta)
        try:
            assert solve(t) != s.answer
        except Ambiguous:
            pass


def test_oracle_catches_wrong_text():
    for s in [s for d in DIFFS for s in samples("text", d, 30) if s.meta["kind"] == "arith"]:
        q = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), s.problem, count=1)
        assert solve_text(q) != s.answer, q


# ----------------------------------------------------------------------------- validity
def _check_sample(s: Sample, family: str, difficulty: int, image_size: int):
    assert isinstance(s, Sample) and s.family == family
    assert s.id.startswith(f"{family}-v{SUITE_VERSION}-")
    assert len(s.images) == 1 and s.images[0].mode == "RGB" and s.images[0].size == (image_size, image_size)
    assert isinstance(s.problem, str) and "?" in s.problem
    assert s.problem.isascii() and "answer" not in s.problem.lower() and "<" not in s.problem
    assert s.answer_type in ANSWER_TYPES and s.answer_type in FAMILIES[family].answer_types
    assert s.vision_dependent == (family != "text")
    assert s.meta["difficulty"] == difficulty and isinstance(s.meta["rationale"], str)
    json.dumps(s.meta)
    if s.answer_type == "integer":
        int(s.answer)
    elif s.answer_type == "yesno":
        assert s.answer in ("yes", "no")
    elif s.answer_type == "choice":
        assert s.answer in options_of(s.problem) and len(options_of(s.problem)) >= 2
    if family == "pope":
        assert s.meta["pope_mode"] in POPE_MODES


@pytest.mark.parametrize("family", ALL)
def test_every_family_and_difficulty_gives_valid_samples(family):
    for d in DIFFS:
        for size in (56, 84, 112):
            task = SyntheticTask([family], difficulty=d, image_size=size, decontaminate=False)
            for i in range(8):
                _check_sample(task.train_sample(i), family, d, size)
            for s in task.test_set(4):
                _check_sample(s, family, d, size)
        fam = get_family(family)
        assert isinstance(fam, Family)
        s = fam.sample(np.random.default_rng(0), d, 56)
        assert s.family == family and s.images[0].size == (56, 56)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="count.*arith.*compare.*spatial.*pope.*text.*shortcut"):
        get_family("nope")
    with pytest.raises(ValueError, match="multiple of 28"):
        SyntheticTask(image_size=60)
    with pytest.raises(ValueError, match="multiple of 28"):
        SyntheticTask(image_size=28)
    with pytest.raises(ValueError, match="difficulty"):
        SyntheticTask(difficulty=4)
    with pytest.raises(ValueError):
        SyntheticTask(["count", "nope"])
    with pytest.raises(ValueError):
        get_family("count").sample(np.random.default_rng(0), 0, 56)
    with pytest.raises(ValueError):
        SyntheticTask().test_set(TEST_POOL_SIZE + 1)


# ----------------------------------------------------------------------------- distributions
def test_count_difficulty1_is_small_and_balanced():
    xs = samples("count", 1, 1000)
    answers = [int(s.answer) for s in xs]
    freq = np.bincount(answers, minlength=5) / len(answers)
    assert set(answers) == {0, 1, 2, 3, 4} and freq.min() > 0.13 and freq.max() < 0.27
    for s in xs[:200]:
        q = re.fullmatch(r"How many (\w+) (circle|square|triangle)s are there\?", s.problem)
        assert q and q.group(1) in ("red", "green", "blue", "yellow")
        assert {o["colour"] for o in shapes_in(s.images[0])} <= {"red", "green", "blue", "yellow"}


def test_answer_balance():
    for fam in ("pope", "spatial"):
        xs = [s for d in DIFFS for s in samples(fam, d, 300)]
        yes = [s.answer == "yes" for s in xs if s.answer_type == "yesno"]
        assert 0.4 < np.mean(yes) < 0.6, fam
    letters = [s.answer for s in samples("compare", 1, 600)]
    assert all(0.25 < letters.count(k) / 600 < 0.42 for k in "ABC")


def test_shortcut_cue_predicts_the_answer_in_training_only():
    for d in DIFFS:
        task = SyntheticTask(["shortcut"], difficulty=d, decontaminate=False)
        train = [task.train_sample(i) for i in range(800)]
        test = task.test_set(800)
        holds = lambda xs: np.mean([s.meta["cue_holds"] for s in xs])  # noqa: E731
        # 800 items: standard error 0.014 (train) and 0.018 (test).
        assert 0.75 < holds(train) < 0.85 and 0.44 < holds(test) < 0.56, (d, holds(train), holds(test))
        for s in train + test:
            assert s.meta["cue"] == ("yes" if s.meta["asked"][0] in ("red", "blue", "purple") else "no")
            assert s.meta["cue_holds"] == (s.answer == s.meta["cue"])
        # The cue alone: 80% in training, chance held out; answering "yes" always: chance in both.
        for xs in (train, test):
            assert 0.4 < np.mean([s.answer == "yes" for s in xs]) < 0.6
    # Near misses: most "no" scenes hold the asked colour or the asked shape.
    xs = [s for s in test if s.answer == "no"]
    near = [any(o[0] == s.meta["asked"][0] or o[1] == s.meta["asked"][1] for o in s.meta["objects"]) for s in xs]
    assert np.mean(near) > 0.8


@pytest.mark.parametrize("family", ALL)
def test_label_noise_makes_a_share_of_training_answers_wrong_and_says_so(family):
    for d in DIFFS:
        clean = SyntheticTask([family], difficulty=d, seed=3, decontaminate=False)
        noisy = SyntheticTask([family], difficulty=d, seed=3, decontaminate=False, label_noise=0.4)
        wrong = 0
        for i in range(60):
            a, b = clean.train_sample(i), noisy.train_sample(i)
            assert a.images[0].tobytes() == b.images[0].tobytes() and a.problem == b.problem
            if b.meta.get("label_noise"):
                wrong += 1
                assert b.answer != a.answer and b.meta["true_answer"] == a.answer
                assert solve(b) == a.answer  # the pixels (or the text) still give the true answer
                check_rationale(b)  # the rationale states the wrong answer consistently
                assert b.answer_type == a.answer_type
                if b.answer_type == "choice":
                    assert b.answer in options_of(b.problem)
            else:
                assert sample_digest(a) == sample_digest(b)
        assert 12 <= wrong <= 36, wrong  # 60 draws at 0.4: mean 24, sd 3.8
        assert sample_digest(noisy.test_sample(family, 0)) == sample_digest(clean.test_sample(family, 0))
    with pytest.raises(ValueError, match="label_noise"):
        SyntheticTask([family], label_noise=1.0)


def test_pope_modes_mean_what_they_say():
    xs = samples("pope", 1, 1200)
    assert {s.meta["pope_mode"] for s in xs} == set(POPE_MODES)
    present = {s.id: {(o["colour"], o["shape"]) for o in shapes_in(s.images[0])} for s in xs}
    neg = {m: [s for s in xs if s.meta["pope_mode"] == m and s.answer == "no"] for m in POPE_MODES}
    assert all(len(v) > 150 for v in neg.values())
    pop = {m: np.mean([pope_mod.popularity(tuple(s.meta["asked"])) for s in v]) for m, v in neg.items()}
    co = {
        m: np.mean([sum(pope_mod.cooccurrence(tuple(s.meta["asked"]), p) for p in present[s.id]) for s in v])
        for m, v in neg.items()
    }
    assert pop["popular"] > 1.5 * pop["random"]
    assert co["adversarial"] > 1.3 * co["random"]
    # Scenes follow the co-occurrence table: distinct categories share a colour more often than
    # independent draws from the popularity prior would.
    cats = pope_mod.categories(1)
    p = np.array([pope_mod.popularity(c) for c in cats])
    pair_p = np.outer(p, p) * (1 - np.eye(len(cats)))
    same = np.array([[a[0] == b[0] for b in cats] for a in cats])
    baseline = (pair_p * same).sum() / pair_p.sum()
    observed = np.mean([a[0] == b[0] for s in xs for a in present[s.id] for b in present[s.id] if a < b])
    assert observed > 1.3 * baseline


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_samples():
    a = SyntheticTask(ALL, difficulty=2, seed=7)
    b = SyntheticTask(ALL, difficulty=2, seed=7)
    for i in range(30):
        x, y = a.train_sample(i), b.train_sample(i)
        assert x.images[0].tobytes() == y.images[0].tobytes()
        assert (x.id, x.problem, x.answer, x.meta) == (y.id, y.problem, y.answer, y.meta)
    stream = a.train_stream(seed=7)
    assert [sample_digest(next(stream)) for _ in range(12)] == [sample_digest(b.train_sample(i)) for i in range(12)]
    resumed = a.train_stream(start=5)
    assert sample_digest(next(resumed)) == sample_digest(a.train_sample(5))


def test_different_index_or_seed_different_sample():
    task = SyntheticTask(ALL, difficulty=1)
    digests = [image_digest(task.train_sample(i).images[0]) for i in range(300)]
    assert len(set(digests)) == 300
    other = SyntheticTask(ALL, difficulty=1, seed=1)
    assert all(image_digest(other.train_sample(i).images[0]) != digests[i] for i in range(30))
    s5 = task.train_stream(seed=5)
    assert image_digest(next(s5).images[0]) != digests[0]


def test_weighted_families():
    task = SyntheticTask(["count", "pope"], weights={"count": 3, "pope": 1})
    fams = [task.train_sample(i).family for i in range(400)]
    assert 0.65 < fams.count("count") / 400 < 0.85
    assert fams == [task.train_sample(i).family for i in range(400)]


def test_test_set_is_stable_and_prefix_consistent():
    task = SyntheticTask(["count", "pope"], difficulty=1, seed=123)
    small = task.test_set(5)
    big = task.test_set(20)
    assert [s.id for s in small] == [s.id for s in big if int(s.id.rsplit("-", 1)[1]) < 5]
    alone = SyntheticTask(["pope"], difficulty=1).test_set(5)  # other families and the seed do not matter
    assert samples_digest(alone) == samples_digest([s for s in small if s.family == "pope"])
    assert task.build_suite_manifest(5)["sha256"] == SyntheticTask(["count", "pope"]).build_suite_manifest(5)["sha256"]


# Pinned: an accidental change to anything the test set contains (pixels included) fails here.
# An intentional change must bump SUITE_VERSION and re-pin.
# The six families of suite version 1 keep their pin: adding ``shortcut`` changed none of their items.
FIRST_SIX = ["count", "arith", "compare", "spatial", "pope", "text"]
PINNED = {
    1: "030001e034d6d789dfbb0953dbbac8eb483447b4578602e41ec47730717a536a",
    2: "253783952955430c83cec6a3a0b5d9ab3a77449609df202e1c9c4e0fd6234157",
    3: "ef121a5b450436ec65bf1a85a22ec31309fb675a5f54bd807a2dcbb9d3829ccd",
}
PINNED_SHORTCUT = {
    1: "7ec9d6ecd7680373546985b9e62a1941b09028412e8e413d6be183f28a13f8cc",
    2: "162e79eb619689ff8496fa196c5269f57822746a79fa7825bc8c5f86cb20579f",
    3: "ffac27e39f7e5a49597f3ca478857a3c0acdd54119d880c567229d3bc8826990",
}


def test_test_set_hash_is_pinned():
    assert SUITE_VERSION == 1
    assert ALL == FIRST_SIX + ["shortcut"]
    got = {d: SyntheticTask(FIRST_SIX, difficulty=d).build_suite_manifest(n_per_family=20)["sha256"] for d in DIFFS}
    assert got == PINNED
    got = {d: SyntheticTask(["shortcut"], difficulty=d).build_suite_manifest(n_per_family=20)["sha256"] for d in DIFFS}
    assert got == PINNED_SHORTCUT
    m = build_suite_manifest(n_per_family=3)
    assert m["suite_version"] == SUITE_VERSION and set(m["difficulties"]) == {"1", "2", "3"}


# ----------------------------------------------------------------------------- train/test disjointness
def test_train_and_test_are_disjoint():
    for d in (1, 2):
        task = SyntheticTask(ALL, difficulty=d, seed=0)
        test = task.test_set(100)
        train = [task.train_sample(i) for i in range(1200)]
        assert not {s.id for s in test} & {s.id for s in train}
        assert len({s.id for s in train}) == len(train)
        assert not {image_digest(s.images[0]) for s in test} & {image_digest(s.images[0]) for s in train}


def test_decontamination_redraws_test_images(monkeypatch):
    # Small scenes can repeat by chance; a training image equal to a test image is redrawn.
    raw = SyntheticTask(["count"], difficulty=1, seed=0, decontaminate=False)
    clash = {image_digest(raw.train_sample(i).images[0]) for i in (3, 7)}
    monkeypatch.setattr(synthetic, "_test_pool_digests", lambda *a: clash)
    task = SyntheticTask(["count"], difficulty=1, seed=0)
    for i in range(12):
        x, y = task.train_sample(i), raw.train_sample(i)
        if i in (3, 7):
            assert image_digest(x.images[0]) not in clash and x.id == y.id
            assert solve(x) == x.answer
            assert sample_digest(x) == sample_digest(task.train_sample(i))  # still deterministic
        else:
            assert sample_digest(x) == sample_digest(y)


# ----------------------------------------------------------------------------- speed
def test_sampling_is_fast():
    task = SyntheticTask(ALL, difficulty=3, decontaminate=False)
    t0 = time.perf_counter()
    for i in range(1000):
        task.train_sample(i)
    assert time.perf_counter() - t0 < 2.0


def test_label_noise_is_a_data_setting_of_the_builtin_suite():
    from perceptrl.config import ConfigError, load_config
    from perceptrl.data.sources import build_source

    config = load_config("recipes/warmstart.yaml", ["data.families=[pope]", "data.label_noise=0.3"])
    source = build_source(config.data, seed=0)
    assert source.task.label_noise == 0.3
    assert sum(bool(source.train_sample(i).meta.get("label_noise")) for i in range(100)) in range(18, 43)
    assert not any(s.meta.get("label_noise") for s in source.val_samples())
    with pytest.raises(ConfigError, match=r"data.label_noise must be in \[0, 1\)"):
        load_config("recipes/warmstart.yaml", ["data.label_noise=1.0"])
    with pytest.raises(ConfigError, match="data.label_noise applies to the built-in suite only"):
        load_config("recipes/warmstart.yaml", ["data.label_noise=0.2", "data.train_files=x.jsonl"])
