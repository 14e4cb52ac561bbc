"""Step schedules (spec section 10): pure functions of the rollout step, so exact on resume.

The training loop passes the rollout step counted from 1, as the released trainers do (they
increment ``global_step`` before using it: NoisyRollout and DUPL ``ray_trainer.py``); the functions
themselves take any step, so ``eta(0) = 1`` etc. (spec section 11) still hold.

``make_schedule(kind, total_steps, **params)`` returns a :class:`Schedule`, a callable ``step -> float``.
Kinds: ``constant(value)``, ``linear(start, end)``, ``sigmoid(lam=30, s_mid=40, scale=1)``
(NoisyRollout's eta), ``dupl_linear`` (DUPL's ``p_noi(s) = max(0, 1 - s / S)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "Schedule",
    "ConstantSchedule",
    "LinearSchedule",
    "SigmoidSchedule",
    "SCHEDULES",
    "make_schedule",
]


@dataclass(frozen=True)
class Schedule:
    """Base class: a frozen, stateless function of the rollout step."""

    total_steps: int

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _progress(self, step: int) -> float:
        # Fraction of the run done, clamped to [0, 1]; total_steps <= 0 means "already done".
        if self.total_steps <= 0:
            return 1.0
        return min(max(step / self.total_steps, 0.0), 1.0)


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    value: float = 1.0

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class LinearSchedule(Schedule):
    """``start + (end - start) * clamp(s / S, 0, 1)``; constant ``end`` after ``S`` steps."""

    start: float = 1.0
    end: float = 0.0

    def __call__(self, step: int) -> float:
        return float(self.start + (self.end - self.start) * self._progress(step))


@dataclass(frozen=True)
class SigmoidSchedule(Schedule):
    """NoisyRollout's noise annealing ``eta(s) = scale * (1 - sigmoid(lam * (s - s_mid) / S))``.

    Source: arXiv 2504.13055 (NUS-TRAIL/NoisyRollout), ``lam = 30``, ``s_mid = 40`` (an *absolute*
    step, not a fraction), ``S = total_steps``. With S = 100: eta(0) ~ 1.0, eta(40) = 0.5,
    eta(50) = 0.0474, eta(60) = 0.0025. The noise step is then ``int(500 * eta(s))`` (caller's job).
    """

    lam: float = 30.0
    s_mid: float = 40.0
    scale: float = 1.0

    def __call__(self, step: int) -> float:
        S = max(self.total_steps, 1)
        x = self.lam * (step - self.s_mid) / S
        # 1 - sigmoid(x) = sigmoid(-x), computed stably for large |x|.
        if x >= 0:
            e = math.exp(-x)
            val = e / (1.0 + e)
        else:
            val = 1.0 / (1.0 + math.exp(x))
        return float(self.scale * val)


def _dupl_linear(total_steps: int, **params: float) -> Schedule:
    """DUPL branch probability ``p_noi(s) = max(0, 1 - s / S)`` (arXiv 2510.01444) = linear(1, 0)."""
    if params:
        raise TypeError(f"dupl_linear takes no parameters, got {sorted(params)}")
    return LinearSchedule(total_steps=total_steps, start=1.0, end=0.0)


def _sigmoid(total_steps: int, **params: float) -> Schedule:
    if "lambda" in params:  # allow the paper's name in configs
        params["lam"] = params.pop("lambda")
    return SigmoidSchedule(total_steps=total_steps, **params)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": lambda total_steps, **p: ConstantSchedule(total_steps=total_steps, **p),
    "linear": lambda total_steps, **p: LinearSchedule(total_steps=total_steps, **p),
    "sigmoid": _sigmoid,
    "dupl_linear": _dupl_linear,
}


def make_schedule(kind: str, total_steps: int, **params: float) -> Schedule:
    """Build a schedule ``step -> float``; unknown kinds raise ``ValueError``, unknown params ``TypeError``.

    Examples: ``make_schedule("constant", S, value=0.02)``, ``make_schedule("linear", S, start=1, end=0)``,
    ``make_schedule("sigmoid", S)`` (``lam``/``lambda``, ``s_mid``, ``scale`` overridable),
    ``make_schedule("dupl_linear", S)``.
    """
    try:
        factory = SCHEDULES[kind]
    except KeyError:
        raise ValueError(f"unknown schedule kind {kind!r}; known: {sorted(SCHEDULES)}") from None
    return factory(int(total_steps), **params)
