"""A built-in, offline, seeded, unlimited synthetic visual benchmark where perception matters.

Seven families (``FAMILIES``), each with difficulties 1..3, drawn as RGB images whose side is a
multiple of 28 (default 56, i.e. 4 x 4 patches of 14 px, one shape per patch):

========  ==========================================================  ============
family    question                                                    answer_type
========  ==========================================================  ============
count     How many red circles are there?                             integer
arith     What is the sum of the two numbers? (seven-segment digits)  integer
compare   Which colour has the most shapes? (A) red (B) blue ...      choice
spatial   Is the red shape left of the blue shape? / Which colour...  yesno/choice
pope      Is there a red circle in the image? (random/popular/adv.)   yesno
text      What is 3 plus 5? (image is noise; vision_dependent=False)  integer
shortcut  Do you see a red circle? (colour word = answer, train only)  yesno
========  ==========================================================  ============

``shortcut`` is the one family whose training and test distributions differ on purpose: in
training the colour named predicts the answer 80% of the time, in the test set it predicts nothing
(``perceptrl.data.families.shortcut``). ``label_noise`` makes a fraction of training answers wrong
(with rationales that state them), for a miscalibrated warm start.

Every sample carries ``meta["difficulty"]`` and a short ``meta["rationale"]`` (under about 20
characters, e.g. ``"2 red circles"``) usable as the reasoning of an SFT target, plus the scene.

Determinism: a training sample is a pure function of ``(seed, index)`` (numpy ``SeedSequence`` with
spawn key ``(0, index)``), so a resumed run continues at a data position with ``train_sample``. The
test set is a pure function of ``(TEST_SEED, SUITE_VERSION, family, difficulty, index)`` under spawn
key 1, a different random stream from training, and item ``i`` does not depend on which other
families or how many items are requested. Training also redraws any image byte-identical to a test
image of the same difficulty and size (``decontaminate``), so the two never share an image. Images are rasterised with numpy (no fonts, no anti-aliasing), so they are
byte-identical across platforms and Pillow versions; ``build_suite_manifest`` hashes them. Any change
to what the generators draw for the test set must bump ``SUITE_VERSION``.

Example::

    task = SyntheticTask(["count", "pope"], difficulty=1, seed=0)
    s = task.train_sample(12)            # same Sample every time
    test = task.test_set(100)            # 100 per family, fixed forever for SUITE_VERSION 1
"""

from __future__ import annotations

import hashlib
import json
import zlib
from functools import lru_cache
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from perceptrl.data.families import (
    DIFFICULTIES,
    POPE_MODES,
    ArithFamily,
    CompareFamily,
    CountFamily,
    Family,
    PopeFamily,
    ShortcutFamily,
    SpatialFamily,
    TextFamily,
)
from perceptrl.data.families.scene import check_image_size
from perceptrl.data.types import Sample

__all__ = [
    "DIFFICULTIES",
    "FAMILIES",
    "POPE_MODES",
    "SUITE_VERSION",
    "TEST_POOL_SIZE",
    "TEST_SEED",
    "Family",
    "SyntheticTask",
    "build_suite_manifest",
    "get_family",
    "image_digest",
    "sample_digest",
    "samples_digest",
]

SUITE_VERSION = 1
TEST_SEED = 20260417  # never change; bump SUITE_VERSION instead
TEST_POOL_SIZE = 1000  # test items per family; training never shows one of their images
_TRAIN_KEY, _TEST_KEY, _NOISE_KEY = 0, 1, 2
_MAX_REDRAWS = 100

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (CountFamily(), ArithFamily(), CompareFamily(), SpatialFamily(), PopeFamily(), TextFamily(),
              ShortcutFamily())
}


def get_family(name: str) -> Family:
    """The registered family called ``name``."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown synthetic family {name!r}; known families: {', '.join(FAMILIES)}") from None


def _family_key(name: str) -> int:
    """A stable integer for a family name (Python's ``hash`` is salted per process)."""
    return zlib.crc32(name.encode("utf-8"))


def _rng(entropy: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=tuple(int(k) for k in key)))


def image_digest(image) -> bytes:
    return hashlib.sha256(f"{image.mode}:{image.size}:".encode() + image.tobytes()).digest()


@lru_cache(maxsize=None)
def _test_pool_digests(difficulty: int, image_size: int) -> frozenset[bytes]:
    """Image digests of the first ``TEST_POOL_SIZE`` test items of every image family at this
    difficulty and size (families can draw the same small scene). Computed once per process.
    The ``text`` family is left out: its images are full-entropy noise."""
    names = [name for name, fam in FAMILIES.items() if fam.vision_dependent]
    task = SyntheticTask(names, difficulty, image_size, decontaminate=False)
    return frozenset(image_digest(s.images[0]) for s in task.test_set(TEST_POOL_SIZE))


def sample_digest(sample: Sample) -> str:
    """SHA-256 of everything a sample shows a model or a verifier: text, answer, meta and pixels."""
    h = hashlib.sha256()
    head = {
        "id": sample.id,
        "problem": sample.problem,
        "answer": sample.answer,
        "answer_type": sample.answer_type,
        "family": sample.family,
        "vision_dependent": sample.vision_dependent,
        "meta": sample.meta,
    }
    h.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for im in sample.images:
        h.update(f"{im.mode}:{im.size[0]}x{im.size[1]}:".encode())
        h.update(im.tobytes())
    return h.hexdigest()


def samples_digest(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(sample_digest(s).encode())
    return h.hexdigest()


class SyntheticTask:
    """An unlimited training stream and a fixed, versioned test set over some families.

    Args:
        families: family names (``"all"`` for every family), sampled round-robin by index.
        difficulty: 1..3 (objects, distractors, value ranges and question forms grow with it).
        image_size: side of the square RGB images; a multiple of 28, at least 56.
        seed: seed of the training stream (the test set ignores it).
        weights: optional ``{family: weight}``; families are then drawn at random with these
            weights (still deterministic per index) instead of round-robin.
        decontaminate: redraw (deterministically) any training sample whose image is
            byte-identical to a test image: one of the first ``TEST_POOL_SIZE`` test items of any
            family at the same difficulty and image size. This is rare (a small scene can repeat
            by chance, about 1 in 1000 at difficulty 1) and makes train/test image-disjointness a
            guarantee; the first training sample per (difficulty, size) in a process costs ~1.5 s.
        label_noise: fraction of *training* samples whose answer is replaced by a wrong one, with
            a rationale that states it (``Family.mislabel``: a confident misperception). Decided
            per index from a random stream of its own, so the clean samples are exactly those of
            the noiseless stream. Supervised on such data a model learns the right answer's
            features but spreads its probability over wrong answers (a miscalibrated warm start,
            ``recipes/warmstart.yaml``); in RL it is reward noise. The test set is never noisy.
    """

    def __init__(
        self,
        families: Sequence[str] | str = ("count",),
        difficulty: int = 1,
        image_size: int = 56,
        seed: int = 0,
        weights: Mapping[str, float] | None = None,
        decontaminate: bool = True,
        label_noise: float = 0.0,
    ):
        if isinstance(families, str):
            families = list(FAMILIES) if families == "all" else [families]
        families = list(families)
        if not families:
            raise ValueError("SyntheticTask needs at least one family")
        for name in families:
            get_family(name)
        if len(set(families)) != len(families):
            raise ValueError(f"duplicate families in {families}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        self.families = families
        self.difficulty = int(difficulty)
        self.image_size = check_image_size(image_size)
        self.seed = int(seed)
        self.decontaminate = bool(decontaminate)
        if not (isinstance(label_noise, (int, float)) and 0.0 <= label_noise < 1.0):
            raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
        self.label_noise = float(label_noise)
        self._probs = None
        if weights is not None:
            unknown = set(weights) - set(families)
            if unknown:
                raise ValueError(f"weights for families not in the task: {sorted(unknown)}")
            w = np.array([float(weights.get(f, 0.0)) for f in families])
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {dict(weights)}")
            self._probs = w / w.sum()

    def __repr__(self) -> str:
        noise = f", label_noise={self.label_noise}" if self.label_noise else ""
        return (
            f"SyntheticTask(families={self.families}, difficulty={self.difficulty}, "
            f"image_size={self.image_size}, seed={self.seed}{noise})"
        )

    # ------------------------------------------------------------------ training
    def train_sample(self, index: int, seed: int | None = None) -> Sample:
        """Training sample number ``index`` of the stream with ``seed`` (default: the task's)."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        seed = self.seed if seed is None else int(seed)
        rng = _rng(seed, _TRAIN_KEY, index)
        if self._probs is None:
            name = self.families[index % len(self.families)]
        else:
            name = self.families[int(rng.choice(len(self.families), p=self._probs))]
        fam = FAMILIES[name]
        s = fam.sample(rng, self.difficulty, self.image_size)
        if self.decontaminate:
            pool = _test_pool_digests(self.difficulty, self.image_size)
            for _ in range(_MAX_REDRAWS):
                if image_digest(s.images[0]) not in pool:
                    break
                s = fam.sample(rng, self.difficulty, self.image_size)
            else:  # pragma: no cover
                raise RuntimeError(f"{name}: {_MAX_REDRAWS} training draws in a row were test images")
        if self.label_noise:
            noise = _rng(seed, _NOISE_KEY, index)
            if noise.random() < self.label_noise:
                s = fam.mislabel(s, noise)
        s.id = f"{name}-v{SUITE_VERSION}-train-s{seed}-d{self.difficulty}-{self.image_size}px-{index}"
        s.meta.update(split="train", index=int(index))
        return s

    def train_stream(self, seed: int | None = None, start: int = 0) -> Iterator[Sample]:
        """Unlimited: ``train_sample(start)``, ``train_sample(start + 1)``, ... with ``seed``."""
        index = start
        while True:
            yield self.train_sample(index, seed)
            index += 1

    def __iter__(self) -> Iterator[Sample]:
        return self.train_stream()

    # ------------------------------------------------------------------ test
    def test_sample(self, family: str, index: int) -> Sample:
        """Item ``index`` of ``family``'s held-out test set (independent of the task's seed)."""
        fam = get_family(family)
        rng = _rng(TEST_SEED, _TEST_KEY, SUITE_VERSION, _family_key(family), self.difficulty, index)
        s = fam.sample(rng, self.difficulty, self.image_size, split="test")
        s.id = f"{family}-v{SUITE_VERSION}-test-d{self.difficulty}-{self.image_size}px-{index}"
        s.meta.update(split="test", index=int(index))
        return s

    def test_set(self, n_per_family: int = 100) -> list[Sample]:
        """The fixed held-out set: ``n_per_family`` items of each family, family by family.

        Item ``i`` of a family is the same whatever ``n_per_family`` and the other families are.
        """
        return self.held_out_set(n_per_family, "test")

    def tune_set(self, n_per_family: int = 100) -> list[Sample]:
        """The tuning split: held-out items taken from the far end of the pool (``TEST_POOL_SIZE - 1``,
        ``- 2``, ...), so that hyper-parameters are chosen on items the test set (``0``, ``1``, ...)
        does not contain while both together take at most ``TEST_POOL_SIZE`` items per family.
        Never shown in training either."""
        return self.held_out_set(n_per_family, "tune")

    def held_out_set(self, n_per_family: int, split: str = "test") -> list[Sample]:
        """``test_set`` or ``tune_set`` by name."""
        if split not in ("test", "tune"):
            raise ValueError(f"split must be test or tune, got {split!r}")
        if not 0 <= n_per_family <= TEST_POOL_SIZE:
            raise ValueError(
                f"n_per_family must be in 0..{TEST_POOL_SIZE} (the items kept out of training), got {n_per_family}"
            )
        if split == "test":
            return [self.test_sample(f, i) for f in self.families for i in range(n_per_family)]
        out = []
        for f in self.families:
            for i in range(n_per_family):
                s = self.test_sample(f, TEST_POOL_SIZE - 1 - i)
                s.id = s.id.replace("-test-", "-tune-")
                s.meta["split"] = "tune"
                out.append(s)
        return out

    def build_suite_manifest(self, n_per_family: int = 100) -> dict:
        """Identity of the test set: versions, settings and SHA-256 over its samples (pixels included)."""
        per_family = {f: samples_digest([self.test_sample(f, i) for i in range(n_per_family)]) for f in self.families}
        total = hashlib.sha256("".join(per_family[f] for f in self.families).encode()).hexdigest()
        return {
            "suite_version": SUITE_VERSION,
            "test_seed": TEST_SEED,
            "families": list(self.families),
            "difficulty": self.difficulty,
            "image_size": self.image_size,
            "n_per_family": n_per_family,
            "n_samples": n_per_family * len(self.families),
            "per_family": per_family,
            "sha256": total,
        }


def build_suite_manifest(
    families: Sequence[str] | str = "all",
    difficulties: Sequence[int] = DIFFICULTIES,
    image_size: int = 56,
    n_per_family: int = 100,
) -> dict:
    """Manifest of the whole suite: one ``SyntheticTask.build_suite_manifest`` per difficulty."""
    per = {
        d: SyntheticTask(families, difficulty=d, image_size=image_size).build_suite_manifest(n_per_family)
        for d in difficulties
    }
    total = hashlib.sha256("".join(per[d]["sha256"] for d in difficulties).encode()).hexdigest()
    return {
        "suite_version": SUITE_VERSION,
        "image_size": image_size,
        "n_per_family": n_per_family,
        "difficulties": {str(d): m for d, m in per.items()},
        "sha256": total,
    }
