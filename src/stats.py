"""Intervals, paired tests and multiple-comparison corrections: the only home of the study's statistics.

Every test returns a dict with the keys a verdict needs:
    test        the method, by name ("mcnemar_exact", "sign_test_exact", "paired_t", "paired_bootstrap")
    estimate    the effect (b - a for a paired difference)
    p_value     two-sided
    p_floor     the smallest p-value the test can return on these data: 0 for an analytic test (paired t,
                Welch), 2/B for a bootstrap of B resamples (its p is 2 * max(tail, 1/B)), and for an
                exact test on d discordant pairs (McNemar, the sign test) 2^(1-d) (1 when d <= 1): the
                p of d discordant pairs all one way
and, where the test belongs to a family of comparisons, `p_adjusted` (Holm, see `Family`). The exact
tests also record `discordant` (d), the number of examples that carry information.

Which test for which outcome (docs/DESIGN.md section 5):
- a paired yes/no outcome (exact_match, end_of_answer_acc, with vs without an intervention): exact
  McNemar, a two-sided binomial test on the discordant pairs; no resampling;
- a difference of paired yes/no differences (e.g. an ablation's effect on bracketed minus on flat
  twins of the same expressions, per example in {-2, ..., 2}): the exact sign test on the examples
  whose difference is not zero;
- a paired continuous outcome (loss, answer_loss, answer_token_acc; ratios of sums over examples):
  a paired t-test on each example's linearised contribution to the contrast (`paired_contrast`); with
  a constant denominator this is the ordinary paired t-test on per-example differences. Its floor is 0,
  so it can reach any corrected threshold.
- one statistic per replicate (a seed), two groups of replicates: Welch's t-test (`welch_t`), or the exact
  permutation test of the difference in means over every split of the pooled replicates (`permutation_test`,
  floor 2 / C(2n, n) for two groups of n); one group against 0: the one-sample t-test (`one_sample_t`).
  Their power for a planned number of replicates: `power_welch`, `power_permutation`, `power_one_sample`.

Per-example scores come as (numerator, denominator) pairs so that token-weighted metrics and
per-example ones share one code path; resampling and pairing are always over examples, never over
tokens of one example.
"""

from __future__ import annotations

import functools
import math

import torch

Z95 = 1.959963984540054
DEFAULT_RESAMPLES = 2000
ALPHA = 0.05
# a family's smallest attainable adjusted p must sit this far below alpha (docs/DESIGN.md section 5: ten times)
FLOOR_MARGIN = 10


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).cpu()


# ---------------------------------------------------------------------------- intervals


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _resample_index(n: int, resamples: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (resamples, n), generator=gen)


@functools.lru_cache(maxsize=4)
def _resample_counts(n: int, resamples: int, seed: int) -> torch.Tensor:
    """[resamples, n] float64: how often each example is drawn in each resample. `counts @ x` is the
    resampled sum of x as one matrix product, and the matrix is cached: an analysis makes many
    bootstraps of the same size."""
    idx = _resample_index(n, resamples, seed)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def bootstrap_ratio_interval(num, den, resamples=DEFAULT_RESAMPLES, seed=0) -> tuple[float, float]:
    """Percentile 95% interval of sum(num)/sum(den), resampling examples."""
    num, den = _f64(num), _f64(den)
    counts = _resample_counts(len(num), resamples, seed)
    stats = (counts @ num) / (counts @ den)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return (lo, hi)


def bootstrap_p_floor(resamples: int) -> float:
    """The smallest p-value `paired_bootstrap` can return with this many resamples."""
    return min(1.0, 2.0 / resamples)


def paired_bootstrap(num_a, den_a, num_b, den_b, resamples=DEFAULT_RESAMPLES, seed=0) -> dict:
    """Difference of ratio statistics (b - a) on the same examples: estimate, percentile 95% interval
    and a two-sided bootstrap p-value (twice the smaller tail beyond zero, never below 2/B).

    Used for intervals of quantities without an analytic test (probe selectivity); its p-value has a
    floor, recorded as `p_floor`, so it decides nothing in a large family."""
    num_a, den_a, num_b, den_b = _f64(num_a), _f64(den_a), _f64(num_b), _f64(den_b)
    estimate = (num_b.sum() / den_b.sum() - num_a.sum() / den_a.sum()).item()
    counts = _resample_counts(len(num_a), resamples, seed)
    diffs = (counts @ num_b) / (counts @ den_b) - (counts @ num_a) / (counts @ den_a)
    lo, hi = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    tail = min((diffs <= 0).double().mean().item(), (diffs >= 0).double().mean().item())
    p = min(1.0, 2 * max(tail, 1.0 / resamples))
    return {"test": "paired_bootstrap", "estimate": estimate, "ci95": [lo, hi], "p_value": p,
            "p_floor": bootstrap_p_floor(resamples), "resamples": resamples}


def independent_difference(num_a, den_a, num_b, den_b, resamples=DEFAULT_RESAMPLES, seed=0) -> dict:
    """sum(num_b)/sum(den_b) - sum(num_a)/sum(den_a) for two different sets of examples, with a
    percentile interval from resampling each set on its own. Descriptive only (no p-value): used for
    gaps between test sets whose contents differ (test_paren minus test_flat)."""
    num_a, den_a, num_b, den_b = _f64(num_a), _f64(den_a), _f64(num_b), _f64(den_b)
    ra = (_resample_counts(len(num_a), resamples, seed) @ num_a) / (_resample_counts(len(num_a), resamples, seed) @ den_a)
    rb = (_resample_counts(len(num_b), resamples, seed + 1) @ num_b) / (_resample_counts(len(num_b), resamples, seed + 1) @ den_b)
    lo, hi = torch.quantile(rb - ra, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"estimate": (num_b.sum() / den_b.sum() - num_a.sum() / den_a.sum()).item(), "ci95": [lo, hi],
            "interval": f"percentile bootstrap, each set resampled on its own ({resamples} resamples)"}


# ---------------------------------------------------------------------------- exact tests


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial p-value for k successes of n at p = 1/2: twice the smaller tail,
    computed in exact integer arithmetic (no underflow or cancellation for any n), capped at 1."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: correctly rounded


def binomial_p_floor(n: int) -> float:
    """The smallest p-value `binomial_two_sided` can return for n trials: 2^(1-n), i.e. all n one way
    (1 for n <= 1). An exact test on d discordant pairs cannot go below it, whatever the effect."""
    return 1.0 if n <= 1 else min(1.0, 2.0 ** (1 - n))


# tests whose floor is set by the data (the discordant count), not by the method's resolution: a family
# of them that cannot reach its threshold is reported as "cannot decide", not refused (see Family)
EXACT_COUNT_TESTS = ("mcnemar_exact", "sign_test_exact")


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test for paired yes/no outcomes (same examples, conditions a and b); its floor is
    2^(1-d) for d = only_a + only_b discordant pairs."""
    a, b = torch.as_tensor(correct_a).bool().cpu(), torch.as_tensor(correct_b).bool().cpu()
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = len(a)
    d = only_a + only_b
    return {"test": "mcnemar_exact", "estimate": (only_b - only_a) / n if n else float("nan"),
            "only_a": only_a, "only_b": only_b, "discordant": d, "p_value": binomial_two_sided(only_a, d),
            "p_floor": binomial_p_floor(d)}


def sign_test_exact(differences) -> dict:
    """Exact two-sided sign test of per-example differences (zeros dropped); estimate = their mean; its
    floor is 2^(1-d) for the d non-zero differences (recorded as `discordant`)."""
    d = _f64(differences)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    return {"test": "sign_test_exact", "estimate": d.mean().item() if len(d) else float("nan"),
            "positive": pos, "negative": neg, "discordant": pos + neg, "p_value": binomial_two_sided(pos, pos + neg),
            "p_floor": binomial_p_floor(pos + neg)}


# ---------------------------------------------------------------------------- the t distribution


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean; use symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return min(1.0, _betainc(df / 2, 0.5, df / (df + t * t)))


@functools.lru_cache(maxsize=64)
def t_quantile_975(df: float) -> float:
    """The 97.5% quantile of Student's t (bisection on the two-sided p)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2


def paired_contrast(terms, alpha_ci: float = 0.95) -> dict:
    """A linear contrast of ratio statistics measured on the same examples, with a paired t-test.

    `terms` is a list of (weight, num, den): the contrast is sum(w * sum(num) / sum(den)); e.g. an
    ablation's effect is [(-1, base), (+1, ablated)], and its effect on bracketed twins minus its
    effect on the flat originals has four terms. Each example contributes
    u_i = sum(w * (num_i - R * den_i) / mean(den)) (the delta method's linearisation, R = the term's
    ratio); the test is a one-sample t-test of the u_i (mean zero by construction, so the statistic is
    estimate / (sd(u) / sqrt(n))). With a constant denominator this is exactly the paired t-test on
    per-example differences. Analytic: p_floor = 0.
    """
    n = len(terms[0][1])
    estimate, u = 0.0, torch.zeros(n, dtype=torch.float64)
    for weight, num, den in terms:
        num, den = _f64(num), _f64(den)
        ratio = (num.sum() / den.sum()).item()
        estimate += weight * ratio
        u += weight * (num - ratio * den) / den.mean()
    out = {"test": "paired_t", "estimate": estimate, "n": n, "df": n - 1, "p_floor": 0.0}
    sd = u.std().item() if n > 1 else float("nan")
    if n < 2 or not math.isfinite(sd):
        return {**out, "ci95": [float("nan"), float("nan")], "t": float("nan"), "p_value": float("nan")}
    se = sd / math.sqrt(n)
    if se == 0.0:  # every example contributes exactly the same: no variation to test against
        p = 1.0 if estimate == 0.0 else 0.0
        return {**out, "ci95": [estimate, estimate], "t": float("nan") if estimate == 0 else math.copysign(math.inf, estimate),
                "p_value": p}
    t = estimate / se
    half = t_quantile_975(n - 1) * se
    return {**out, "ci95": [estimate - half, estimate + half], "t": t, "p_value": t_two_sided_p(t, n - 1)}


def welch_t(a, b) -> dict:
    """mean(b) - mean(a) for two independent groups of replicates (e.g. one metric of each seed of two
    configs), with Welch's unequal-variance t-test and its 95% interval (Welch-Satterthwaite degrees
    of freedom). Analytic: p_floor = 0. Needs two values or more in each group."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    out = {"test": "welch_t", "n_a": len(a), "n_b": len(b), "p_floor": 0.0}
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch_t needs two values or more in each group (got {len(a)} and {len(b)})")
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1) / len(a)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1) / len(b)
    estimate, se = mean_b - mean_a, math.sqrt(var_a + var_b)
    out.update(estimate=estimate, mean_a=mean_a, mean_b=mean_b)
    if se == 0.0:  # no spread on either side: nothing to test the difference against
        return {**out, "df": float("nan"), "t": float("nan") if estimate == 0 else math.copysign(math.inf, estimate),
                "ci95": [estimate, estimate], "p_value": 1.0 if estimate == 0.0 else 0.0}
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    t = estimate / se
    half = t_quantile_975(df) * se
    return {**out, "df": df, "t": t, "ci95": [estimate - half, estimate + half], "p_value": t_two_sided_p(t, df)}


def mean_interval(values) -> dict:
    """Mean of replicates (e.g. one statistic per seed) with its 95% t interval (n - 1 degrees of freedom),
    not clipped: {n, mean, sd, ci95}. One value: sd and ci95 are None; none: mean too."""
    values = [float(x) for x in values]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def one_sample_t(values, mu: float = 0.0) -> dict:
    """mean(values) - mu for independent replicates, with the two-sided one-sample t-test that it is 0 and its
    95% interval (n - 1 degrees of freedom). Analytic: p_floor = 0. Needs two values or more."""
    values = [float(x) for x in values]
    n = len(values)
    if n < 2:
        raise ValueError(f"one_sample_t needs two values or more (got {n})")
    m = mean_interval(values)
    estimate, sd = m["mean"] - mu, m["sd"]
    out = {"test": "one_sample_t", "n": n, "df": n - 1, "mean": m["mean"], "mu": mu, "sd": sd, "estimate": estimate,
           "p_floor": 0.0}
    se = sd / math.sqrt(n)
    if se == 0.0:  # every replicate the same: nothing to test the mean against
        return {**out, "t": float("nan") if estimate == 0 else math.copysign(math.inf, estimate),
                "ci95": [estimate, estimate], "p_value": 1.0 if estimate == 0.0 else 0.0}
    t = estimate / se
    half = t_quantile_975(n - 1) * se
    return {**out, "t": t, "ci95": [estimate - half, estimate + half], "p_value": t_two_sided_p(t, n - 1)}


# ---------------------------------------------------------------------------- the exact permutation test

MAX_SPLITS = 2_000_000  # C(n_a + n_b, n_b) splits enumerated: C(16, 8) = 12,870; C(24, 12) = 2.7 million is too many


def _splits(n_a: int, n_b: int):
    """[C, n_a + n_b] float64 (numpy): row r marks with 1 the members of group b in split r, every split once;
    the last row marks the last n_b positions (the observed split when the values are a then b)."""
    import itertools

    import numpy as np

    n = n_a + n_b
    count = math.comb(n, n_b)
    if count > MAX_SPLITS:
        raise ValueError(f"an exact permutation test of {n_a} against {n_b} values needs {count:,} splits, more than "
                         f"{MAX_SPLITS:,}")
    rows = np.zeros((count, n))
    for r, members in enumerate(itertools.combinations(range(n), n_b)):
        rows[r, list(members)] = 1.0
    return rows


def permutation_floor(n_a: int, n_b: int) -> float:
    """The smallest p the exact two-sided permutation test of a difference in means can give, on values without
    ties: 1 / C(n_a + n_b, n_b), and twice that for equal groups (swapping the groups gives the same |difference|)."""
    count = math.comb(n_a + n_b, n_b)
    return min(1.0, (2.0 if n_a == n_b else 1.0) / count)


def _permutation_p(splits, a, b, shift: float = 0.0) -> tuple[float, float]:
    """(p, p of the most extreme split) of mean(b - shift) - mean(a) over every split of the pooled values."""
    import numpy as np

    x = np.array(list(a) + [v - shift for v in b], dtype=np.float64)
    n_a, n_b = len(a), len(b)
    diffs = (splits @ x) / n_b - ((1.0 - splits) @ x) / n_a
    tol = 1e-9 * max(1.0, float(np.abs(x).max()))  # the same difference summed in another order is a tie
    observed = abs(diffs[-1])
    extreme = float(np.abs(diffs).max())
    return float((np.abs(diffs) >= observed - tol).mean()), float((np.abs(diffs) >= extreme - tol).mean())


def permutation_test(a, b, alpha_ci: float = 0.95) -> dict:
    """mean(b) - mean(a) for two independent groups of replicates, with the exact two-sided permutation test:
    p = the share of all C(n_a + n_b, n_b) splits of the pooled values into groups of the same sizes whose
    |difference in means| is at least the observed one (the observed split counted). Its floor `p_floor` is
    permutation_floor (values without ties); `p_floor_data` is the p of the most extreme split of these very
    values, the smallest p their ties allow. The 95% interval inverts the test: the shifts d for which the test
    of (b - d) against a gives p > 0.05 (None for a bound the test cannot set, when its floor is not below 0.05)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        raise ValueError(f"permutation_test needs a value or more in each group (got {len(a)} and {len(b)})")
    splits = _splits(len(a), len(b))
    estimate = sum(b) / len(b) - sum(a) / len(a)
    p, data_floor = _permutation_p(splits, a, b)
    level = 1.0 - alpha_ci
    span = max(a + b) - min(a + b)

    def bound(direction: float):
        inner, outer = estimate, estimate + direction * (4 * span + 1.0)
        for _ in range(8):  # far enough that b - shift lies wholly on one side of a: p is at its floor there
            if _permutation_p(splits, a, b, outer)[0] <= level:
                break
            outer = estimate + 2 * (outer - estimate)
        else:
            return None
        for _ in range(60):
            mid = (inner + outer) / 2
            inner, outer = (mid, outer) if _permutation_p(splits, a, b, mid)[0] > level else (inner, mid)
        return (inner + outer) / 2

    return {"test": "permutation_exact", "n_a": len(a), "n_b": len(b), "mean_a": sum(a) / len(a),
            "mean_b": sum(b) / len(b), "estimate": estimate, "ci95": [bound(-1.0), bound(1.0)],
            "interval": "inversion of the exact permutation test (shifts of b not rejected at 0.05)",
            "p_value": p, "p_floor": permutation_floor(len(a), len(b)), "p_floor_data": data_floor,
            "splits": len(splits)}


# ---------------------------------------------------------------------------- power by simulation
# The power of the study's primary tests (docs/PREREGISTRATION.md): replicates drawn from normal distributions
# with given spreads, power = the share of simulated studies whose p is below `threshold` (Holm's first
# threshold alpha / m: a lower bound on the power under Holm). `rng` is a numpy Generator; the p-values are
# computed in numpy (welch_t and one_sample_t also compute intervals, which a simulation does not need).


def welch_p(a, b) -> float:
    """Two-sided p of Welch's t-test of mean(b) - mean(a) (numpy arrays)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # no spread on either side (a spread measured as 0)
        return 1.0 if b.mean() == a.mean() else 0.0
    t = (b.mean() - a.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t_two_sided_p(float(t), float(df))


def one_sample_p(x) -> float:
    """Two-sided p of the one-sample t-test that mean(x) is 0 (a numpy array)."""
    sd = x.std(ddof=1)
    if sd == 0:
        return 1.0 if x.mean() == 0 else 0.0
    t = x.mean() / (sd / math.sqrt(len(x)))
    return t_two_sided_p(float(t), len(x) - 1)


def power_welch(effect: float, sd_a: float, sd_b: float, rng, n_a: int, n_b: int, sims: int, threshold: float) -> float:
    hits = 0
    for _ in range(sims):
        a, b = rng.normal(0.0, sd_a, n_a), rng.normal(effect, sd_b, n_b)
        hits += welch_p(a, b) < threshold
    return hits / sims


def power_one_sample(effect: float, sd: float, rng, n: int, sims: int, threshold: float) -> float:
    return sum(one_sample_p(rng.normal(effect, sd, n)) < threshold for _ in range(sims)) / sims


def power_permutation(effect: float, sd_a: float, sd_b: float, rng, n_a: int, n_b: int, sims: int,
                      threshold: float) -> tuple[float, float]:
    """Power of the exact two-sided permutation test of the difference in means (all C(n_a + n_b, n_b) splits),
    and its floor: (power, floor)."""
    import numpy as np

    splits = _splits(n_a, n_b)
    hits = 0
    for _ in range(sims):
        x = np.concatenate([rng.normal(0.0, sd_a, n_a), rng.normal(effect, sd_b, n_b)])
        diffs = (splits @ x) / n_b - ((1 - splits) @ x) / n_a
        observed = abs(diffs[-1])  # the last split is the second group as drawn: the real one
        hits += (np.abs(diffs) >= observed - 1e-12).mean() < threshold
    return hits / sims, permutation_floor(n_a, n_b)


# ---------------------------------------------------------------------------- corrections


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), monotone and capped at 1."""
    p = list(p_values)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _largest_d(entries) -> int | None:
    counts = [e["discordant"] for e in entries if isinstance(e.get("discordant"), int)]
    return max(counts) if counts else None


def family_verdict(entries, size: int | None = None, alpha: float = ALPHA) -> dict:
    """What a family of tests can say, from its members' p_floor and (after Holm) `significant`.

    Holm rejects nothing unless the smallest p is below alpha / m (m = `size`, the whole family's size;
    `entries` may be a part of it, e.g. its McNemar members). A member whose floor is not below alpha / m
    can therefore never be the first rejection; when no member's floor is, the family cannot reject
    anything whatever the data, and its verdict is "cannot decide (largest d = ...)", never "no effect".
        {"verdict": text, "decidable": bool, "significant": k, "size": m, "reachable": members whose floor
         is below alpha / m, "first_threshold": alpha / m, "largest_d": the largest discordant count or None}
    """
    entries = list(entries)
    m = len(entries) if size is None else size
    threshold = alpha / m if m else math.nan
    reachable = sum(1 for e in entries if e["p_floor"] < threshold)
    significant = sum(1 for e in entries if e.get("significant"))
    largest_d = _largest_d(entries)
    out = {"decidable": reachable > 0, "significant": significant, "size": m, "reachable": reachable,
           "first_threshold": threshold, "largest_d": largest_d}
    if not entries:
        return {**out, "decidable": False, "verdict": "cannot decide (no member)"}
    if significant:
        text = f"{significant} of {len(entries)} significant (Holm over {m}, alpha {alpha:g})"
    elif reachable:
        text = (f"none of {len(entries)} significant (Holm over {m}, alpha {alpha:g}; {reachable} could reach the first "
                f"threshold {threshold:.3g})")
    elif largest_d is not None:
        floor = binomial_p_floor(largest_d)
        floor_text = "1" if largest_d <= 1 else f"2^(1-{largest_d}) = {floor:.3g}"
        text = (f"cannot decide (largest d = {largest_d}: its floor {floor_text} is not below Holm's first threshold "
                f"{alpha:g}/{m} = {threshold:.3g})")
    else:
        floor = min(e["p_floor"] for e in entries)
        text = f"cannot decide (smallest p_floor {floor:.3g} is not below Holm's first threshold {alpha:g}/{m} = {threshold:.3g})"
    return {**out, "verdict": text}


class Family:
    """The comparisons one verdict is drawn from, corrected together by Holm.

        fam = Family("head_scan")
        fam.add("zero/L0-H1/answer_loss/bracket_cost", entry)   # entry: a test's dict
        declared = fam.close()     # writes entry["p_adjusted"]; returns {name, size, correction, members, verdict, ...}

    Two kinds of floor. A floor set by the method's resolution (a bootstrap's 2/B) says nothing about the
    data: `close` refuses a family whose smallest attainable adjusted p from such a floor is not at least
    FLOOR_MARGIN times below alpha (its verdicts would be decided by the resolution). A floor set by the
    data (an exact test's 2^(1-d), EXACT_COUNT_TESTS) is the data's own limit: such a family is closed, and
    its `verdict` (family_verdict) says "cannot decide" when no member can reach Holm's first threshold.
    A family that mixes tests also gets `verdict_by_test`: the same verdict for each test's members, against
    the whole family's thresholds (e.g. its McNemar members cannot decide while its paired t-tests can).
    """

    def __init__(self, name: str, alpha: float = ALPHA):
        self.name, self.alpha = name, alpha
        self.members: list[str] = []
        self.entries: list[dict] = []

    def add(self, member: str, entry: dict) -> dict:
        if member in self.members:
            raise ValueError(f"family {self.name}: member {member!r} added twice")
        if not math.isfinite(entry.get("p_value", float("nan"))):
            raise ValueError(f"family {self.name}: member {member!r} has no finite p_value")
        self.members.append(member)
        self.entries.append(entry)
        entry["family"] = self.name
        return entry

    def close(self) -> dict:
        size = len(self.entries)
        floor = max((e["p_floor"] for e in self.entries), default=0.0)
        resolution = max((e["p_floor"] for e in self.entries if e.get("test") not in EXACT_COUNT_TESTS), default=0.0)
        if resolution * size > self.alpha / FLOOR_MARGIN:
            raise ValueError(f"family {self.name}: p_floor {resolution:g} x {size} comparisons = {resolution * size:g} is "
                             f"above {self.alpha}/{FLOOR_MARGIN}; use an exact or analytic test or more resamples")
        for entry, adj in zip(self.entries, holm([e["p_value"] for e in self.entries])):
            entry["p_adjusted"] = adj
            entry["significant"] = bool(adj < self.alpha)
        verdict = family_verdict(self.entries, size, self.alpha)
        declared = {"name": self.name, "size": size, "correction": "holm", "alpha": self.alpha,
                    "p_floor_max": floor, "resolution_floor_max": resolution, "members": list(self.members),
                    "verdict": verdict["verdict"], "decidable": verdict["decidable"],
                    "first_threshold": verdict["first_threshold"], "largest_d": verdict["largest_d"]}
        tests = sorted({str(e.get("test")) for e in self.entries})
        if len(tests) > 1:
            parts = {t: family_verdict([e for e in self.entries if str(e.get("test")) == t], size, self.alpha)
                     for t in tests}
            declared["verdict_by_test"] = {t: v["verdict"] for t, v in parts.items()}
            declared["decidable_by_test"] = {t: v["decidable"] for t, v in parts.items()}
        return declared


def decidable(declared: dict, test: str | None = None) -> bool:
    """Whether a closed family (Family.close's dict) can reject anything, in all or among one test's members."""
    if test is not None and "decidable_by_test" in declared:
        return bool(declared["decidable_by_test"].get(test, declared["decidable"]))
    return bool(declared["decidable"])
