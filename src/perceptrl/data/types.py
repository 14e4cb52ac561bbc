"""The one record type every task family and dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANSWER_TYPES = ("integer", "number", "choice", "yesno", "word", "math")


@dataclass
class Sample:
    """One prompt: images, question text and the gold answer.

    ``problem`` is the bare question (no reasoning instructions: the prompt template adds them).
    ``answer`` is the gold final answer as a string, checked by the verifier for ``answer_type``.
    """

    id: str
    images: list[Any]  # PIL.Image.Image, RGB
    problem: str
    answer: str
    answer_type: str = "math"
    family: str = "external"
    vision_dependent: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
