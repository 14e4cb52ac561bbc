"""The ``Family`` interface: one kind of synthetic question, sampled from a numpy Generator."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from perceptrl.data.families.scene import check_image_size
from perceptrl.data.types import ANSWER_TYPES, Sample

DIFFICULTIES = (1, 2, 3)
SPLITS = ("train", "test")


@dataclass
class Draft:
    """What a family's generator returns; ``Family.sample`` turns it into a ``Sample``."""

    image: Any
    problem: str
    answer: str
    answer_type: str
    rationale: str
    meta: dict[str, Any] = field(default_factory=dict)


class Family(ABC):
    """One synthetic question family.

    ``sample(rng, difficulty, image_size, split)`` returns a ``Sample`` with every field but ``id``
    set (``SyntheticTask`` assigns ids). Everything random comes from ``rng``: same generator state,
    same sample, byte for byte. Most families draw training and test items from one distribution;
    a family with ``split_dependent = True`` receives ``split`` ("train" or "test") in ``_draft``
    (``shortcut``: a cue that predicts the answer in training and nothing in the test set).

    ``mislabel(sample, rng)`` turns a training sample into one with a wrong answer and a rationale
    that states the wrong answer consistently (a confident misperception or slip); it is how
    ``SyntheticTask(label_noise=...)`` makes a warm start that is right in distribution but badly
    calibrated. Families implement it with ``_wrong``.
    """

    name: ClassVar[str]
    answer_types: ClassVar[tuple[str, ...]]
    vision_dependent: ClassVar[bool] = True
    split_dependent: ClassVar[bool] = False
    difficulties: ClassVar[tuple[int, ...]] = DIFFICULTIES
    description: ClassVar[str] = ""

    def sample(self, rng: np.random.Generator, difficulty: int = 1, image_size: int = 56,
               split: str = "train") -> Sample:
        if difficulty not in self.difficulties:
            raise ValueError(f"{self.name}: difficulty must be one of {self.difficulties}, got {difficulty!r}")
        if split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {SPLITS}, got {split!r}")
        image_size = check_image_size(image_size)
        args = (rng, int(difficulty), image_size)
        d = self._draft(*args, split=split) if self.split_dependent else self._draft(*args)
        assert d.answer_type in self.answer_types and d.answer_type in ANSWER_TYPES, d.answer_type
        assert d.image.size == (image_size, image_size) and d.image.mode == "RGB"
        meta = {"difficulty": int(difficulty), "rationale": d.rationale, **d.meta}
        return Sample(
            id="",
            images=[d.image],
            problem=d.problem,
            answer=d.answer,
            answer_type=d.answer_type,
            family=self.name,
            vision_dependent=self.vision_dependent,
            meta=meta,
        )

    @abstractmethod
    def _draft(self, rng: np.random.Generator, difficulty: int, image_size: int) -> Draft: ...

    def mislabel(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """A copy of ``sample`` with a wrong answer and a rationale that states it; the true answer is
        kept in ``meta["true_answer"]`` and ``meta["label_noise"]`` is True."""
        answer, rationale = self._wrong(sample, rng)
        if answer == sample.answer:  # pragma: no cover - a family bug
            raise AssertionError(f"{self.name}: mislabel kept the answer {answer!r}")
        meta = {**sample.meta, "rationale": rationale, "label_noise": True, "true_answer": sample.answer}
        return dataclasses.replace(sample, answer=answer, meta=meta)

    def _wrong(self, sample: Sample, rng: np.random.Generator) -> tuple[str, str]:
        """``(wrong answer, rationale stating it)`` for a sample of this family."""
        raise NotImplementedError(f"{self.name}: no label noise for this family")

    def __repr__(self) -> str:
        return f"<Family {self.name}: {self.description}>"


def choice_text(options: list[str]) -> str:
    """``(A) red (B) blue (C) green``."""
    return " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))


def pick(rng: np.random.Generator, seq):
    """A uniformly random element of a sequence."""
    return seq[int(rng.integers(len(seq)))]
