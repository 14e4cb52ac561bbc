"""Math-verify equivalence check, run in a worker process (``python _math_worker.py``) or in-process.

The worker reads one JSON request per line on stdin, ``[pred, gold, soft_timeout_seconds]``, and
writes one JSON reply per line on stdout: ``1`` (equivalent), ``0`` (not), ``"timeout"`` or
``"error"``. It writes ``"ready"`` once math-verify is imported and warmed up. It exits when stdin
closes. The parent (``verifiers.MathVerifyPool``) kills it if a reply is late (sympy can get stuck in
C code, e.g. evaluating ``123456789^{123456789}``, where no Python-level timeout can interrupt it).

This module must not import ``perceptrl`` (the worker stays light and starts fast).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading

READY = "ready"
# Address-space cap of the worker process, so that a runaway computation fails with MemoryError
# instead of eating the machine's memory.
WORKER_MEMORY_BYTES = 4 << 30


class SoftTimeout(BaseException):
    """Raised by the interval timer. A BaseException so that math-verify's ``except Exception``
    handlers do not swallow it and carry on with the next candidate."""


def _alarm(signum, frame):  # pragma: no cover - timing dependent
    raise SoftTimeout()


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"${gold}$", parsing_timeout=None)


def _compare(pred: str, gold: str) -> bool:
    from math_verify import parse
    from math_verify import verify as mv_verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return False
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def check(pred: str, gold: str, soft_timeout: float | None) -> bool | str:
    """Math-verify ``pred`` against ``gold`` (both bare LaTeX, wrapped in ``$...$`` here).

    Returns True/False, ``"timeout"`` if the soft timeout (an interval timer, main thread only)
    fired, or ``"error"``. Off the main thread there is no soft timeout: the caller bounds time.
    """
    use_alarm = bool(soft_timeout) and soft_timeout > 0 and _can_alarm()
    old = None
    try:
        if use_alarm:
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, soft_timeout)
        try:
            return _compare(pred, gold)
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
    except SoftTimeout:
        return "timeout"
    except Exception:  # noqa: BLE001 - any failure of the checker means "not verified"
        return "error"


_warm = False
# One comparison per family of sympy code paths that are imported or cached on first use (the first
# use of each costs 50-200 ms, which would otherwise eat into the per-call timeout).
_WARM_UP = (
    ("1/2", "\\frac{1}{2}"),
    ("x=3", "3"),
    ("(x+1)^2", "x^2+2x+1"),
    ("\\sin^2 x+\\cos^2 x", "1"),
    ("x\\in(-\\infty,2]", "(-\\infty,2]"),
    ("\\int_0^1 x^2 dx", "\\frac{1}{3}"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    ("\\log_2 8", "3"),
    ("e^{i\\pi}", "-1"),
    ("\\frac{1}{1+\\sqrt{2}}", "\\sqrt{2}-1"),
    ("x^2-5x+6=0", "(x-2)(x-3)=0"),
    ("10!", "3628800"),
    ("\\binom{5}{2}", "10"),
    ("\\sum_{k=1}^{3} k", "6"),
    ("3\\pi/4", "135^\\circ"),
    ("x<3", "(-\\infty,3)"),
    ("(1,2)", "(1,2)"),
    ("\\tan(\\pi/3)", "\\sqrt3"),
    ("50\\%", "0.5"),
    ("A", "B"),
)


def warm_up() -> None:
    """Import math-verify and sympy and parse once, without a timer (the first call takes ~0.5 s)."""
    global _warm
    if not _warm:
        quiet_math_verify()
        for pred, gold in _WARM_UP:
            check(pred, gold, None)
        _warm = True


def quiet_math_verify() -> None:
    """Silence math-verify's one-off "timeout is disabled" warning (we bound time ourselves)."""
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _limit_memory() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, WORKER_MEMORY_BYTES)
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except Exception:  # noqa: BLE001 - not available on every platform
        pass


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies goes to the protocol stream
    _limit_memory()
    warm_up()
    out.write(json.dumps(READY) + "\n")
    out.flush()
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        try:
            pred, gold, soft_timeout = json.loads(line)
            reply = check(str(pred), str(gold), soft_timeout)
        except Exception:  # noqa: BLE001
            reply = "error"
        if isinstance(reply, bool):
            reply = int(reply)
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    # Run as a script: do not let this package directory shadow top-level modules.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    main()
