"""The schedule curves as one figure and one table: validation exact_match against optimizer steps.

    python scripts/schedule_figure.py [--out results/schedules]

Reads the schedule runs of results/schedules/ (ext_<scale>_n2000000_x<k>_metrics.jsonl and _eval.json: one
seed, packed rows, k times the extension's 125,008 steps) and the extension's committed 1x runs
(results/extension/ext_<scale>_n2000000/seed*/: padded rows, three seeds). Draws, per scale, each budget's
validation curve with the padded 1x seeds as thin grey lines (their spread is the yardstick of "learns as
well"), writes OUT/val_curves.png, and prints a Markdown table of every run's exact_match on each split
(selected checkpoint) with its 95% Wilson interval. The curves decide the schedule; the test columns are
printed after the choice and do not enter it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from src.plotting import pyplot  # noqa: E402
from src.report.schedule import val_axes_png, val_curve  # noqa: E402
from src.rundir.atomic import atomic_write_bytes  # noqa: E402

SCALES = ("pilot", "10m")
SHOWN = {"pilot": "pilot (0.66M)", "10m": "10M (10.65M)"}
SPLITS = ("val", "test_flat", "test_paren", "test_depth3")
PADDED_SEEDS = (42, 123, 7)


def schedule_runs(schedules: Path, scale: str) -> dict[str, Path]:
    """{'<k>x' or '<k>x <variant>': metrics.jsonl} of one scale's schedule runs, in budget order
    (ext_<scale>_n2000000_x<k>[_<variant>]_metrics.jsonl; a variant such as fp32 is a change of path)."""
    found = {}
    for path in schedules.glob(f"ext_{scale}_n2000000_x*_metrics.jsonl"):
        match = re.fullmatch(rf"ext_{scale}_n2000000_x(\d+)(?:_([a-z0-9]+))?_metrics\.jsonl", path.name)
        if match:
            k, variant = int(match.group(1)), match.group(2)
            found[(k, variant or "")] = (f"{k}x {variant}" if variant else f"{k}x", path)
    return dict(found[key] for key in sorted(found))


def budget_colours(runs: dict[str, dict[str, Path]]) -> dict[str, str]:
    """One matplotlib colour per budget label ('2x', '1x fp32', ...) over every scale, in budget order, so a
    budget has the same colour in both panels."""
    budgets = sorted({b for r in runs.values() for b in r}, key=lambda b: (int(b.split("x")[0]), b))
    return {b: f"C{i}" for i, b in enumerate(budgets)}


def scores(eval_json: Path) -> dict[str, str]:
    """{split: 'em [lo, hi]'} of one eval.json's selected checkpoint."""
    metrics = json.loads(eval_json.read_text())["metrics"]
    out = {}
    for split in SPLITS:
        m = metrics.get(split)
        if isinstance(m, dict) and "exact_match" in m:
            lo, hi = m["exact_match_ci95"]
            out[split] = f"{m['exact_match']:.3f} [{lo:.3f}, {hi:.3f}]"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "schedules",
                        help="where val_curves.png is written (default results/schedules)")
    parser.add_argument("--schedules", type=Path, default=REPO_ROOT / "results" / "schedules",
                        help="the schedule runs' files (default results/schedules)")
    parser.add_argument("--extension", type=Path, default=REPO_ROOT / "results" / "extension",
                        help="the extension's committed runs (default results/extension)")
    args = parser.parse_args(argv)

    plt = pyplot()
    fig, axes = plt.subplots(1, len(SCALES), figsize=(11, 4.2), sharey=True)
    rows = []
    runs = {scale: schedule_runs(args.schedules, scale) for scale in SCALES}
    colour = budget_colours(runs)
    for ax, scale in zip(axes, SCALES):
        for i, seed in enumerate(PADDED_SEEDS):
            run = args.extension / f"ext_{scale}_n2000000" / f"seed{seed}"
            steps, em = val_curve(run / "metrics.jsonl")
            ax.plot(steps, em, color="0.6", lw=0.8, label="1x padded, seeds 42/123/7" if i == 0 else None)
            if (run / "eval.json").is_file():
                rows.append((scale, "1x", "padded", seed, scores(run / "eval.json")))
        for budget, metrics in runs[scale].items():
            steps, em = val_curve(metrics)
            ax.plot(steps, em, lw=1.6, color=colour[budget], label=f"{budget} packed, seed 42")
            eval_json = metrics.with_name(metrics.name.replace("_metrics.jsonl", "_eval.json"))
            if eval_json.is_file():
                rows.append((scale, budget, "packed", 42, scores(eval_json)))
        ax.set_title(f"{SHOWN[scale]}: validation exact_match (200 items) by budget", fontsize=10)
    png = val_axes_png(fig, axes)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "val_curves.png", png)

    print("| scale | budget | rows | seed | " + " | ".join(SPLITS) + " |")
    print("|---|---|---|---:|" + "---|" * len(SPLITS))
    for scale, budget, path, seed, s in rows:
        print(f"| {SHOWN[scale]} | {budget} | {path} | {seed} | " + " | ".join(s.get(k, "") for k in SPLITS) + " |")
    print(f"wrote {args.out / 'val_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
