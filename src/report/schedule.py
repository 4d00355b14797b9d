"""The chosen schedule over three seeds a scale: what the study's configs reach, against the 1x runs and the targets.

    python -m src.report.schedule [--study results/study] [--extension results/extension] [--out results/extension]

Reads seeds 42, 123 and 7 of study_pilot and study_10m under --study (each seed's eval.json, summary.json and
metrics.jsonl, as scripts/study.sh copies them; X.json.gz is read too) and, for comparison, the extension's 1x
runs at N = 2,000,000 (--extension: extension.json for their 3-seed means, ext_<scale>_n2000000/seed<S>/
metrics.jsonl for their validation curves). The three seeds are those the 1x runs have, so the two budgets
are compared seed for seed.

Per scale: exact_match on test_flat, test_paren and test_depth3, on the whole files and on their near-twin-free
parts, mean over the seeds with its 95% t interval; the 1x mean beside it; for the 10M model the targets the
schedule was chosen to reach and the distance to each. "More steps": the change from 1x to the chosen schedule and a
straight line in log steps through those two means, read one doubling further. It is an extrapolation from two points (and the 1x runs
trained on a set that still held near twins of test items), printed to say what the curve suggests, not as a
measurement. The validation curves say whether a run was still improving when it stopped: the epoch of each
seed's best validation exact_match, and the mean change over its last four epochs.

Writes OUT/SCHEDULE.md, OUT/schedule.json (schema schedule/1, every number of SCHEDULE.md) and
OUT/schedule_val.png (validation exact_match against steps: the three seeds of each scale at the chosen schedule and at 1x).
A missing seed or file is a one-line error naming it and the command that makes it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from src import stats
from src.cli import ArgumentParser, path_arg
from src.errors import UserError, run_main
from src.plotting import png_bytes, pyplot
from src.report.curves import metrics_rows
from src.report.study import TARGETS, read_seed_files
from src.rundir.atomic import atomic_write_bytes, atomic_write_text
from src.rundir.paths import check_output_dir
from src.rundir.results import SCHEMAS, evaluated, read_result, rounded
from src.text import shown

SCHEMA = SCHEMAS["schedule"]
SCALES = {"pilot": ("study_pilot", "ext_pilot_n2000000"), "10M": ("study_10m", "ext_10m_n2000000")}
SEEDS = (42, 123, 7)
SPLITS = ("test_flat", "test_paren", "test_depth3")
ONE_X_STEPS = 125_008  # the extension's N = 2,000,000 runs: 16 epochs of batch 256
LAST_EPOCHS = 4  # the mean change of validation exact_match over a run's last this-many epochs
STUDY_HINT = "SEEDS=42,123,7 SCALES=... bash scripts/study.sh (results/study/PLAN.md)"


def val_curve(metrics: Path) -> tuple[list[int], list[float]]:
    """(steps, validation exact_match) of each evaluated epoch of a metrics.jsonl (none when it is missing)."""
    rows = evaluated(metrics_rows(metrics))
    return [r["step"] for r in rows], [r["val"]["exact_match"] for r in rows]


def read_seed(study: Path, config: str, seed: int) -> dict:
    """One study seed at the chosen schedule: its test figures, card, steps and validation curve."""
    d = study / config / f"seed{seed}"
    if not d.is_dir():
        raise UserError(f"{shown(d)}: no such directory: seed {seed} of {config} is not in yet; train it with `{STUDY_HINT}`")
    files = read_seed_files(d, config, seed, ("summary", "eval"))
    summary, ev = files["summary"], files["eval"]
    whole, unseen = {}, {}
    for split in SPLITS:
        try:
            whole[split] = float(ev["metrics"][split]["exact_match"])
            part = ev["near_twin_free"]["splits"][split]["unseen"]["exact_match"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{shown(d / 'eval.json')}: no exact_match of {split} (metrics, near_twin_free); "
                            "regenerate it with `python -m src.analysis.evaluate --run RUN`") from None
        unseen[split] = None if part is None else float(part)
    rows = metrics_rows(d / "metrics.jsonl")
    steps, val = [r["step"] for r in evaluated(rows)], [r["val"]["exact_match"] for r in evaluated(rows)]
    if not val:
        raise UserError(f"{shown(d / 'metrics.jsonl')}: missing or without an evaluated epoch; copy the run's "
                        "metrics.jsonl there (scripts/study.sh does)")
    last = val[-LAST_EPOCHS:]
    epochs = max(r["epoch"] for r in rows)
    return {"seed": seed, "gpu_name": summary.get("gpu_name"), "steps": summary.get("steps"),
            "epochs": epochs, "best_epoch": summary.get("best_epoch"),
            "val_last": val[-1], "val_best": max(val), "val_change_last_epochs": (last[-1] - last[0]) / (len(last) - 1)
            if len(last) > 1 else None,
            "train_loss_by_quarter": {r["epoch"]: r["train_loss"] for r in rows
                                      if r["epoch"] in _quarters(epochs) and r.get("train_loss") is not None},
            "whole": whole, "unseen": unseen, "val_curve": {"steps": steps, "exact_match": val}}


def _quarters(epochs: int) -> tuple[int, ...]:
    """The epochs at a quarter, half, three quarters and the end of a schedule of `epochs`."""
    return tuple(sorted({max(1, round(epochs * q / 4)) for q in (1, 2, 3, 4)}))


def one_x(extension: Path, ext_config: str) -> dict:
    """{split: {mean, ci95, seeds, per_seed: {seed: exact_match}}} of the extension's 1x config, from extension.json."""
    ext = read_result(extension / "extension.json", "extension")
    try:
        splits = ext["configs"][ext_config]["splits"]
        return {split: {"mean": splits[split]["mean"], "ci95": splits[split]["ci95"], "seeds": splits[split]["seeds"],
                        "per_seed": {int(c["seed"]): float(c["exact_match"]) for c in splits[split]["per_seed"]}}
                for split in SPLITS}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{shown(extension / 'extension.json')}: no 3-seed figures of {ext_config} ({', '.join(SPLITS)}); "
                        f"regenerate it with `python -m src.report.scaling --out {shown(extension)}`") from None


def summarise(study: Path, extension: Path) -> dict:
    scales = {}
    for scale, (config, ext_config) in SCALES.items():
        seeds = [read_seed(study, config, s) for s in SEEDS]
        steps = {r["steps"] for r in seeds}
        if len(steps) != 1 or not isinstance(next(iter(steps)), int):
            raise UserError(f"{shown(study / config)}: seeds {', '.join(map(str, SEEDS))} ran "
                            f"{', '.join(str(r['steps']) for r in seeds)} steps; the figures need one schedule per scale")
        base = one_x(extension, ext_config)
        doublings = math.log2(next(iter(steps)) / ONE_X_STEPS)  # from 1x to the chosen schedule
        rows = {}
        for split in SPLITS:
            whole = stats.mean_interval([r["whole"][split] for r in seeds])
            parts = [r["unseen"][split] for r in seeds]
            unseen = stats.mean_interval(parts) if None not in parts else None
            gain = whole["mean"] - base[split]["mean"]
            missing = [r["seed"] for r in seeds if r["seed"] not in base[split]["per_seed"]]
            if missing:
                raise UserError(f"{shown(extension / 'extension.json')}: {ext_config} has no {split} figure of seed(s) "
                                f"{', '.join(map(str, missing))}; the change from 1x is paired by seed")
            paired = stats.mean_interval([r["whole"][split] - base[split]["per_seed"][r["seed"]] for r in seeds])
            row = {"whole": whole, "unseen": unseen, "one_x": base[split], "change_from_one_x": gain,
                   "change_from_one_x_paired": paired,
                   "next_doubling_extrapolated": min(1.0, whole["mean"] + gain / doublings)
                   if gain > 0 and doublings > 0 else None}
            target = TARGETS.get(scale, {}).get(split)
            if target is not None:
                row["target"] = target
                row["minus_target"] = whole["mean"] - target
                row["unseen_minus_target"] = unseen["mean"] - target if unseen else None
            rows[split] = row
        changes = [r["val_change_last_epochs"] for r in seeds if r["val_change_last_epochs"] is not None]
        scales[scale] = {"config": config, "one_x_config": ext_config, "steps": steps.pop(), "seeds": seeds, "splits": rows,
                         "best_epoch_last": sum(r["best_epoch"] == r["epochs"] for r in seeds),
                         "val_change_last_epochs": stats.mean_interval(changes)}
    return {"schema": SCHEMA, "study": str(study), "extension": str(extension), "seeds": list(SEEDS),
            "one_x_steps": ONE_X_STEPS,
            "last_epochs": LAST_EPOCHS, "interval": "95% t interval over seeds (df = seeds - 1), not clipped",
            "scales": scales}


def _ci(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("mean") is None:
        return "—"
    lo, hi = m["ci95"] if m.get("ci95") else (math.nan, math.nan)
    return f"{m['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _signed_ci(m: dict, digits: int = 3) -> str:
    lo, hi = m["ci95"]
    return f"{m['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def markdown(doc: dict) -> str:
    seeds = ", ".join(map(str, doc["seeds"]))
    one = doc["one_x_steps"]
    chosen = "; ".join(f"{scale} {s['steps']:,} ({s['steps'] / one:g}x)" for scale, s in doc["scales"].items())
    md = ["# The chosen schedule, three seeds a scale", "",
          "Generated by `python -m src.report.schedule` from the study's runs (`results/study/<config>/seed<S>/`); every "
          f"number is in `schedule.json`. Schedule, in steps of batch 256 (and as a multiple of the extension's 1x of "
          f"{one:,}): {chosen}, chosen on validation before any test file was read (results/schedules/README.md). "
          f"Seeds {seeds}, trained on the near-twin-free set of 2,000,000 expressions; the 1x column is the extension's "
          "committed runs of the same seeds (padded rows, a training set that still held near twins of test items).", "",
          f"exact_match, mean over seeds [{doc['interval']}].", "",
          "| scale | split | 1x | chosen | chosen, without near twins | target | chosen minus target |"
          " chosen minus 1x, paired by seed | straight line in log steps, one doubling on |",
          "|---|---|---|---|---|---|---|---|---|"]
    for scale, s in doc["scales"].items():
        for split, r in s["splits"].items():
            target = f"{r['target']:.2f}" if "target" in r else "—"
            short = f"{r['minus_target']:+.3f}" if "target" in r else "—"
            line = ("— (mean below 1x)" if r["next_doubling_extrapolated"] is None
                    else f"{r['next_doubling_extrapolated']:.3f} (extrapolated)")
            md.append(f"| {scale} | {split} | {_ci(r['one_x'])} | **{_ci(r['whole'])}** | {_ci(r['unseen'])} | {target} | "
                      f"{short} | {_signed_ci(r['change_from_one_x_paired'])} | {line} |")
    md += ["", "Descriptive, outside the study's preregistered tests. 'Chosen minus 1x' is the mean of the per-seed "
           "differences with its 95% t interval (2 degrees of freedom with three seeds): an interval that holds 0 does "
           "not decide the direction. The 1x runs differ from the chosen ones in more than steps (padded rows, a "
           "training set with near twins, so another order of examples). The last column continues the line through "
           "the 1x and the chosen schedule's means for one more doubling, where the chosen schedule gained on 1x: an "
           "extrapolation from two points, not a measurement.", "",
           "## Per seed", "",
           f"Validation is exact_match on the 200 validation items, every epoch; 'last {doc['last_epochs']} epochs' is its "
           "mean change per epoch over them.", "",
           "| scale | seed | GPU | steps | best validation epoch (of) | validation, last epoch | last epochs, change per epoch |"
           " training loss at a quarter, half, three quarters, end | test_flat | test_paren | test_depth3 |",
           "|---|---|---|---:|---|---|---|---|---|---|---|"]
    for scale, s in doc["scales"].items():
        for r in s["seeds"]:
            change = "—" if r["val_change_last_epochs"] is None else f"{r['val_change_last_epochs']:+.4f}"
            md.append(f"| {scale} | {r['seed']} | {r['gpu_name']} | {r['steps']:,} | {r['best_epoch']} ({r['epochs']}) | "
                      f"{r['val_last']:.3f} | {change} | "
                      + ", ".join(f"{v:.2f}" for v in r["train_loss_by_quarter"].values()) + " | " + " | ".join(f"{r['whole'][k]:.4f}" for k in SPLITS) + " |")
    md += ["", "## Still improving?", ""]
    for scale, s in doc["scales"].items():
        n = len(s["seeds"])
        md.append(f"- **{scale}**: the best validation epoch is the last in {s['best_epoch_last']} of {n} seeds; over the "
                  f"last {doc['last_epochs']} epochs validation exact_match changed by "
                  f"{_ci(s['val_change_last_epochs'], 4)} per epoch (mean over seeds; 200 items, so one item is 0.005).")
    md += ["", "![validation exact_match against steps, three seeds a scale at 1x and at the chosen schedule](schedule_val.png)",
           ""]
    return "\n".join(md)


def figure(doc: dict, extension: Path) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(doc["scales"]), figsize=(11, 4.2), sharey=True)
    for ax, (scale, s) in zip(axes, doc["scales"].items()):
        for i, seed in enumerate(doc["seeds"]):
            steps, em = val_curve(extension / s["one_x_config"] / f"seed{seed}" / "metrics.jsonl")
            ax.plot(steps, em, color="0.6", lw=0.8, label="1x, extension runs" if i == 0 else None)
        for r in s["seeds"]:
            c = r["val_curve"]
            ax.plot(c["steps"], c["exact_match"], lw=1.4, label=f"chosen ({r['steps'] / doc['one_x_steps']:g}x), seed {r['seed']}")
        ax.set_title(f"{scale}: validation exact_match (200 items), seeds {', '.join(map(str, doc['seeds']))}", fontsize=10)
    return val_axes_png(fig, axes)


def val_axes_png(fig, axes) -> bytes:
    """The PNG of a row of validation-curve panels, each given its axis label, grid and legend."""
    for ax in axes:
        ax.set_xlabel("optimizer steps (batch 256)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("validation exact_match")
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


def parse_args(argv):
    p = ArgumentParser.from_doc("python -m src.report.schedule", __doc__)
    p.add_argument("--study", type=path_arg, default=Path("results/study"),
                   help="the study's results: STUDY/<config>/seed<S>/ (default: %(default)s)")
    p.add_argument("--extension", type=path_arg, default=Path("results/extension"),
                   help="the extension's results: extension.json and its 1x runs (default: %(default)s)")
    p.add_argument("--out", type=path_arg, default=Path("results/extension"),
                   help="directory for SCHEDULE.md, schedule.json and schedule_val.png (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = check_output_dir(str(args.out), "--out")
    doc = summarise(args.study, args.extension)
    png = figure(doc, args.extension)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "schedule_val.png", png)
    atomic_write_text(out / "schedule.json", json.dumps(rounded(doc), indent=1) + "\n")
    atomic_write_text(out / "SCHEDULE.md", markdown(doc))
    for scale, s in doc["scales"].items():
        print(f"{scale}: " + ", ".join(f"{k} {_ci(r['whole'])}" for k, r in s["splits"].items()))
    print(f"wrote {shown(out / 'SCHEDULE.md')}, schedule.json and schedule_val.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
