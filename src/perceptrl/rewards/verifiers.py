"""Verifiers: is an extracted final answer right? ``verify(pred, gold, answer_type) -> bool``.

Answer types (``perceptrl.data.types.ANSWER_TYPES``):

- ``integer``: exact integer value; ``"3"``, ``"3.0"``, ``"+3"``, ``"1,000"``, ``"3."`` all read 3.
- ``number``: decimals, fractions (``3/4``, ``\\frac{3}{4}``), scientific notation, a trailing ``%``
  or degree sign is dropped; equal if exactly equal or within :data:`NUMBER_REL_TOL` (relative) /
  :data:`NUMBER_ABS_TOL` (absolute).
- ``choice``: one option letter; ``B``, ``(B)``, ``B.``, ``b)``, ``[B]``, ``\\text{B}``,
  ``Option B``, ``Answer: (b)`` all read B. Anything else (``B. 42``, ``A or B``) is wrong.
- ``yesno``: ``yes`` / ``no``, case, surrounding punctuation and ``\\text{}`` ignored (a gold
  ``true`` / ``false`` reads yes / no).
- ``word``: case-, whitespace- and surrounding-punctuation-insensitive string equality (NFKC).
- ``math``: equal after removing spacing commands, else (both plain numbers) the ``number`` rule,
  else math-verify with both sides wrapped in ``$...$``.

If the gold of a scalar type does not parse (data error), the answer is compared as a ``word``.

Rules shared by all types (reward-hacking guards): ``None`` or an empty answer is wrong; an answer
that still contains several ``\\boxed{}`` with different contents (or an unclosed one) is wrong;
over-long answers are wrong (:data:`MAX_ANSWER_CHARS`). No exception escapes ``verify`` for any
``pred`` string; an unknown ``answer_type`` raises ``ValueError`` (a programming error).

Time. Everything but math-verify is a few regexes on a capped string (microseconds). Math-verify
(sympy) can take seconds on small adversarial inputs (``{{{{{{{{{{{{1}}}}}}}}}}}}``: 1.2 s) or
effectively never return (``9^{9^{9}}``), and its own ``signal.alarm`` timeouts only work in the
main thread. So it runs in worker processes (:class:`MathVerifyPool`): an interval timer in the
worker stops the work after ``timeout`` (0.25 s), and the parent kills a worker that has not
replied after ``hard_timeout`` (0.45 s) and switches to a spare worker that is already warm. That
works from any thread. Cheap pre-screens (length, nesting depth, power towers, huge exponents and
factorials) reject known-pathological inputs before they reach sympy. Results are cached
(:data:`MATH_CACHE_SIZE` entries), so a repeated pair is scored identically and instantly.
A timeout counts as wrong; under heavy CPU contention a slow but legitimate comparison can time out,
so the timeouts are configurable (:func:`configure_math`).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
import unicodedata
from fractions import Fraction

from perceptrl.data.types import ANSWER_TYPES

from . import _math_worker
from .templates import extract_boxed

__all__ = [
    "verify",
    "ANSWER_TYPES",
    "MathVerifyPool",
    "configure_math",
    "math_pool",
    "parse_number",
    "parse_choice",
    "normalize_word",
    "MAX_ANSWER_CHARS",
    "MAX_MATH_CHARS",
    "NUMBER_REL_TOL",
    "NUMBER_ABS_TOL",
]

logger = logging.getLogger(__name__)

#: Longest accepted answer (after stripping); longer ones are wrong without further work.
MAX_ANSWER_CHARS = 1000
#: Longest predicted answer handed to math-verify (or twice the gold's length if that is longer).
MAX_MATH_CHARS = 200
#: Deepest ``{``/``(``/``[`` nesting handed to math-verify (its time grows fast with depth).
MAX_MATH_DEPTH = 6
#: Largest integer allowed in an exponent, factorial or binomial handed to math-verify.
MAX_MATH_OPERAND = 10_000
NUMBER_REL_TOL = 1e-6
NUMBER_ABS_TOL = 1e-9
MATH_CACHE_SIZE = 65536


# --------------------------------------------------------------------------------------------------
# Normalisation helpers
# --------------------------------------------------------------------------------------------------

_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_TEXT_WRAP = re.compile(
    r"\\(?:text|textbf|textit|textrm|texttt|mathrm|mathbf|mathit|mathsf|mbox|fbox|operatorname)"
    r"\s*\{(.*)\}",
    re.S,
)


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _strip_wrappers(s: str) -> str:
    """Strip whitespace, outer math delimiters and whole-string ``\\text{...}``-like wrappers."""
    s = s.strip()
    for _ in range(8):
        before = s
        for left, right in _DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                break
        m = _TEXT_WRAP.fullmatch(s)
        if m and _balanced(m.group(1)):
            s = m.group(1).strip()
        if s == before:
            break
    return s


_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\uff0d": "-"})
_NUMBER_NOISE = re.compile(r"\\[!,;: ]|\{,\}|\\left|\\right|[\u2009\u202f\u00a0]")
_NUMBER_SUFFIX = re.compile(r"(?:\\%|%|\^\s*\{?\\circ\}?|\u00b0|\\degree)\s*\Z")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DEC = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DECIMAL = re.compile(rf"[+-]?{_DEC}(?:[eE][+-]?\d{{1,3}})?")
_SLASH = re.compile(rf"([+-]?{_DEC})\s*/\s*([+-]?{_DEC})")
_LATEX_FRAC = re.compile(
    r"([+-]?)\s*\\[dt]?frac\s*(?:\{\s*([^{}]*?)\s*\}|(\d))\s*(?:\{\s*([^{}]*?)\s*\}|(\d))"
)
_SCI = re.compile(
    rf"([+-]?{_DEC})\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*"
    r"(?:\{\s*([+-]?\d{1,3})\s*\}|([+-]?\d))"
)
_NUMBER_MAX_CHARS = 120
_SIGN_SPACE = re.compile(r"\A([+-])\s+")


def _plain_number(s: str) -> Fraction | None:
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    m = _SLASH.fullmatch(s)
    if m:
        den = Fraction(m.group(2))
        return Fraction(m.group(1)) / den if den else None
    return None


def parse_number(text: str) -> Fraction | None:
    """The exact value of a numeric answer, or None if ``text`` is not a plain number.

    Accepts integers, decimals, ``1,000`` thousands separators, scientific notation (``1.5e3``,
    ``1.5 \\times 10^{3}``), ``a/b`` and ``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``), an optional
    sign, a trailing full stop, and drops a trailing ``%`` or degree sign.
    """
    s = _strip_wrappers(text)
    if len(s) > _NUMBER_MAX_CHARS:
        return None
    s = _NUMBER_NOISE.sub("", s.translate(_UNICODE_MINUS)).strip()
    s = _NUMBER_SUFFIX.sub("", s).strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    s = _SIGN_SPACE.sub(r"\1", s)  # "- 3" -> "-3"; other inner spaces stay ("3 4" is no number)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    try:
        value = _plain_number(s)
        if value is not None:
            return value
        m = _LATEX_FRAC.fullmatch(s)
        if m:
            num = _plain_number(m.group(2) if m.group(2) is not None else m.group(3))
            den = _plain_number(m.group(4) if m.group(4) is not None else m.group(5))
            if num is None or den is None or den == 0:
                return None
            value = num / den
            return -value if m.group(1) == "-" else value
        m = _SCI.fullmatch(s)
        if m:
            exp = int(m.group(2) if m.group(2) is not None else m.group(3))
            return Fraction(m.group(1)) * Fraction(10) ** exp
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=NUMBER_REL_TOL, abs_tol=NUMBER_ABS_TOL)
    except OverflowError:
        return False


_CHOICE = re.compile(
    r"(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\uff1a]?\s*)?"
    r"[(\[{]?\s*([A-Za-z])\s*[)\]}]?\s*[.:)]?",
    re.I,
)


def parse_choice(text: str) -> str | None:
    """The option letter (upper case) of a multiple-choice answer, or None."""
    s = _strip_wrappers(text)
    if len(s) > 40:
        return None
    m = _CHOICE.fullmatch(s.strip())
    return m.group(1).upper() if m else None


_WORD_SPACE = re.compile(r"\s+")
_WORD_EDGE = "\"'`.,;:!?()[]{}\u201c\u201d\u2018\u2019\u3002\uff0c"


def normalize_word(text: str) -> str:
    """NFKC, ``\\text{}`` and ``$`` unwrapped, case-folded, whitespace collapsed, edge punctuation
    stripped."""
    s = unicodedata.normalize("NFKC", _strip_wrappers(text))
    s = _WORD_SPACE.sub(" ", s.casefold()).strip()
    return s.strip(_WORD_EDGE + " ")


# --------------------------------------------------------------------------------------------------
# Scalar verifiers
# --------------------------------------------------------------------------------------------------


def _verify_integer(pred: str, gold: str) -> bool:
    g = parse_number(gold)
    if g is None:
        return normalize_word(pred) == normalize_word(gold)
    p = parse_number(pred)
    return p is not None and p == g


def _verify_number(pred: str, gold: str) -> bool:
    g = parse_number(gold)
    if g is None:
        return normalize_word(pred) == normalize_word(gold)
    p = parse_number(pred)
    return p is not None and _numbers_equal(p, g)


def _verify_choice(pred: str, gold: str) -> bool:
    g = parse_choice(gold)
    if g is None:
        return normalize_word(pred) == normalize_word(gold)
    return parse_choice(pred) == g


_YESNO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def _verify_yesno(pred: str, gold: str) -> bool:
    g = _YESNO.get(normalize_word(gold))
    if g is None:
        return normalize_word(pred) == normalize_word(gold)
    return normalize_word(pred) in ("yes", "no") and normalize_word(pred) == g


def _verify_word(pred: str, gold: str) -> bool:
    p = normalize_word(pred)
    return bool(p) and p == normalize_word(gold)


# --------------------------------------------------------------------------------------------------
# Math: pre-screens, worker pool, cache
# --------------------------------------------------------------------------------------------------

_MATH_NOISE = re.compile(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[!,;: ]|\s+")


def _canonical_latex(s: str) -> str:
    s = _MATH_NOISE.sub("", s)
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _max_depth(s: str) -> int:
    depth = best = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            if depth > best:
                best = depth
        elif ch in "})]" and depth:
            depth -= 1
    return best


_INT = re.compile(r"\d+")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_BIG_OPERATOR = re.compile(
    r"\\(?:binom|dbinom|tbinom|choose|sum|prod|Gamma|Pi|operatorname)(?![a-zA-Z])"
)
_CLOSER = {"{": "}", "(": ")", "[": "]"}


def _exponents(s: str) -> list[str]:
    """The argument of every ``^`` in ``s``: a braced or parenthesised group, or one token."""
    match: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(s):
        if ch in _CLOSER:
            stack.append(i)
        elif ch in "})]" and stack and _CLOSER[s[stack[-1]]] == ch:
            match[stack.pop()] = i
    out = []
    for i, ch in enumerate(s):
        if ch != "^":
            continue
        j = i + 1
        while j < len(s) and s[j].isspace():
            j += 1
        if j < len(s) and s[j] in _CLOSER:
            out.append(s[j + 1 : match.get(j, len(s))])
        else:
            m = _INT.match(s, j)
            out.append(m.group() if m else s[j : j + 1])
    return out


def _big_int_in(text: str) -> bool:
    return any(len(n) > 5 or int(n) > MAX_MATH_OPERAND for n in _INT.findall(text))


def _math_too_costly(pred: str, gold: str) -> bool:
    """Known-pathological inputs for sympy: reject them before they reach math-verify.

    Too long, too deeply nested, a power tower (unless the gold has one), an exponent, factorial,
    binomial, sum or product with an integer above :data:`MAX_MATH_OPERAND`.
    """
    if len(pred) > max(MAX_MATH_CHARS, 2 * len(gold)):
        return True
    if _max_depth(pred) > max(MAX_MATH_DEPTH, _max_depth(gold)):
        return True
    if "^" in pred:
        if pred.count("^") > max(20, 2 * gold.count("^")):
            return True
        gold_tower = any("^" in e for e in _exponents(gold)) if "^" in gold else False
        for exponent in _exponents(pred):
            if ("^" in exponent and not gold_tower) or _big_int_in(exponent):
                return True
    if "!" in pred and _big_int_in(" ".join(_FACTORIAL.findall(pred))):
        return True
    return bool(_BIG_OPERATOR.search(pred)) and _big_int_in(pred)


_WORKER_PATH = os.path.abspath(_math_worker.__file__)


class _Worker:
    """One math-verify worker process and the thread that reads its replies."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONSAFEPATH", "1")
        env["PYTHONUNBUFFERED"] = "1"
        # A sympy worker needs one thread; keep BLAS/OpenMP from spawning more.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", _WORKER_PATH],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="ascii",
            errors="replace",
            bufsize=1,
            env=env,
        )
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.ready = threading.Event()
        self.alive = True
        self._reader = threading.Thread(target=self._read, name="math-verify-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                line = line.strip()
                if not self.ready.is_set():
                    if line == json.dumps(_math_worker.READY):
                        self.ready.set()
                    continue
                self.replies.put(line)
        except Exception:  # noqa: BLE001 - pipe closed under us
            pass
        self.alive = False
        self.ready.set()
        self.replies.put(None)

    @property
    def usable(self) -> bool:
        return self.alive and self.proc.poll() is None

    def request(self, pred: str, gold: str, soft: float, hard: float) -> object:
        """The worker's reply, or None if it did not reply within ``hard`` seconds / died."""
        try:
            self.proc.stdin.write(json.dumps([pred, gold, soft]) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            line = self.replies.get(timeout=hard)
        except (OSError, ValueError, queue.Empty):
            return None
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def kill(self) -> None:
        self.alive = False
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001
                pass


class _Unavailable(RuntimeError):
    pass


class MathVerifyPool:
    """Math-verify in worker processes, with a bounded time per call, usable from any thread.

    ``workers`` requests run at once (each in its own process); ``spares`` extra processes are kept
    warm so that killing a stuck worker costs no start-up time (about 0.7 s: python, sympy and the
    LaTeX grammar). ``timeout`` is the worker's own interval timer, which stops Python-level work
    (and CPython's big-integer arithmetic, which checks for signals); 0 disables it.
    ``hard_timeout`` is the time after which the parent gives up and kills the worker.
    ``boot_timeout`` bounds the wait for a worker to start; if none can start, :meth:`check` raises
    ``_Unavailable`` and :func:`verify` falls back to in-process math-verify.
    """

    def __init__(
        self,
        workers: int = 1,
        timeout: float = 0.25,
        hard_timeout: float = 0.45,
        spares: int = 1,
        boot_timeout: float = 60.0,
    ) -> None:
        if workers < 1 or spares < 0 or timeout < 0 or hard_timeout <= 0 or hard_timeout < timeout:
            raise ValueError(
                "need workers >= 1, spares >= 0, 0 <= timeout <= hard_timeout and hard_timeout > 0"
            )
        self.workers, self.spares = workers, spares
        self.timeout, self.hard_timeout, self.boot_timeout = timeout, hard_timeout, boot_timeout
        self.kills = 0  # number of workers killed for being late (a diagnostic)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy = 0

    def _spawn_locked(self) -> None:
        while len(self._idle) + self._busy < self.workers + self.spares:
            self._idle.append(_Worker())

    def start(self, wait: bool = False) -> "MathVerifyPool":
        """Start the worker processes now (they warm up in the background unless ``wait``)."""
        self._check_fork()
        with self._cond:
            self._idle = [w for w in self._idle if w.usable or not w.ready.is_set()]
            self._spawn_locked()
            idle = list(self._idle)
        if wait:
            for w in idle:
                w.ready.wait(self.boot_timeout)
        return self

    def grow(self, workers: int) -> "MathVerifyPool":
        """Allow at least ``workers`` concurrent requests (warm workers are kept)."""
        self._check_fork()
        with self._cond:
            if workers > self.workers:
                self.workers = workers
                self._cond.notify_all()
        return self

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked: the workers and threads belong to the parent
            self._reset()

    def _acquire(self) -> _Worker:
        with self._cond:
            while self._busy >= self.workers:
                self._cond.wait()
            self._busy += 1
            self._idle = [w for w in self._idle if w.usable or not w.ready.is_set()]
            ready = [w for w in self._idle if w.ready.is_set()]
            worker = (ready or self._idle or [None])[0]
            if worker is None:
                worker = _Worker()
            else:
                self._idle.remove(worker)
            self._spawn_locked()
            return worker

    def _release(self, worker: _Worker, ok: bool) -> None:
        if not ok:
            worker.kill()
        with self._cond:
            self._busy -= 1
            if ok:
                self._idle.append(worker)
            else:
                self._spawn_locked()
            self._cond.notify()

    def check(self, pred: str, gold: str) -> bool:
        """Whether math-verify finds ``pred`` equivalent to ``gold`` (False on timeout or error)."""
        self._check_fork()
        worker = self._acquire()
        ok = False
        try:
            if not worker.ready.wait(self.boot_timeout) or not worker.usable:
                raise _Unavailable("the math-verify worker process did not start")
            reply = worker.request(pred, gold, self.timeout, self.hard_timeout)
            if reply is None:
                self.kills += 1
                logger.debug("math-verify worker killed after %.2fs", self.hard_timeout)
                return False
            ok = True
            if reply == "timeout":
                logger.debug("math-verify timed out on %r", pred[:80])
            return reply == 1
        finally:
            self._release(worker, ok)

    def close(self) -> None:
        """Stop all worker processes (they also exit by themselves when this process ends)."""
        if os.getpid() != self._pid:
            self._reset()
            return
        with self._cond:
            workers, self._idle = self._idle, []
        for w in workers:
            w.kill()


_config_lock = threading.Lock()
_pool: MathVerifyPool | None = None
_backend = "process"
_inline_warned = False


def math_pool() -> MathVerifyPool:
    """The shared :class:`MathVerifyPool` (created, not started, on first use)."""
    global _pool
    with _config_lock:
        if _pool is None:
            _pool = MathVerifyPool()
        return _pool


def configure_math(
    *,
    backend: str | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    hard_timeout: float | None = None,
    spares: int | None = None,
    start: bool = False,
) -> MathVerifyPool:
    """Configure how ``math`` answers are checked.

    ``backend="process"`` (default): the worker pool, bounded time from any thread.
    ``backend="inline"``: math-verify in this process; time is bounded by an interval timer on the
    main thread only (off the main thread it is unbounded apart from the pre-screens).
    ``start=True`` starts the workers now (in the background) instead of on the first math answer.
    Reconfiguring the pool closes the old one and clears the result cache.
    """
    global _pool, _backend
    if backend is not None:
        if backend not in ("process", "inline"):
            raise ValueError(f"unknown math backend {backend!r}; valid: process, inline")
        _backend = backend
    with _config_lock:
        if _pool is None or any(v is not None for v in (workers, timeout, hard_timeout, spares)):
            old = _pool or MathVerifyPool()
            new_timeout = timeout if timeout is not None else old.timeout
            new = MathVerifyPool(
                workers=workers if workers is not None else old.workers,
                timeout=new_timeout,
                hard_timeout=(
                    hard_timeout if hard_timeout is not None else max(old.hard_timeout, new_timeout)
                ),
                spares=spares if spares is not None else old.spares,
            )
            if _pool is not None:
                _pool.close()
            _pool = new
            _math_equal.cache_clear()
        pool = _pool
    if start and _backend == "process":
        pool.start()
    return pool


def _inline_check(pred: str, gold: str) -> bool:
    global _inline_warned
    _math_worker.warm_up()
    pool = math_pool()
    if not _inline_warned and threading.current_thread() is not threading.main_thread():
        _inline_warned = True
        logger.warning("in-process math-verify off the main thread has no time bound")
    return _math_worker.check(pred, gold, pool.timeout) is True


@functools.lru_cache(maxsize=MATH_CACHE_SIZE)
def _math_equal(pred: str, gold: str) -> bool:
    global _backend
    if _backend == "process":
        try:
            return math_pool().check(pred, gold)
        except _Unavailable:
            _backend = "inline"
            math_pool().close()
            logger.warning("math-verify worker process unavailable; checking in-process")
        except OSError as e:  # cannot start a process at all
            _backend = "inline"
            logger.warning("cannot start a math-verify worker (%s); checking in-process", e)
    return _inline_check(pred, gold)


def _verify_math(pred: str, gold: str) -> bool:
    p, g = _strip_wrappers(pred), _strip_wrappers(gold)
    if not p:
        return False
    if _canonical_latex(p) == _canonical_latex(g):
        return True
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return _numbers_equal(pn, gn)
    if _math_too_costly(p, g):
        return False
    return _math_equal(p, g)


_VERIFIERS = {
    "integer": _verify_integer,
    "number": _verify_number,
    "choice": _verify_choice,
    "yesno": _verify_yesno,
    "word": _verify_word,
    "math": _verify_math,
}
assert set(_VERIFIERS) == set(ANSWER_TYPES)


def verify(pred: str | None, gold: str, answer_type: str) -> bool:
    """Whether the extracted final answer ``pred`` matches ``gold`` under ``answer_type``.

    ``pred`` is what a template's ``extract`` returned (None when there was no usable answer).
    Never raises for any ``pred``; raises ``ValueError`` for an unknown ``answer_type``.
    """
    check = _VERIFIERS.get(answer_type)
    if check is None:
        raise ValueError(f"unknown answer_type {answer_type!r}; valid: {', '.join(ANSWER_TYPES)}")
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred = pred.strip()
    if not pred or len(pred) > MAX_ANSWER_CHARS or not gold.strip():
        return False
    try:
        if "\\boxed" in pred:  # a raw completion or a nested box: take its one boxed answer
            pred = extract_boxed(pred) or ""
            if not pred:
                return False
        return bool(check(pred, gold))
    except Exception:  # noqa: BLE001 - a verifier bug must not crash training; count it wrong
        logger.debug(
            "verifier error on %r vs %r (%s)", pred[:80], gold[:80], answer_type, exc_info=True
        )
        return False


def _close_pool() -> None:
    if _pool is not None:
        _pool.close()


atexit.register(_close_pool)
