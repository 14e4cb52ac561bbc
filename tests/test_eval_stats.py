"""perceptrl.eval.stats: pass@k / avg@k, t intervals, paired differences (hand-checked values)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from perceptrl.eval.stats import (
    avg_at_k,
    bootstrap_ci,
    default_pass_ks,
    mean_ci,
    mean_pass_at_k,
    paired_difference,
    pass_at_k,
    summarize_runs,
    t_cdf,
    t_quantile,
    welch_difference,
    wilson_interval,
)

# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (2, 1, 1, 0.5),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (8, 3, 4, 13 / 14),  # 1 - C(5,4)/C(8,4) = 1 - 5/70
        (10, 0, 5, 0.0),
        (10, 6, 5, 1.0),  # n - c = 4 < k: every 5-subset holds a correct sample
        (10, 5, 5, 1 - 1 / 252),  # 1 - C(5,5)/C(10,5)
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def _brute_pass_at_k(outcomes: list[int], k: int) -> Fraction:
    """Share of the k-subsets of the samples that contain at least one correct sample."""
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    hits = sum(any(outcomes[i] for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8])
def test_pass_at_k_equals_enumeration_over_subsets(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(outcomes, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not need it.
    for n, c, k in [(1000, 1, 1), (1000, 3, 500), (2000, 10, 100), (5000, 2500, 1)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_1_is_the_sample_accuracy_and_monotone_in_k():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    values = [pass_at_k(16, 3, k) for k in range(1, 17)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == 1.0


def test_pass_at_k_rejects_bad_arguments():
    for args in [(4, 5, 1), (4, 2, 5), (4, 2, 0), (0, 0, 1), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*args)
    with pytest.raises(TypeError):
        pass_at_k(4.0, 2, 1)


def test_dataset_means():
    counts = [0, 1, 4, 2]
    assert avg_at_k(4, counts) == pytest.approx((0 + 0.25 + 1 + 0.5) / 4)
    assert mean_pass_at_k(4, counts, 1) == pytest.approx(avg_at_k(4, counts))
    # pass@2 per problem: 0, 1 - C(3,2)/C(4,2) = 0.5, 1, 1 - C(2,2)/C(4,2) = 5/6
    assert mean_pass_at_k(4, counts, 2) == pytest.approx((0 + 0.5 + 1 + 5 / 6) / 4)
    assert mean_pass_at_k([4, 2], [1, 1], 1) == pytest.approx((0.25 + 0.5) / 2)
    with pytest.raises(ValueError):
        avg_at_k(4, [5])
    with pytest.raises(ValueError):
        mean_pass_at_k([4], [1, 2], 1)


def test_default_pass_ks():
    assert default_pass_ks(1) == [1]
    assert default_pass_ks(8) == [1, 2, 4, 8]
    assert default_pass_ks(5) == [1, 2, 4, 5]


# --------------------------------------------------------------------------- t distribution

# Two-sided 95% critical values from a printed t table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045, 120: 1.980}


@pytest.mark.parametrize("df, value", sorted(T_TABLE.items()))
def test_t_quantile_matches_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=6e-4)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=6e-4)


def test_t_distribution_matches_scipy():
    st = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 4.5, 7, 30, 250]:
        for p in [0.55, 0.9, 0.975, 0.995, 0.9999]:
            assert t_quantile(p, df) == pytest.approx(st.t.ppf(p, df), rel=1e-9)
        for x in [-40.0, -2.5, -0.1, 0.0, 0.7, 3.0, 12.0]:
            assert t_cdf(x, df) == pytest.approx(st.t.cdf(x, df), abs=1e-12)


def test_t_quantile_inverts_cdf():
    for df in [1.5, 6, 60]:
        for p in [0.6, 0.8, 0.99]:
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


# --------------------------------------------------------------------------- intervals


def test_mean_ci_hand_values():
    # [1, 2, 3]: mean 2, sd 1, sem 1/sqrt(3), t(0.975, 2) = 4.302653 -> half width 2.484138
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3 and ci.std == pytest.approx(1.0)
    assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert (ci.low, ci.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    # 90% interval of [0.5, 0.7]: sd 0.1414, sem 0.1, t(0.95, 1) = 6.313752
    ci = mean_ci({0: 0.5, 1: 0.7}, confidence=0.90)
    assert (ci.low, ci.high) == pytest.approx((0.6 - 0.6313752, 0.6 + 0.6313752), abs=1e-6)


def test_mean_ci_matches_scipy():
    st = pytest.importorskip("scipy.stats")
    values = [0.61, 0.64, 0.58, 0.66, 0.60]
    ci = mean_ci(values, 0.95)
    low, high = st.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=st.sem(values))
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-10)


def test_mean_ci_edge_cases():
    one = mean_ci([0.4])
    assert one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    assert one.to_dict()["low"] is None
    same = mean_ci([0.3, 0.3, 0.3])
    assert same.low == same.high == pytest.approx(0.3)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError):
        mean_ci([0.1, 0.2], method="normal")


def test_bootstrap_is_seeded_and_sensible():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.1, size=200)
    a = bootstrap_ci(values, seed=3)
    assert a == bootstrap_ci(values, seed=3)
    assert a != bootstrap_ci(values, seed=4)
    t = mean_ci(values)
    # With 200 values the percentile bootstrap and the t interval agree closely.
    assert a[0] == pytest.approx(t.low, abs=0.005) and a[1] == pytest.approx(t.high, abs=0.005)
    b = mean_ci(values, method="bootstrap", seed=3)
    assert (b.low, b.high) == a and b.method == "bootstrap"
    med = bootstrap_ci([1, 2, 3, 4, 100], statistic=lambda x: np.median(x, axis=1), n_resamples=2000)
    assert med[1] <= 100 and med[0] >= 1


def test_wilson_interval_hand_values():
    # 8/10 at 95%: z^2 = 3.841459; centre (0.8 + z^2/20) / (1 + z^2/10) = 0.716740,
    # half z * sqrt(0.8 * 0.2 / 10 + z^2 / 400) / (1 + z^2/10) = 0.226583
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# --------------------------------------------------------------------------- differences


def test_paired_difference_hand_values():
    a = {0: 0.62, 1: 0.65, 2: 0.60, 3: 0.70}
    b = {0: 0.60, 1: 0.61, 2: 0.59, 3: 0.64}
    # d = [0.02, 0.04, 0.01, 0.06]: mean 0.0325; squared deviations sum to 0.001475, so
    # sd = sqrt(0.001475 / 3) = 0.0221736, sem = sd / 2 = 0.0110868; t(0.975, 3) = 3.182446
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.0325)
    assert d.std == pytest.approx(0.0221736, abs=1e-6)
    assert d.half_width == pytest.approx(3.182446 * 0.0110868, abs=1e-6)
    assert d.t_stat == pytest.approx(0.0325 / 0.0110868, rel=1e-5)
    # Four wins out of four, yet the interval [-0.0028, 0.0678] still contains 0.
    assert (d.low, d.high) == pytest.approx((0.0325 - 0.0352830, 0.0325 + 0.0352830), abs=1e-6)
    assert (d.wins, d.losses, d.ties) == (4, 0, 0) and not d.significant
    assert d.mean_a == pytest.approx(0.6425) and d.mean_b == pytest.approx(0.61)
    assert d.to_dict()["significant"] is False
    assert paired_difference(a, b, confidence=0.80).significant  # t(0.90, 3) = 1.637744


def test_paired_difference_matches_scipy_paired_t():
    st = pytest.importorskip("scipy.stats")
    a = [0.51, 0.55, 0.49, 0.60, 0.52]
    b = [0.50, 0.50, 0.51, 0.55, 0.50]
    d = paired_difference(a, b)
    ref = st.ttest_rel(a, b)
    assert d.t_stat == pytest.approx(ref.statistic, rel=1e-10)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    diffs = np.subtract(a, b)
    low, high = st.t.interval(0.95, 4, loc=diffs.mean(), scale=st.sem(diffs))
    assert (d.low, d.high) == pytest.approx((low, high), rel=1e-10)


def test_paired_difference_matches_seeds_by_key():
    d = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {2: 0.6, 1: 0.6, 5: 0.1})
    assert d.seeds == [1, 2] and sorted(d.unmatched) == [0, 5]
    assert d.mean == pytest.approx(0.05) and (d.wins, d.ties) == (1, 1)
    with pytest.raises(ValueError):
        paired_difference({0: 0.5}, {1: 0.5})
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(TypeError):
        paired_difference({0: 0.1}, [0.1])


def test_paired_difference_degenerate_cases():
    one = paired_difference([0.7], [0.5])
    assert one.mean == pytest.approx(0.2) and math.isnan(one.low) and math.isnan(one.p_value)
    equal = paired_difference([0.5, 0.6], [0.5, 0.6])
    assert equal.mean == 0 and equal.p_value == 1.0 and not equal.significant
    shift = paired_difference([0.6, 0.7], [0.5, 0.6])
    assert shift.p_value == 0.0 and shift.low == pytest.approx(0.1) and shift.high == pytest.approx(0.1)


def test_welch_difference_matches_scipy():
    st = pytest.importorskip("scipy.stats")
    a, b = [0.61, 0.64, 0.58, 0.66], [0.55, 0.57, 0.60]
    d = welch_difference(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert d.t_stat == pytest.approx(ref.statistic, rel=1e-10)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert d.mean == pytest.approx(np.mean(a) - np.mean(b))
    with pytest.raises(ValueError):
        welch_difference([0.5], [0.4, 0.5])


def test_summarize_runs():
    runs = {0: {"accuracy": 0.5, "f1": None, "name": "x"}, 1: {"accuracy": 0.7, "f1": 0.2}, 2: {"accuracy": 0.6}}
    out = summarize_runs(runs)
    assert set(out) == {"accuracy", "f1"}
    assert out["accuracy"].mean == pytest.approx(0.6) and out["accuracy"].n == 3
    assert out["f1"].n == 1
