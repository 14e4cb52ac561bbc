"""A light-weight per-step timer: named sections, wall and CPU seconds, logged as metrics.

The RL loop calls ``step_timer.reset()`` at the start of a step and merges
``step_timer.metrics()`` into the step's metrics; code inside the step wraps a part in
``with timed("name"):``. Sections add up when entered several times in a step (for example
one ``update/backward`` per micro-batch). Nested sections are each counted in full.

Keys produced: ``time/<name>`` (wall seconds) and ``cpu_time/<name>`` (seconds of CPU used
by this process, all its threads), plus ``cpu_time/step`` since ``reset``. CPU time is much
less disturbed than wall time by other work on a shared machine, so ``perceptrl bench``
reports both. The cost is two clock reads per section.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class StepTimer:
    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._cpu0 = time.process_time()

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self._cpu0 = time.process_time()

    @contextmanager
    def section(self, name: str):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.wall.items()}
        out.update({f"cpu_time/{k}": v for k, v in self.cpu.items()})
        out["cpu_time/step"] = time.process_time() - self._cpu0
        return out


step_timer = StepTimer()


def timed(name: str):
    """``with timed("generation"): ...`` adds the block's time to this step's section ``name``."""
    return step_timer.section(name)
