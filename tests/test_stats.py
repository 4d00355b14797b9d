"""The statistics module against known values: exact tests, the t distribution, Holm, floors."""

import math

import pytest
import torch

from src import stats


def test_mcnemar_on_known_tables():
    a = torch.tensor([1] * 10 + [0] * 5)          # b = 0 (a right, b wrong) ... built as c = 10 discordant one way
    b = torch.tensor([0] * 10 + [0] * 5)
    r = stats.mcnemar_exact(b, a)                  # only_b = 10, only_a = 0
    assert (r["only_a"], r["only_b"]) == (0, 10)
    assert r["p_value"] == pytest.approx(2 * 0.5**10) == pytest.approx(0.001953125)
    assert r["test"] == "mcnemar_exact" and r["discordant"] == 10 and r["p_floor"] == 2.0 ** (1 - 10)
    same = stats.mcnemar_exact(torch.tensor([1, 0, 1, 0]), torch.tensor([0, 1, 1, 0]))  # b = c = 1
    assert same["p_value"] == 1.0
    assert stats.mcnemar_exact(torch.ones(5), torch.ones(5))["p_value"] == 1.0  # no discordant pair


@pytest.mark.parametrize("n", [1, 7, 100, 999, 2000])
def test_binomial_tail_is_exact_for_large_n(n):
    from fractions import Fraction
    k = n // 3
    exact = min(Fraction(1), 2 * sum(Fraction(math.comb(n, i), 2**n) for i in range(k + 1)))
    assert stats.binomial_two_sided(k, n) == float(exact)
    assert stats.binomial_two_sided(n - k, n) == float(exact)  # symmetric


def test_sign_test_drops_zeros():
    r = stats.sign_test_exact(torch.tensor([0, 0, 1, 2, 1, -1, 0]))
    assert (r["positive"], r["negative"]) == (3, 1)
    assert r["p_value"] == pytest.approx(stats.binomial_two_sided(1, 4)) == pytest.approx(0.625)


@pytest.mark.parametrize("t, df, p", [(2.0, 10, 0.073388), (0.5, 3, 0.651448), (1.96, 1e6, 0.049996),
                                      (3.0, 1, 0.204833)])
def test_t_distribution_matches_tables(t, df, p):
    assert stats.t_two_sided_p(t, df) == pytest.approx(p, abs=2e-6)
    assert stats.t_two_sided_p(-t, df) == stats.t_two_sided_p(t, df)


def test_t_quantile():
    assert stats.t_quantile_975(10) == pytest.approx(2.228139, abs=1e-5)
    assert stats.t_quantile_975(1999) == pytest.approx(1.961151, abs=1e-5)


def test_paired_contrast_is_the_paired_t_test_for_a_constant_denominator():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, generator=gen, dtype=torch.float64)
    b = a + 0.1 + 0.5 * torch.randn(500, generator=gen, dtype=torch.float64)
    one = torch.ones(500, dtype=torch.float64)
    r = stats.paired_contrast([(-1, a, one), (1, b, one)])
    d = b - a
    t = d.mean() / (d.std() / math.sqrt(500))
    assert r["estimate"] == pytest.approx(d.mean().item())
    assert r["t"] == pytest.approx(t.item())
    assert r["p_value"] == pytest.approx(stats.t_two_sided_p(t.item(), 499))
    half = stats.t_quantile_975(499) * d.std().item() / math.sqrt(500)
    assert r["ci95"] == pytest.approx([d.mean().item() - half, d.mean().item() + half])
    assert r["test"] == "paired_t" and r["p_floor"] == 0.0


def test_paired_contrast_of_identical_scores_is_exactly_null():
    x, den = torch.rand(50, dtype=torch.float64), torch.randint(1, 4, (50,)).double()
    r = stats.paired_contrast([(-1, x, den), (1, x, den)])
    assert r["estimate"] == 0.0 and r["p_value"] == 1.0 and r["ci95"] == [0.0, 0.0]


def test_paired_contrast_ratio_estimate_and_four_terms():
    gen = torch.Generator().manual_seed(1)
    den = torch.randint(2, 6, (300,), generator=gen).double()
    parts = [torch.rand(300, generator=gen, dtype=torch.float64) * den for _ in range(4)]
    w = [1, -1, -1, 1]
    r = stats.paired_contrast([(wi, p, den) for wi, p in zip(w, parts)])
    expected = sum(wi * (p.sum() / den.sum()).item() for wi, p in zip(w, parts))
    assert r["estimate"] == pytest.approx(expected)
    assert r["ci95"][0] < r["estimate"] < r["ci95"][1]


def test_holm_on_a_known_vector():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.03, 0.02]) == pytest.approx([0.04, 0.04])  # made monotone
    assert stats.holm([]) == []


def test_bootstrap_floor_is_recorded_and_never_undercut():
    x = torch.zeros(200, dtype=torch.float64)
    y = torch.ones(200, dtype=torch.float64)
    one = torch.ones(200, dtype=torch.float64)
    r = stats.paired_bootstrap(x, one, y, one, resamples=500)  # every resample is +1: the smallest p possible
    assert r["p_floor"] == stats.bootstrap_p_floor(500) == pytest.approx(2 / 500)
    assert r["p_value"] == pytest.approx(r["p_floor"])


def test_family_applies_holm_and_declares_itself():
    fam = stats.Family("demo")
    entries = [{"p_value": p, "p_floor": 0.0} for p in (0.01, 0.04, 0.03, 0.005)]
    for i, e in enumerate(entries):
        fam.add(f"m{i}", e)
    declared = fam.close()
    assert declared == {"name": "demo", "size": 4, "correction": "holm", "alpha": 0.05, "p_floor_max": 0.0,
                        "resolution_floor_max": 0.0, "members": ["m0", "m1", "m2", "m3"],
                        "verdict": "2 of 4 significant (Holm over 4, alpha 0.05)", "decidable": True,
                        "first_threshold": 0.0125, "largest_d": None}
    assert [e["p_adjusted"] for e in entries] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [e["significant"] for e in entries] == [True, False, False, True]
    with pytest.raises(ValueError, match="added twice"):
        fam.add("m0", {"p_value": 0.1, "p_floor": 0.0})


def test_family_refuses_a_floor_that_cannot_reach_its_threshold():
    # the audit's case: a bootstrap of 2,000 resamples (floor 0.001) over 16 heads
    fam = stats.Family("bootstrap_heads")
    for i in range(16):
        fam.add(f"h{i}", {"p_value": 0.001, "p_floor": stats.bootstrap_p_floor(2000)})
    with pytest.raises(ValueError, match="p_floor"):
        fam.close()
    ok = stats.Family("bootstrap_many")
    for i in range(16):
        ok.add(f"h{i}", {"p_value": 0.5, "p_floor": stats.bootstrap_p_floor(1_000_000)})
    assert ok.close()["resolution_floor_max"] * 16 <= 0.005


def test_welch_t_matches_the_reference_values():
    # scipy.stats.ttest_ind(b, a, equal_var=False): t 3.6742346141747673, p 0.021311641128756713, df 4
    # and t -16.3379898137741, p 0.00270136414039214, df 2.1514217276677385
    r = stats.welch_t([1, 2, 3], [4, 5, 6])
    assert (r["test"], r["p_floor"], r["estimate"]) == ("welch_t", 0.0, 3.0)
    assert r["t"] == pytest.approx(3.6742346141747673, rel=1e-12) and r["df"] == pytest.approx(4.0)
    assert r["p_value"] == pytest.approx(0.021311641128756713, rel=1e-9)
    assert r["ci95"][0] < 3.0 < r["ci95"][1]
    r = stats.welch_t([0.878, 0.871, 0.875], [0.684, 0.700, 0.72])
    assert r["t"] == pytest.approx(-16.3379898137741, rel=1e-10)
    assert r["df"] == pytest.approx(2.1514217276677385, rel=1e-10)
    assert r["p_value"] == pytest.approx(0.00270136414039214, rel=1e-8)


def test_welch_t_without_spread_or_replicates():
    assert stats.welch_t([0.5, 0.5], [0.5, 0.5])["p_value"] == 1.0
    assert stats.welch_t([0.5, 0.5], [0.6, 0.6])["p_value"] == 0.0
    with pytest.raises(ValueError, match="two values or more"):
        stats.welch_t([0.5], [0.6, 0.7])


def test_one_sample_t_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    values = [0.031, -0.004, 0.052, 0.017, 0.009, 0.044, -0.012, 0.025]
    r = stats.one_sample_t(values)
    ref = scipy_stats.ttest_1samp(values, 0.0)
    assert (r["test"], r["p_floor"], r["df"], r["n"]) == ("one_sample_t", 0.0, 7, 8)
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-12) and r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    lo, hi = ref.confidence_interval(0.95)
    assert r["ci95"] == pytest.approx([lo, hi], rel=1e-9)
    assert r["estimate"] == pytest.approx(sum(values) / 8)
    assert stats.one_sample_t([0.25, 0.25, 0.25])["p_value"] == 0.0 and stats.one_sample_t([0.0, 0.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="two values or more"):
        stats.one_sample_t([0.1])


def test_mean_interval_is_the_t_interval_over_replicates():
    m = stats.mean_interval([1.0, 2.0, 3.0])
    half = stats.t_quantile_975(2) * 1.0 / math.sqrt(3)  # sd 1
    assert m["mean"] == 2.0 and m["sd"] == 1.0 and m["ci95"] == pytest.approx([2 - half, 2 + half])
    assert stats.mean_interval([0.4])["ci95"] is None and stats.mean_interval([])["mean"] is None


def test_permutation_test_hand_computed_and_its_floors():
    # 3 against 3 wholly apart: of the C(6, 3) = 20 splits only the observed one and its swap reach |3|
    r = stats.permutation_test([0, 1, 2], [3, 4, 5])
    assert (r["test"], r["splits"], r["estimate"]) == ("permutation_exact", 20, 3.0)
    assert r["p_value"] == pytest.approx(2 / 20) and r["p_floor"] == pytest.approx(2 / 20)
    assert r["p_floor_data"] == pytest.approx(2 / 20)
    # ties: with values 0, 0, 1, 1 every split is at most as extreme as the observed: p = 1 of the data floor
    tied = stats.permutation_test([0, 0], [1, 1])
    assert tied["p_value"] == pytest.approx(2 / 6) and tied["p_floor_data"] == pytest.approx(2 / 6)
    assert stats.permutation_test([1, 1, 1], [1, 1, 1])["p_value"] == 1.0
    # the registered design: 8 against 8, floor 2 / 12,870
    assert stats.permutation_floor(8, 8) == pytest.approx(1.554e-4, rel=1e-3)
    assert stats.permutation_floor(7, 8) == pytest.approx(1 / 6435)  # unequal groups: no mirror split
    with pytest.raises(ValueError, match="splits"):
        stats.permutation_test(list(range(13)), list(range(13)))


def test_permutation_test_matches_scipy_and_brute_force():
    np = pytest.importorskip("numpy")
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 0.2, 6).round(3).tolist(), rng.normal(0.7, 0.2, 6).round(3).tolist()
    r = stats.permutation_test(a, b)
    ref = scipy_stats.permutation_test((b, a), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                                       n_resamples=np.inf, alternative="two-sided")
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)  # equal groups: a symmetric null, scipy's 2 x one tail
    # unequal groups: every split counted by hand
    import itertools
    a, b = [0.1, 0.4, 0.35, 0.2, 0.3], [0.5, 0.45, 0.6]
    pooled, observed = a + b, abs(np.mean(b) - np.mean(a))
    count = 0
    for members in itertools.combinations(range(8), 3):
        gb = [pooled[i] for i in members]
        ga = [pooled[i] for i in range(8) if i not in members]
        count += abs(np.mean(gb) - np.mean(ga)) >= observed - 1e-12
    assert stats.permutation_test(a, b)["p_value"] == pytest.approx(count / 56)


def test_permutation_interval_inverts_the_test():
    a, b = [0.25, 0.5, 0.5, 0.75, 0.25, 0.5, 0.5, 0.25], [0.5, 0.667, 0.833, 0.667, 0.5, 0.667, 0.833, 0.667]
    r = stats.permutation_test(a, b)
    lo, hi = r["ci95"]
    assert lo < r["estimate"] < hi
    for bound, outward in ((lo, -1), (hi, 1)):  # inside the bound the shifted test keeps p > 0.05, outside not
        assert stats.permutation_test(a, [v - (bound - outward * 1e-6) for v in b])["p_value"] > 0.05
        assert stats.permutation_test(a, [v - (bound + outward * 1e-6) for v in b])["p_value"] <= 0.05
    # too few replicates to reject anything at 0.05: the interval is unbounded
    assert stats.permutation_test([0.1, 0.2], [0.5, 0.6])["ci95"] == [None, None]


def test_power_by_simulation_on_cases_with_a_known_answer():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    # a huge effect is always found, no effect at the threshold's rate
    assert stats.power_welch(10.0, 0.1, 0.1, rng, 8, 8, 200, 0.01) == 1.0
    assert stats.power_one_sample(10.0, 0.1, rng, 8, 200, 0.01) == 1.0
    null = stats.power_one_sample(0.0, 1.0, rng, 8, 4000, 0.05)
    assert 0.035 < null < 0.065
    power, floor = stats.power_permutation(10.0, 0.1, 0.1, rng, 4, 4, 50, 0.05)
    assert power == 1.0 and floor == pytest.approx(2 / 70)
    assert stats.power_permutation(10.0, 0.1, 0.1, rng, 3, 3, 20, 0.05)[0] == 0.0  # floor 0.1: never below 0.05
