"""Statistics for evaluation and comparison reports. Pure functions, no model, no I/O.

Sampling metrics (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"):

- :func:`pass_at_k`: unbiased pass@k of one problem from ``n`` samples of which ``c`` are correct,
  ``1 - C(n - c, k) / C(n, k)``, computed as a product (no huge binomials);
- :func:`mean_pass_at_k`, :func:`avg_at_k`: dataset means (avg@k is the mean per-problem accuracy of
  ``k`` samples, PAPO's metric; it equals pass@1 estimated from those samples).

Intervals over seeds (or any small set of independent replicates):

- :func:`mean_ci`: mean and two-sided confidence interval, Student's t (the default, right for the
  3-10 seeds of a typical comparison) or a percentile bootstrap;
- :func:`paired_difference`: method A minus method B over *matched* seeds (same seed, same data
  order), the paired-t interval of the mean difference, its t statistic and two-sided p-value;
- :func:`welch_difference`: the unpaired version (seeds not matched), Welch's t;
- :func:`bootstrap_ci`: percentile bootstrap of any statistic, seeded;
- :func:`wilson_interval`: a binomial proportion (accuracy on ``n`` items of one run).
- :func:`summarize_runs`: :func:`mean_ci` of every metric over a ``{seed: {metric: value}}`` table.

The t distribution (:func:`t_cdf`, :func:`t_quantile`) is implemented here (regularised incomplete
beta by continued fraction, quantile by bisection) so that nothing needs SciPy at run time; the
tests check it against ``scipy.stats.t`` and a printed table.

Example::

    >>> round(pass_at_k(n=5, c=2, k=2), 4)            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    0.7
    >>> ci = mean_ci([0.61, 0.64, 0.58])
    >>> round(ci.mean, 4), round(ci.half_width, 4)   # t(0.975, 2) = 4.3027, sd = 0.03
    (0.61, 0.0745)
    >>> d = paired_difference({0: 0.62, 1: 0.65, 2: 0.60}, {0: 0.60, 1: 0.61, 2: 0.59})
    >>> round(d.mean, 4), d.n
    (0.0233, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "MeanCI",
    "PairedDifference",
    "avg_at_k",
    "bootstrap_ci",
    "default_pass_ks",
    "mean_ci",
    "mean_pass_at_k",
    "paired_difference",
    "pass_at_k",
    "summarize_runs",
    "t_cdf",
    "t_quantile",
    "welch_difference",
    "wilson_interval",
]


# ---------------------------------------------------------------------------------------------
# pass@k and avg@k
# ---------------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem: ``1 - C(n - c, k) / C(n, k)``.

    ``n`` samples were drawn, ``c`` of them correct; pass@k is the probability that at least one
    of ``k`` samples (drawn without replacement from the ``n``) is correct. Computed as
    ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (Chen et al. 2021, Fig. 3), which never forms a
    binomial coefficient, so it is exact to float precision for any ``n``. ``n - c < k`` gives 1.

    Args:
        n: samples drawn (>= 1). c: correct samples (0..n). k: 1..n.
    """
    n = _check_count("n", n, 1)
    c = _check_count("c", c, 0)
    k = _check_count("k", k, 1)
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"k must be <= n (samples drawn), got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _per_problem(n: int | Sequence[int], correct: Sequence[int], caller: str) -> tuple[list, list]:
    """Sample counts and correct counts, one each per problem (``n`` may be one count for all)."""
    counts = list(correct)
    if not counts:
        raise ValueError(f"{caller} needs at least one problem")
    ns = [n] * len(counts) if isinstance(n, (int, np.integer)) else list(n)
    if len(ns) != len(counts):
        raise ValueError(f"got {len(ns)} sample counts for {len(counts)} problems")
    return ns, counts


def mean_pass_at_k(n: int | Sequence[int], correct: Sequence[int], k: int) -> float:
    """Mean of :func:`pass_at_k` over problems; ``n`` is one count for all problems or one each."""
    ns, counts = _per_problem(n, correct, "mean_pass_at_k")
    return float(sum(pass_at_k(ni, ci, k) for ni, ci in zip(ns, counts)) / len(counts))


def avg_at_k(n: int | Sequence[int], correct: Sequence[int]) -> float:
    """avg@k: the mean over problems of ``c_i / n_i`` (accuracy of ``n`` samples per problem)."""
    ns, counts = _per_problem(n, correct, "avg_at_k")
    total = 0.0
    for ni, ci in zip(ns, counts):
        ni, ci = _check_count("n", ni, 1), _check_count("c", ci, 0)
        if ci > ni:
            raise ValueError(f"c (correct samples) must be <= n, got c={ci}, n={ni}")
        total += ci / ni
    return total / len(counts)


def default_pass_ks(n: int) -> list[int]:
    """The k reported for ``n`` samples: powers of two below ``n``, and ``n`` (8 -> [1, 2, 4, 8])."""
    n = _check_count("n", n, 1)
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


# ---------------------------------------------------------------------------------------------
# Student's t distribution
# ---------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _check_df(df: float) -> float:
    if isinstance(df, bool) or not isinstance(df, (int, float, np.integer, np.floating)):
        raise TypeError(f"df must be a number, got {type(df).__name__}")
    if not (df > 0 and math.isfinite(df)):
        raise ValueError(f"df (degrees of freedom) must be finite and > 0, got {df}")
    return float(df)


def t_cdf(x: float, df: float) -> float:
    """``P(T <= x)`` for Student's t with ``df`` degrees of freedom (any real ``df > 0``)."""
    df = _check_df(df)
    if math.isnan(x):
        return math.nan
    if math.isinf(x):
        return 1.0 if x > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))  # P(T > |x|)
    return 1.0 - tail if x >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t (``t_quantile(0.975, 4) = 2.7764``), ``0 < p < 1``."""
    df = _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df == 1.0:  # Cauchy
        return math.tan(math.pi * (p - 0.5))
    if df == 2.0:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    lo, hi = 0.0, max(1.0, NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:  # pragma: no cover - p astronomically close to 1
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------


def _values(values: Any, name: str = "values") -> np.ndarray:
    if isinstance(values, Mapping):
        values = list(values.values())
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: need at least one value")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: values must be finite, got {arr.tolist()}")
    return arr


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


@dataclass(frozen=True)
class MeanCI:
    """A mean and its two-sided confidence interval ``[low, high]``.

    ``std`` is the sample standard deviation (``ddof=1``), ``sem = std / sqrt(n)``. With one value
    the interval is undefined: ``std``, ``sem``, ``low`` and ``high`` are NaN.
    """

    mean: float
    low: float
    high: float
    n: int
    std: float
    sem: float
    confidence: float = 0.95
    method: str = "t"

    @property
    def half_width(self) -> float:
        """``(high - low) / 2`` (the "+-" of ``mean +- half_width`` for the t interval)."""
        return (self.high - self.low) / 2.0

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}
        out["half_width"] = None if math.isnan(self.half_width) else self.half_width
        return out

    def __str__(self) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean:.4g} (n={self.n})"
        return f"{self.mean:.4g} ± {self.half_width:.2g} (n={self.n})"


def mean_ci(values: Sequence[float] | Mapping[Any, float], confidence: float = 0.95, method: str = "t",
            n_resamples: int = 10_000, seed: int = 0) -> MeanCI:
    """Mean of ``values`` (e.g. one final accuracy per seed) with a two-sided interval.

    ``method="t"``: ``mean +- t_{(1+conf)/2, n-1} * std / sqrt(n)`` (exact for normal data; the
    right default for a handful of seeds, where a normal 1.96 would be far too narrow: with 3
    seeds the multiplier is 4.30). ``method="bootstrap"``: percentile bootstrap of the mean
    (:func:`bootstrap_ci`), seeded; it is too narrow below about 10 values, use it for many items.
    """
    confidence = _check_confidence(confidence)
    arr = _values(values)
    n, mean = arr.size, float(arr.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan, math.nan, confidence, method)
    std = float(arr.std(ddof=1))
    sem = std / math.sqrt(n)
    if method == "t":
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * sem
        return MeanCI(mean, mean - half, mean + half, n, std, sem, confidence, "t")
    if method == "bootstrap":
        low, high = bootstrap_ci(arr, confidence, n_resamples=n_resamples, seed=seed)
        return MeanCI(mean, low, high, n, std, sem, confidence, "bootstrap")
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) of ``values``.

    ``statistic`` receives a ``[n_resamples, n]`` array and returns ``[n_resamples]`` (e.g.
    ``lambda x: np.median(x, axis=1)``). Resamples come from ``numpy.random.default_rng(seed)``,
    so the interval is a pure function of its arguments. For a paired bootstrap, pass the
    per-seed differences.
    """
    confidence = _check_confidence(confidence)
    arr = _values(values)
    n_resamples = _check_count("n_resamples", n_resamples, 1)
    rng = np.random.default_rng(seed)
    draws = arr[rng.integers(0, arr.size, size=(n_resamples, arr.size))]
    stats = draws.mean(axis=1) if statistic is None else np.asarray(statistic(draws), dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (e.g. one run's accuracy
    on ``n`` items). Well-behaved at 0 and 1, unlike ``p +- z sqrt(p(1-p)/n)``."""
    confidence = _check_confidence(confidence)
    n = _check_count("n", n, 1)
    successes = _check_count("successes", successes, 0)
    if successes > n:
        raise ValueError(f"successes must be <= n, got {successes} > {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


# ---------------------------------------------------------------------------------------------
# Differences between two methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    """``a - b``: mean difference with its interval, and the test of "no difference".

    For :func:`paired_difference` ``n`` is the number of matched pairs and ``seeds`` their keys
    (positions for sequences); ``wins``/``losses``/``ties`` count pairs with ``a > b``, ``a < b``,
    ``a == b``. For :func:`welch_difference` they are None and ``df`` is Welch's. ``p_value`` is
    two-sided; with a zero spread it is 1.0 when the mean difference is 0 and 0.0 otherwise.
    """

    mean: float
    low: float
    high: float
    n: int
    std: float
    sem: float
    t_stat: float
    df: float
    p_value: float
    confidence: float = 0.95
    method: str = "paired_t"
    seeds: list[Any] | None = None
    wins: int | None = None
    losses: int | None = None
    ties: int | None = None
    mean_a: float = math.nan
    mean_b: float = math.nan
    unmatched: list[Any] = field(default_factory=list)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}
        out["half_width"] = None if math.isnan(self.half_width) else self.half_width
        out["significant"] = bool(self.significant)
        return out


def _match(a: Any, b: Any) -> tuple[list[Any], np.ndarray, np.ndarray, list[Any]]:
    """Pair two result sets: by key for mappings (keys in both), by position for sequences."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("pass both results as {seed: value} mappings or both as equal-length sequences")
    if isinstance(a, Mapping):
        keys = [key for key in a if key in b]
        unmatched = [key for key in a if key not in b] + [key for key in b if key not in a]
        if not keys:
            raise ValueError(f"no seed in common: a has {sorted(map(str, a))}, b has {sorted(map(str, b))}")
        return keys, _values([a[key] for key in keys], "a"), _values([b[key] for key in keys], "b"), unmatched
    av, bv = _values(a, "a"), _values(b, "b")
    if av.size != bv.size:
        raise ValueError(f"paired results need equal lengths (matched seeds), got {av.size} and {bv.size}")
    return list(range(av.size)), av, bv, []


def _two_sided_p(t_stat: float, df: float) -> float:
    return float(min(1.0, 2.0 * (1.0 - t_cdf(abs(t_stat), df))))


def paired_difference(a: Sequence[float] | Mapping[Any, float], b: Sequence[float] | Mapping[Any, float],
                      confidence: float = 0.95) -> PairedDifference:
    """Method A minus method B over matched seeds: paired-t interval of the mean difference.

    ``a`` and ``b`` are ``{seed: value}`` mappings (paired on the seeds present in both; the
    others are listed in ``unmatched``) or equal-length sequences paired by position. Pairing
    removes the seed-to-seed variation both methods share (same initial weights, same data
    order), which is why it is much tighter than comparing two unpaired means. With one pair the
    interval and p-value are undefined (NaN).
    """
    confidence = _check_confidence(confidence)
    keys, av, bv, unmatched = _match(a, b)
    d = av - bv
    n, mean = d.size, float(d.mean())
    common = dict(n=n, confidence=confidence, method="paired_t", seeds=keys,
                  wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()),
                  mean_a=float(av.mean()), mean_b=float(bv.mean()), unmatched=unmatched)
    if n == 1:
        nan = math.nan
        return PairedDifference(mean, nan, nan, std=nan, sem=nan, t_stat=nan, df=0.0, p_value=nan, **common)
    std = float(d.std(ddof=1))
    sem = std / math.sqrt(n)
    df = float(n - 1)
    half = t_quantile(0.5 + confidence / 2.0, df) * sem
    if sem > 0:
        t_stat = mean / sem
        p = _two_sided_p(t_stat, df)
    else:
        t_stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
    return PairedDifference(mean, mean - half, mean + half, std=std, sem=sem, t_stat=t_stat, df=df, p_value=p,
                            **common)


def welch_difference(a: Sequence[float] | Mapping[Any, float], b: Sequence[float] | Mapping[Any, float],
                     confidence: float = 0.95) -> PairedDifference:
    """``mean(a) - mean(b)`` for *unmatched* replicates: Welch's t interval (unequal variances,
    Welch-Satterthwaite degrees of freedom). Each side needs at least two values."""
    confidence = _check_confidence(confidence)
    av, bv = _values(a, "a"), _values(b, "b")
    if av.size < 2 or bv.size < 2:
        raise ValueError(f"welch_difference needs >= 2 values per side, got {av.size} and {bv.size}")
    va, vb = float(av.var(ddof=1)) / av.size, float(bv.var(ddof=1)) / bv.size
    mean = float(av.mean() - bv.mean())
    sem = math.sqrt(va + vb)
    if sem > 0:
        df = (va + vb) ** 2 / (va * va / (av.size - 1) + vb * vb / (bv.size - 1))
        t_stat = mean / sem
        p = _two_sided_p(t_stat, df)
    else:
        df = float(av.size + bv.size - 2)
        t_stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
    half = t_quantile(0.5 + confidence / 2.0, df) * sem
    return PairedDifference(mean, mean - half, mean + half, n=int(av.size + bv.size), std=math.nan, sem=sem,
                            t_stat=t_stat, df=df, p_value=p, confidence=confidence, method="welch_t",
                            mean_a=float(av.mean()), mean_b=float(bv.mean()))


def summarize_runs(runs: Mapping[Any, Mapping[str, float]], confidence: float = 0.95,
                   method: str = "t") -> dict[str, MeanCI]:
    """``{seed: {metric: value}}`` -> ``{metric: MeanCI}`` over the seeds that report the metric.

    Non-numeric and non-finite entries (e.g. a None for an undefined precision) are skipped.
    """
    collected: dict[str, list[float]] = {}
    for metrics in runs.values():
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                continue
            if math.isfinite(float(value)):
                collected.setdefault(key, []).append(float(value))
    return {key: mean_ci(vals, confidence, method) for key, vals in collected.items()}
