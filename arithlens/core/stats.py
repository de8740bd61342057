"""The statistics behind every reading of the report, and how readings print them.

A reading states a claim only when the cases establish it, so each number it quotes comes
with a 95 % interval ([`CONFIDENCE`][arithlens.core.stats.CONFIDENCE]) and its case count:

* [`proportion_interval`][arithlens.core.stats.proportion_interval] and
  [`proportion`][arithlens.core.stats.proportion] — an accuracy (`k` correct of `n`) with its
  Wilson score interval, which stays inside [0, 1] and is not degenerate at 0 % or 100 %;
* [`difference_interval`][arithlens.core.stats.difference_interval] — two accuracies on
  different cases: Newcombe's hybrid score interval, built from the two Wilson intervals
  (conservative when the cases are in fact the same);
* [`paired_difference`][arithlens.core.stats.paired_difference] — two accuracies on the same
  cases, e.g. before and after an ablation: Newcombe's interval for paired proportions,
  which uses the correlation of the paired outcomes;
* [`mean_interval`][arithlens.core.stats.mean_interval] — a mean over cases with its Student-t
  interval ([`t_quantile`][arithlens.core.stats.t_quantile]: the exact quantile, from scipy);
* [`bonferroni`][arithlens.core.stats.bonferroni] — the per-test confidence that keeps many
  intervals (one per head, one per node) jointly at 95 %.

The intervals are returned as an [`Estimate`][arithlens.core.stats.Estimate]: a value with its
interval and case count, which says whether it is distinguishable from zero
(`above_zero`, `below_zero`, `known`) and prints itself as a reading quotes it
(`percent()`, `points()`, `change()`, `ci()`). [`num`][arithlens.core.stats.num] and
[`pct`][arithlens.core.stats.pct] print plain numbers the same way: a true minus sign, never a
negative zero. [`arithlens.app.report`][arithlens.app.report] re-exports every name here.

Example:
    ```python
    from arithlens.core.stats import difference_interval, paired_difference, proportion, proportion_interval

    proportion_interval(47, 100)                      # (0.375, 0.567): the Wilson interval
    proportion(47, 100).percent()                     # '47% [95% CI 38% to 57%]'
    difference_interval(30, 40, 18, 40).points()      # '30 points [95% CI 9 to 48]'
    drop = paired_difference([True] * 10 + [False] * 10, [True] * 4 + [False] * 16)
    drop.above_zero                                   # True: the ablation lowers accuracy
    drop.change()                                     # 'a drop of 30 points [95% CI 7 to 49]'
    ```
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Iterable

import scipy.stats

CONFIDENCE = 0.95
"""The confidence level of every interval a reading quotes."""


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be strictly between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _count(k: Any, n: Any) -> tuple[float, int]:
    n_int = int(n)
    if n_int != n or n_int < 0:
        raise ValueError(f"n={n!r} must be a non-negative integer case count")
    k_f = float(k)
    if not math.isfinite(k_f) or k_f < -1e-9 or k_f > n_int + 1e-9:
        raise ValueError(f"k={k!r} must be a count between 0 and n={n_int}")
    return min(max(k_f, 0.0), float(n_int)), n_int


def proportion_interval(k: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion: `k` successes out of `n`.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at
    0 % or 100 %, which small report samples often hit. `n = 0` gives `(0, 1)`: nothing
    is known. `k` may be fractional (an accuracy averaged over several random draws).

    Args:
        k: Successes (e.g. correctly answered cases).
        n: Cases.
        confidence: Coverage of the interval.

    Returns:
        `(low, high)` as fractions.

    Example:
        ```python
        proportion_interval(0, 8)      # (0.0, 0.324): 0 of 8 is compatible with up to 32 %
        ```
    """
    k, n = _count(k, n)
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """A quantity with its confidence interval and the number of cases behind it.

    Attributes:
        value: The point estimate (a fraction for accuracies and their differences).
        low: Lower end of the interval (NaN when it cannot be computed).
        high: Upper end of the interval (NaN when it cannot be computed).
        n: Cases behind the estimate.
        confidence: Coverage of the interval.
    """

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def above_zero(self) -> bool:
        """Whether the whole interval is above zero (a positive effect the cases establish)."""
        return bool(math.isfinite(self.low) and self.low > 0)

    @property
    def below_zero(self) -> bool:
        """Whether the whole interval is below zero."""
        return bool(math.isfinite(self.high) and self.high < 0)

    @property
    def known(self) -> bool:
        """Whether the sign is established (the interval excludes zero)."""
        return self.above_zero or self.below_zero

    def negated(self) -> "Estimate":
        """The same estimate of the opposite quantity (a drop as a rise)."""
        return Estimate(-self.value, -self.high, -self.low, self.n, self.confidence)

    def change(self, digits: int = 0) -> str:
        """A drop (`before − after`) in words: `"a drop of 16 points [...]"` or `"a rise of 2 points [...]"`."""
        if self.value < 0:
            return f"a rise of {self.negated().points(digits)}"
        return f"a drop of {self.points(digits)}"

    def ci(self, scale: float = 100.0, unit: str = "", digits: int = 0) -> str:
        """`"95% CI 8 to 24"` in the given scale (percentage points by default).

        More decimals are shown when the rounded ends would otherwise look equal.
        """
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "no interval: too few cases"
        lo, hi = self.low * scale, self.high * scale
        digits = _digits_apart(lo, hi, digits)
        return f"{round(100 * self.confidence)}% CI {_num(lo, digits)}{unit} to {_num(hi, digits)}{unit}"

    def points(self, digits: int = 0) -> str:
        """A difference of accuracies: `"16 points [95% CI 8 to 24]"`."""
        digits = _digits_apart(self.low * 100, self.high * 100, digits) if math.isfinite(self.low) else digits
        value = _num(100 * self.value, digits)
        unit = "point" if value in ("1", "−1") else "points"
        return f"{value} {unit} [{self.ci(digits=digits)}]"

    def percent(self, digits: int = 0) -> str:
        """A proportion: `"47% [95% CI 37% to 57%]"`."""
        digits = _digits_apart(self.low * 100, self.high * 100, digits) if math.isfinite(self.low) else digits
        return f"{_num(100 * self.value, digits)}% [{self.ci(unit='%', digits=digits)}]"


def _digits_apart(low: float, high: float, digits: int, most: int = 2) -> int:
    """The fewest decimals (from `digits`, at most `most`) that keep two different ends apart."""
    while digits < most and high > low and _num(low, digits) == _num(high, digits):
        digits += 1
    return digits


def num(x: float, digits: int = 1, sign: bool = False) -> str:
    """A number as the readings print it: a true minus sign, never a negative zero (`"−0.3"`, `"0.0"`);
    `sign=True` also marks positive values (`"+0.3"`)."""
    if not math.isfinite(float(x)):
        return "n/a"
    text = _num(float(x), digits)
    return "+" + text if sign and not text.startswith("−") and float(text) != 0 else text


def _num(x: float, digits: int = 0) -> str:
    text = f"{x:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", "−")


def proportion(k: float, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """The proportion `k / n` with its Wilson interval (`value` NaN when `n = 0`)."""
    k_f, n_i = _count(k, n)
    low, high = proportion_interval(k_f, n_i, confidence)
    return Estimate(k_f / n_i if n_i else float("nan"), low, high, n_i, confidence)


def difference_interval(k1: float, n1: int, k2: float, n2: int, confidence: float = CONFIDENCE) -> Estimate:
    """`p1 − p2` for proportions measured on different cases (Newcombe's hybrid score interval).

    The interval combines the two Wilson intervals (Newcombe 1998, method 10). Applied to
    two accuracies measured on the *same* cases it is conservative (wider than the paired
    interval), so a difference it establishes is established.

    Returns:
        An [`Estimate`][arithlens.core.stats.Estimate] of `p1 − p2` with `n = min(n1, n2)`.
    """
    k1, n1 = _count(k1, n1)
    k2, n2 = _count(k2, n2)
    if n1 == 0 or n2 == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), min(n1, n2), confidence)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = proportion_interval(k1, n1, confidence)
    l2, u2 = proportion_interval(k2, n2, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Estimate(d, max(-1.0, low), min(1.0, high), min(n1, n2), confidence)


def paired_difference(first: Iterable[Any], second: Iterable[Any], confidence: float = CONFIDENCE) -> Estimate:
    """`p_first − p_second` for two outcomes of the same cases (e.g. correct before / after an ablation).

    Newcombe's (1998) method 10 for paired proportions: the two Wilson intervals combined
    with the correlation φ of the paired outcomes. Cases where both outcomes agree carry
    no evidence of a difference; the interval narrows as the flips grow one-sided.

    Args:
        first: Per case, a bool or a fraction in [0, 1] (e.g. correct on the original model).
        second: The same cases' other outcome (e.g. correct with a head ablated).

    Returns:
        An [`Estimate`][arithlens.core.stats.Estimate] of the difference (positive: `first`
        is higher — for before/after an ablation, a drop).
    """
    x = [float(v) for v in first]
    y = [float(v) for v in second]
    if len(x) != len(y):
        raise ValueError(f"paired outcomes must have one value per case each: got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, confidence)
    a = sum(min(u, v) for u, v in zip(x, y))  # both right (fractions: expected count)
    b = sum(max(u - v, 0.0) for u, v in zip(x, y))  # first right only
    c = sum(max(v - u, 0.0) for u, v in zip(x, y))  # second right only
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_interval(a + b, n, confidence)
    l2, u2 = proportion_interval(a + c, n, confidence)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    # Newcombe's continuity-corrected correlation (his recommended form of method 10).
    num = max(a * d - b * c - n / 2, 0.0) if a * d > b * c else a * d - b * c
    phi = num / math.sqrt(denom) if denom > 0 else 0.0
    diff = p1 - p2
    dl = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    du = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    low, high = diff - math.sqrt(max(dl, 0.0)), diff + math.sqrt(max(du, 0.0))
    return Estimate(diff, max(-1.0, low), min(1.0, high), n, confidence)


def t_quantile(q: float, df: int) -> float:
    """The exact Student-t quantile `t_df^{-1}(q)` (scipy): at Bonferroni levels and few degrees of
    freedom a normal or series approximation is several per cent short, and the intervals too narrow."""
    if not 0 < q < 1:
        raise ValueError(f"q={q!r} must be strictly between 0 and 1")
    if int(df) != df or df < 1:
        raise ValueError(f"df={df!r} must be a positive integer")
    return float(scipy.stats.t.ppf(q, int(df)))


def mean_interval(values: Iterable[Any], confidence: float = CONFIDENCE) -> Estimate:
    """The mean over cases with its Student-t interval (no interval with fewer than 2 finite values)."""
    xs = [float(v) for v in values]
    xs = [v for v in xs if math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, confidence)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"), n, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, confidence)


def bonferroni(confidence: float, tests: int) -> float:
    """The per-test confidence that keeps `tests` intervals jointly at `confidence`."""
    return 1 - (1 - confidence) / max(1, int(tests))


def pct(x: float, digits: int = 0) -> str:
    """A fraction as a percentage: `pct(0.4712) == "47%"` (`"n/a"` for NaN)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{_num(100 * float(x), digits)}%"
