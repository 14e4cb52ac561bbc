"""The ``Family`` interface: one kind of synthetic question, sampled from a numpy Generator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from perceptrl.data.families.scene import check_image_size
from perceptrl.data.types import ANSWER_TYPES, Sample

DIFFICULTIES = (1, 2, 3)


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

    ``sample(rng, difficulty, image_size)`` returns a ``Sample`` with every field but ``id`` set
    (``SyntheticTask`` assigns ids). Everything random comes from ``rng``: same generator state,
    same sample, byte for byte.
    """

    name: ClassVar[str]
    answer_types: ClassVar[tuple[str, ...]]
    vision_dependent: ClassVar[bool] = True
    difficulties: ClassVar[tuple[int, ...]] = DIFFICULTIES
    description: ClassVar[str] = ""

    def sample(self, rng: np.random.Generator, difficulty: int = 1, image_size: int = 56) -> Sample:
        if difficulty not in self.difficulties:
            raise ValueError(f"{self.name}: difficulty must be one of {self.difficulties}, got {difficulty!r}")
        image_size = check_image_size(image_size)
        d = self._draft(rng, int(difficulty), image_size)
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

    def __repr__(self) -> str:
        return f"<Family {self.name}: {self.description}>"


def choice_text(options: list[str]) -> str:
    """``(A) red (B) blue (C) green``."""
    return " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))


def pick(rng: np.random.Generator, seq):
    """A uniformly random element of a sequence."""
    return seq[int(rng.integers(len(seq)))]
