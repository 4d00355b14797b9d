"""Power of the preregistered primary tests (docs/PREREGISTRATION.md), from the committed runs' seed spread.

    python scripts/power.py

Reads results/extension/ext_{pilot,10m}_n2000000/seed*/eval.json (N = 2,000,000, three seeds a scale), takes
each scale's mean and seed standard deviation of exact_match, and simulates each primary test with 8 seeds a
scale (normal seed-to-seed variation with those spreads): power = the share of simulated studies whose p is
below Holm's first threshold, alpha / m with m = the family's size (the strictest step: a lower bound on the
power under Holm). Every number is printed; the preregistration quotes this output.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from src import stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "results" / "extension"
SCALES = {"pilot": "ext_pilot_n2000000", "10M": "ext_10m_n2000000"}
SEEDS_PER_SCALE = 8
FAMILY_SIZE = 5  # H1 flat, H1 paren, H2, H3 pilot, H3 10M
ALPHA = 0.05
SIMULATIONS = 20_000
SMALLEST_EFFECT = 0.05  # exact_match, absolute: the smallest difference the study means to detect


def committed() -> dict:
    out = {}
    for scale, config in SCALES.items():
        rows = []
        for path in sorted((ROOT / config).glob("seed*/eval.json")):
            m = json.loads(path.read_text())["metrics"]
            rows.append({"seed": path.parent.name, "flat": m["test_flat"]["exact_match"],
                         "paren": m["test_paren"]["exact_match"],
                         "bracket_cost": m["test_paren_matched"]["exact_match"] - m["test_flat"]["exact_match"]})
        out[scale] = rows
    return out


def power_welch(effect: float, sd_a: float, sd_b: float, rng, n=SEEDS_PER_SCALE, sims=SIMULATIONS) -> float:
    return stats.power_welch(effect, sd_a, sd_b, rng, n, n, sims, ALPHA / FAMILY_SIZE)


def power_one_sample(effect: float, sd: float, rng, n=SEEDS_PER_SCALE, sims=SIMULATIONS) -> float:
    return stats.power_one_sample(effect, sd, rng, n, sims, ALPHA / FAMILY_SIZE)


def power_permutation(effect: float, sd: float, rng, n=SEEDS_PER_SCALE, sims=2_000) -> tuple[float, float]:
    """Exact two-sided permutation test of the difference in means, all C(2n, n) splits; (power, floor)."""
    return stats.power_permutation(effect, sd, sd, rng, n, n, sims, ALPHA / FAMILY_SIZE)


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(prog="python scripts/power.py", description=__doc__.split("\n\n")[0],
                            epilog="Takes no options; prints every figure.").parse_args(argv)
    rng = np.random.default_rng(0)
    data = committed()
    spread = {}
    for scale, rows in data.items():
        print(f"{scale}: " + ", ".join(f"{r['seed']} flat {r['flat']:.4f} paren {r['paren']:.4f} "
                                       f"matched-flat {r['bracket_cost']:+.4f}" for r in rows))
        spread[scale] = {k: (statistics.mean(r[k] for r in rows), statistics.stdev(r[k] for r in rows))
                         for k in ("flat", "paren", "bracket_cost")}
        for k, (m, s) in spread[scale].items():
            print(f"  {k:<13} mean {m:+.4f}  seed sd {s:.4f}")
    print(f"\nfamily: {FAMILY_SIZE} tests, Holm, alpha {ALPHA}; power at the first threshold {ALPHA / FAMILY_SIZE:.3g}, "
          f"{SEEDS_PER_SCALE} seeds a scale, {SIMULATIONS} simulated studies (permutation: 2,000)")
    for k in ("flat", "paren"):
        (mp, sp), (ml, sl) = spread["pilot"][k], spread["10M"][k]
        observed = ml - mp
        print(f"H1 {k}: 10M - pilot observed {observed:+.4f}; Welch power at the observed difference "
              f"{power_welch(observed, sp, sl, rng):.3f}, at {SMALLEST_EFFECT} {power_welch(SMALLEST_EFFECT, sp, sl, rng):.3f}, "
              f"at {SMALLEST_EFFECT} with both sds at the pilot's {power_welch(SMALLEST_EFFECT, sp, sp, rng):.3f}")
    for scale in ("pilot", "10M"):
        sd = max(spread["pilot"]["bracket_cost"][1], spread["10M"]["bracket_cost"][1], spread[scale]["flat"][1])
        print(f"H3 {scale}: one-sample t over seeds of the per-seed precedence cost; sd taken as {sd:.4f} (the largest "
              f"seed sd of the matched bracket cost at either scale and of this scale's test_flat); power at "
              f"{SMALLEST_EFFECT}: {power_one_sample(SMALLEST_EFFECT, sd, rng):.3f}, at 0.03: "
              f"{power_one_sample(0.03, sd, rng):.3f}")
    for effect, sd in ((0.25, 0.125), (0.25, 0.25), (1 / 6, 0.125)):
        power, floor = power_permutation(effect, sd, rng)
        print(f"H2: exact permutation test, 8 vs 8 seeds (floor {floor:.3g}; floor x {FAMILY_SIZE} = "
              f"{floor * FAMILY_SIZE:.3g}); assumed seed sd {sd:.3f} of the first-reach depth, effect {effect:.3f}: "
              f"power {power:.3f}")


if __name__ == "__main__":
    main()
