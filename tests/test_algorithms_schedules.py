"""Schedules (spec section 10) and NoisyRollout eta check values (section 11)."""

import math

import pytest

from perceptrl.algorithms import make_schedule


@pytest.mark.parametrize("s,eta", [(0, 1.0), (40, 0.5), (50, 0.0474), (60, 0.0025)])
def test_noisyrollout_eta_check_values(s, eta):
    sched = make_schedule("sigmoid", 100)
    assert sched(s) == pytest.approx(eta, abs=1e-4)
    # by hand: 1 - sigmoid(30 (s - 40) / 100)
    assert sched(s) == pytest.approx(1 - 1 / (1 + math.exp(-30 * (s - 40) / 100)), rel=1e-9)


def test_sigmoid_overrides_and_extremes():
    sched = make_schedule("sigmoid", 200, **{"lambda": 10.0, "s_mid": 100, "scale": 0.5})
    assert sched(100) == pytest.approx(0.25)
    assert make_schedule("sigmoid", 100)(10**6) == 0.0  # no overflow
    assert make_schedule("sigmoid", 100)(-(10**6)) == 1.0


def test_constant_linear_dupl():
    assert make_schedule("constant", 10, value=0.02)(7) == 0.02
    lin = make_schedule("linear", 200, start=1.0, end=0.0)
    dupl = make_schedule("dupl_linear", 200)
    for s, want in [(0, 1.0), (50, 0.75), (100, 0.5), (200, 0.0), (250, 0.0)]:
        assert lin(s) == pytest.approx(want)
        assert dupl(s) == pytest.approx(max(0.0, 1 - s / 200))
    assert make_schedule("linear", 10, start=2.0, end=4.0)(5) == pytest.approx(3.0)


def test_pure_function_of_step_exact_on_resume():
    a = make_schedule("sigmoid", 137)
    seq = [a(s) for s in range(137)]
    b = make_schedule("sigmoid", 137)  # "resumed" run: fresh object, evaluated from the middle
    assert [b(s) for s in range(60, 137)] == seq[60:]
    assert a == b


def test_errors():
    with pytest.raises(ValueError):
        make_schedule("cosine-ish", 10)
    with pytest.raises(TypeError):
        make_schedule("linear", 10, begin=1.0)
    with pytest.raises(TypeError):
        make_schedule("dupl_linear", 10, start=1.0)
