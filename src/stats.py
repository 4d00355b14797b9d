"""Intervals and paired tests, written once for every metric and every ablation.

Per-example scores come as (numerator, denominator) pairs so that token-weighted metrics
(answer_loss, answer_token_acc) and per-example ones (exact_match) share one bootstrap:
resampling is always over examples, never over tokens of the same example.
"""

from __future__ import annotations

import functools
import math

import torch

Z95 = 1.959963984540054
DEFAULT_RESAMPLES = 2000


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
    """[resamples, n] float64: how often each example is drawn in each resample of
    `_resample_index`. `counts @ x` equals `x[idx].sum(1)` (the same resamples, up to summation order) but is one matrix
    product, and the matrix is cached: a head scan makes hundreds of bootstraps of the same size."""
    idx = _resample_index(n, resamples, seed)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def bootstrap_ratio_interval(num, den, resamples=DEFAULT_RESAMPLES, seed=0) -> tuple[float, float]:
    """Percentile 95% interval of sum(num)/sum(den), resampling examples."""
    num, den = torch.as_tensor(num, dtype=torch.float64).cpu(), torch.as_tensor(den, dtype=torch.float64).cpu()
    counts = _resample_counts(len(num), resamples, seed)
    stats = (counts @ num) / (counts @ den)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return (lo, hi)


def paired_bootstrap(num_a, den_a, num_b, den_b, resamples=DEFAULT_RESAMPLES, seed=0) -> dict:
    """Difference of ratio statistics (b - a) on the same examples: estimate, 95% interval and a
    two-sided bootstrap p-value (twice the smaller tail beyond zero)."""
    t = lambda x: torch.as_tensor(x, dtype=torch.float64).cpu()  # noqa: E731
    num_a, den_a, num_b, den_b = t(num_a), t(den_a), t(num_b), t(den_b)
    estimate = (num_b.sum() / den_b.sum() - num_a.sum() / den_a.sum()).item()
    counts = _resample_counts(len(num_a), resamples, seed)
    diffs = (counts @ num_b) / (counts @ den_b) - (counts @ num_a) / (counts @ den_a)
    lo, hi = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    tail = min((diffs <= 0).double().mean().item(), (diffs >= 0).double().mean().item())
    p = min(1.0, 2 * max(tail, 1.0 / resamples))
    return {"estimate": estimate, "ci95": [lo, hi], "p_value": p}


def difference_of_differences(a1, b1, a2, b2, resamples=DEFAULT_RESAMPLES, seed=0) -> dict:
    """(b2 - a2) - (b1 - a1) for two independent sets of examples, each difference paired.

    Each argument is a (num, den) pair. Used for specialization: the ablation's effect on
    parenthesized examples minus its effect on flat ones; the two test sets are resampled
    independently, each keeping its own pairing.
    """
    t = lambda x: torch.as_tensor(x, dtype=torch.float64).cpu()  # noqa: E731

    def diffs(a, b, seed_):
        counts = _resample_counts(len(a[0]), resamples, seed_)
        na, da, nb, db = t(a[0]), t(a[1]), t(b[0]), t(b[1])
        point = (nb.sum() / db.sum() - na.sum() / da.sum()).item()
        return point, (counts @ nb) / (counts @ db) - (counts @ na) / (counts @ da)

    p1, d1 = diffs(a1, b1, seed)
    p2, d2 = diffs(a2, b2, seed + 1)
    dd = d2 - d1
    lo, hi = torch.quantile(dd, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    tail = min((dd <= 0).double().mean().item(), (dd >= 0).double().mean().item())
    return {"estimate": p2 - p1, "ci95": [lo, hi], "p_value": min(1.0, 2 * max(tail, 1.0 / resamples))}


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test for paired binary outcomes (same examples, two conditions)."""
    a = torch.as_tensor(correct_a).bool().cpu()
    b = torch.as_tensor(correct_b).bool().cpu()
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}
