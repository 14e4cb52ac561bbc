"""Verifiers: hand cases per answer type, hacking guards, math-verify time bounds, fuzzing."""

from __future__ import annotations

import statistics
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceptrl.data.types import ANSWER_TYPES
from perceptrl.rewards import MathVerifyPool, math_pool, parse_choice, parse_number, verify

CALL_BOUND_S = 2.0  # generous per-call bound (shared machine); typical times are printed


@pytest.fixture(scope="module", autouse=True)
def warm_math_pool():
    math_pool().start(wait=True)
    yield


def timed_verify(pred, gold, answer_type):
    start = time.perf_counter()
    out = verify(pred, gold, answer_type)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------- per answer type

CASES = {
    "integer": [
        ("3", "3", True),
        ("3.0", "3", True),
        ("+3", "3", True),
        ("3.", "3", True),
        ("1,000", "1000", True),
        ("$42$", "42", True),
        ("\\text{42}", "42", True),
        ("-7", "-7", True),
        ("\u22127", "-7", True),  # unicode minus
        ("4", "3", False),
        ("3.5", "3", False),
        ("30", "3", False),
        ("3 apples", "3", False),
        ("1,2", "12", False),
        ("3 4", "34", False),
        ("- 7", "-7", True),
        ("x=3", "3", False),
        ("3 or 4", "3", False),
        ("", "3", False),
        ("   ", "3", False),
        (None, "3", False),
    ],
    "number": [
        ("3.0", "3", True),
        ("3", "3.0", True),
        ("1/2", "0.5", True),
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("-\\frac{1}{4}", "-0.25", True),
        ("\\frac12", "0.5", True),
        ("3/4", "\\frac{3}{4}", True),
        ("1.5e3", "1500", True),
        ("1.5 \\times 10^{3}", "1500", True),
        ("50\\%", "50", True),
        ("90^\\circ", "90", True),
        ("0.3333333", "1/3", True),  # within relative tolerance 1e-6
        ("0.333", "1/3", False),
        ("0.51", "0.5", False),
        ("1/0", "0", False),
        ("2/4", "0.5", True),
        ("1 / 2", "0.5", True),
        ("1/2", "2", False),
        ("half", "0.5", False),
        ("1e999", "1", False),
        ("", "0.5", False),
        (None, "0.5", False),
    ],
    "choice": [
        ("B", "B", True),
        ("(B)", "B", True),
        ("B.", "B", True),
        ("b", "B", True),
        ("(c)", "C", True),
        ("c)", "C", True),
        ("[D]", "D", True),
        ("\\text{B}", "B", True),
        ("Option B", "B", True),
        ("Answer: (b)", "B", True),
        ("B", "(B)", True),
        ("A", "B", False),
        ("A or B", "B", False),
        ("AB", "B", False),
        ("B. 42", "B", False),
        ("the answer", "B", False),
        ("", "B", False),
        (None, "B", False),
    ],
    "yesno": [
        ("Yes.", "yes", True),
        ("yes", "Yes", True),
        ("YES", "yes", True),
        ("\\text{No}", "no", True),
        (" no! ", "No", True),
        ("no", "yes", False),
        ("yes, no", "yes", False),
        ("yes no", "yes", False),
        ("y", "yes", False),
        ("true", "yes", False),
        ("", "yes", False),
        (None, "no", False),
    ],
    "word": [
        ("Red", "red", True),
        ("  red  ", "red", True),
        ("Red.", "red", True),
        ("New   York", "new york", True),
        ("\\text{circle}", "circle", True),
        ("ＲＥＤ", "red", True),  # full-width letters (NFKC)
        ("blue", "red", False),
        ("reds", "red", False),
        ("red blue", "red", False),
        ("", "red", False),
        (None, "red", False),
    ],
    "math": [
        ("\\frac{1}{2}", "\\frac{1}{2}", True),
        ("1/2", "\\frac{1}{2}", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("x = 3", "3", True),
        ("\\pi/2", "\\frac{\\pi}{2}", True),
        ("[1, 2)", "[1,2)", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        ("(1,2)", "[1,2)", False),
        ("x^2+2x", "x^2+2x+1", False),
        ("\\sqrt{3}", "\\sqrt{2}", False),
        ("", "1", False),
        (None, "1", False),
    ],
}


@pytest.mark.parametrize(
    "answer_type, pred, gold, expected",
    [(t, p, g, e) for t, cases in CASES.items() for p, g, e in cases],
)
def test_hand_cases(answer_type, pred, gold, expected):
    out, dt = timed_verify(pred, gold, answer_type)
    assert out is expected
    assert dt < CALL_BOUND_S


def test_every_answer_type_has_cases():
    assert set(CASES) == set(ANSWER_TYPES)


def test_unknown_answer_type_raises():
    with pytest.raises(ValueError, match="valid"):
        verify("3", "3", "integr")


def test_parse_helpers():
    assert parse_number("1,234.5") == Fraction(24690, 20)
    assert parse_number("\\frac{-3}{4}") == Fraction(-3, 4)
    assert parse_number("abc") is None
    assert parse_number("1" * 500) is None  # over-long
    assert parse_choice("(e).") == "E"
    assert parse_choice("AB") is None


# ---------------------------------------------------------------------------- hacking guards


@pytest.mark.parametrize("answer_type, gold", [("integer", "3"), ("math", "3"), ("number", "3")])
def test_conflicting_boxes_in_pred_are_wrong(answer_type, gold):
    assert verify("\\boxed{3}", gold, answer_type)
    assert not verify("\\boxed{3} \\boxed{4}", gold, answer_type)
    assert not verify("\\boxed{3} \\boxed{}", gold, answer_type)
    assert not verify("\\boxed{}", gold, answer_type)
    assert not verify("\\boxed{3", gold, answer_type)


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_empty_and_missing_answers_are_wrong_for_every_type(answer_type):
    for pred in (None, "", " ", "\n\t", "$$", "\\text{}"):
        assert not verify(pred, "yes" if answer_type == "yesno" else "B", answer_type)


def test_empty_gold_matches_nothing():
    for t in ANSWER_TYPES:
        assert not verify("", "", t)
        assert not verify("x", " ", t)


def test_overlong_pred_is_wrong():
    assert not verify("3" + " " * 2000 + "3", "3", "word")
    assert not verify("1" * 5000, "1" * 5000, "integer")


# ---------------------------------------------------------------------------- math time bounds

ADVERSARIAL_MATH = [
    "9^{9^{9}}",
    "9^{{9^{9}}}",
    "10^{10^{10}}",
    "123456789^{123456789}",
    "99999999999999999999999999!",
    "\\binom{100000}{50000}",
    "\\prod_{i=1}^{1000000000} i",
    "(10^{5000})^{10000}",
    "(99999^{9999})^{9999}",
    "(x+1)^{200}",
    "\\int_0^1 x^{x^x} dx",
    "{" * 12 + "1" + "}" * 12,
    "(" * 30 + "1" + ")" * 30,
    "\\frac{" * 50 + "1" + "}{2}" * 50,
    "x" * 199,
    "x^2+" * 49 + "1",
    "\\boxed{1}" * 300,
    "1" * 999,
    "\\sqrt{" * 40 + "2" + "}" * 40,
]


def test_adversarial_math_is_bounded():
    times = []
    for pred in ADVERSARIAL_MATH:
        for gold in ("1", "x^2+2x+1"):
            out, dt = timed_verify(pred, gold, "math")
            assert out is False
            times.append((dt, pred))
    worst_dt, worst = max(times)
    print(f"\nadversarial math verify: worst {worst_dt * 1e3:.0f} ms on {worst[:30]!r}, "
          f"median {statistics.median(t for t, _ in times) * 1e3:.2f} ms")
    assert worst_dt < CALL_BOUND_S


def test_math_is_bounded_off_the_main_thread():
    out: list = []

    def work():
        for pred in ("2^{10000000}", "(x+1)^{200}", "1/2"):
            out.append(timed_verify(pred, "0.5", "math"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [o for o, _ in out] == [False, False, True]
    assert max(dt for _, dt in out) < CALL_BOUND_S


def test_concurrent_verify_is_deterministic():
    preds = [f"\\frac{{{i}}}{{{i + 1}}}" for i in range(1, 40)] + ["1/2", "2/4", "\\frac{1}{2}"]
    expected = [verify(p, "\\frac{1}{2}", "math") for p in preds]
    results: dict[int, list[bool]] = {}

    def work(k):
        results[k] = [verify(p, "\\frac{1}{2}", "math") for p in preds]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[k] == expected for k in range(4))
    assert expected[0] and expected[-3:] == [True, True, True]


def test_stuck_worker_is_killed_and_replaced():
    # No soft timer in the worker (timeout=0): only the parent's hard timeout can stop it.
    pool = MathVerifyPool(workers=1, timeout=0, hard_timeout=0.3, spares=1).start(wait=True)
    try:
        start = time.perf_counter()
        assert pool.check("123456789^{123456789}", "1") is False
        killed_after = time.perf_counter() - start
        assert pool.kills == 1
        start = time.perf_counter()
        assert pool.check("1/2", "\\frac{1}{2}") is True  # served by the warm spare
        next_call = time.perf_counter() - start
        print(f"\nstuck worker killed after {killed_after * 1e3:.0f} ms; next call {next_call * 1e3:.0f} ms")
        assert killed_after < CALL_BOUND_S and next_call < CALL_BOUND_S
    finally:
        pool.close()


def test_soft_timeout_interrupts_big_integer_work():
    pool = MathVerifyPool(workers=1, timeout=0.2, hard_timeout=5.0, spares=0).start(wait=True)
    try:
        start = time.perf_counter()
        assert pool.check("123456789^{123456789}", "1") is False
        assert time.perf_counter() - start < CALL_BOUND_S
        assert pool.kills == 0  # the worker stopped itself and survived
        assert pool.check("x=3", "3") is True
    finally:
        pool.close()


# ---------------------------------------------------------------------------- fuzzing

_math_tokens = st.sampled_from(
    ["\\frac{", "}{", "}", "{", "^", "^{", "9", "99999", "!", "(", ")", "\\sqrt{", "x", "+", "-",
     "*", "/", "=", "\\boxed{", "\\sum_{i=1}^{", "\\int", "\\pi", "e", ".", ",", "\\left(",
     "\\right)", "$", "\\\\", "\\", "\\text{", " ", "i", "\\infty", "<", "\\le", "[", "]"]
)
_preds = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.lists(_math_tokens, max_size=40).map("".join),
    st.from_regex(r"[+-]?\d{1,6}(\.\d{0,4})?(/\d{1,4})?", fullmatch=True),
)
_golds = st.sampled_from(["3", "0.5", "\\frac{1}{2}", "B", "yes", "red", "x^2+1", "\\sqrt{2}", "[1,2)"])
_fuzz_times: list[float] = []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pred=_preds, gold=_golds, answer_type=st.sampled_from(ANSWER_TYPES))
def test_fuzz_verify_never_raises_and_is_bounded(pred, gold, answer_type):
    out, dt = timed_verify(pred, gold, answer_type)
    _fuzz_times.append(dt)
    assert isinstance(out, bool)
    assert dt < CALL_BOUND_S
    if out:  # an accepted answer is never empty
        assert pred is not None and pred.strip()


def test_print_fuzz_timing():
    if not _fuzz_times:
        pytest.skip("fuzz test did not run")
    ts = sorted(_fuzz_times)
    print(f"\nfuzzed verify: {len(ts)} calls, median {statistics.median(ts) * 1e3:.3f} ms, "
          f"p99 {ts[int(0.99 * (len(ts) - 1))] * 1e3:.1f} ms, max {ts[-1] * 1e3:.0f} ms")


def test_typical_verify_time():
    typical = [("42", "42", "integer"), ("0.5", "1/2", "number"), ("(B)", "B", "choice"),
               ("Yes", "yes", "yesno"), ("red", "Red", "word")]
    for pred, gold, answer_type in typical:
        start = time.perf_counter()
        for _ in range(200):
            verify(pred, gold, answer_type)
        per_call = (time.perf_counter() - start) / 200
        print(f"\ntypical {answer_type} verify: {per_call * 1e6:.1f} us")
        assert per_call < 0.01
    # distinct math pairs (no cache hits): worker round trip plus math-verify
    start = time.perf_counter()
    n = 60
    for i in range(n):
        verify(f"\\frac{{{i}}}{{{i + 7}}} + x", f"x + {i}/{i + 7}", "math")
    per_call = (time.perf_counter() - start) / n
    print(f"typical math verify (distinct, symbolic): {per_call * 1e3:.2f} ms")
    assert per_call < 0.5


def test_inline_backend_and_configuration():
    from perceptrl.rewards import configure_math

    with pytest.raises(ValueError, match="inline"):
        configure_math(backend="threads")
    try:
        configure_math(backend="inline")  # pairs not seen before (results are cached)
        assert verify("3\\sqrt{2}", "\\sqrt{18}", "math")
        assert not verify("\\sqrt{5}", "\\sqrt{18}", "math")
        start = time.perf_counter()
        assert not verify("(99998^{9999})^{9999}", "2", "math")  # main thread: interval timer
        assert time.perf_counter() - start < CALL_BOUND_S
    finally:
        configure_math(backend="process")
    assert verify("x=3", "3", "math")
