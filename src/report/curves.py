"""Training curves of committed runs: a seed's metrics.jsonl read into epochs, training loss and validation
exact_match, a figure of every seed of several scales, and where each curve falls fastest.

A run's final figures say where it ended; its curve says whether it had finished learning there. Both
report commands that read committed runs (src.report.study, src.report.schedule) read metrics.jsonl here.
"""

from __future__ import annotations

from pathlib import Path

from src.errors import UserError
from src.plotting import pyplot
from src.rundir.results import evaluated, metrics_row_problem, read_metrics
from src.text import plain_png, plain_text, shown

FALL_FROM_EPOCH = 3  # the first two epochs fall steeply in every run; the fall looked for comes later


def metrics_rows(metrics: Path) -> list[dict]:
    """The rows of a metrics.jsonl (none when it is missing), a warning for each line that cannot be used."""
    rows, problems = read_metrics(metrics, metrics_row_problem)
    for problem in problems:
        print(f"warning: {problem}")
    return rows


def training_curve(seed_dir: Path, hint: str) -> dict:
    """{epoch, train_loss, val_exact_match}: one entry per epoch of SEED_DIR/metrics.jsonl (val None where the
    epoch was not evaluated, train_loss None where src.train wrote a non-finite loss as null). A missing file or
    one without an epoch is an error whose fix is `hint`."""
    path = seed_dir / "metrics.jsonl"
    rows = [r for r in metrics_rows(path) if isinstance(r.get("epoch"), int)]
    if not rows:
        raise UserError(f"{shown(path)}: missing or without an epoch; copy the run's metrics.jsonl there ({hint})")
    rows.sort(key=lambda r: r["epoch"])
    val = {id(r) for r in evaluated(rows)}
    return {"epoch": [r["epoch"] for r in rows], "train_loss": [r.get("train_loss") for r in rows],
            "val_exact_match": [r["val"]["exact_match"] if id(r) in val else None for r in rows]}


def steepest_fall(curve: dict, from_epoch: int = FALL_FROM_EPOCH) -> dict | None:
    """The epoch (from `from_epoch` on) whose training loss fell most below the epoch before it, and by how much;
    None when fewer than two such epochs have a loss."""
    pairs = [(e, prev - loss) for (pe, prev), (e, loss) in
             zip(zip(curve["epoch"], curve["train_loss"]), zip(curve["epoch"][1:], curve["train_loss"][1:]))
             if e >= from_epoch and e == pe + 1 and prev is not None and loss is not None]
    if not pairs:
        return None
    epoch, fall = max(pairs, key=lambda p: p[1])
    return {"epoch": epoch, "fall": fall}


def summary(curve: dict) -> dict:
    """What a table shows of one curve: its last epoch, last training loss, last and best validation
    exact_match, and its steepest fall."""
    val = [(e, v) for e, v in zip(curve["epoch"], curve["val_exact_match"]) if v is not None]
    best = max(val, key=lambda p: p[1]) if val else (None, None)
    return {"epochs": curve["epoch"][-1], "train_loss_last": curve["train_loss"][-1],
            "val_last": val[-1][1] if val else None, "val_best": best[1], "val_best_epoch": best[0],
            "steepest_fall": steepest_fall(curve)}


@plain_text()
def curves_figure(curves: dict[str, list[tuple[int, dict]]], title: str) -> bytes:
    """Training loss and validation exact_match against the epoch: {scale: [(seed, curve)]}, one thin line per
    seed, one colour per scale."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8))
    for i, (scale, seeds) in enumerate(curves.items()):
        for j, (seed, c) in enumerate(seeds):
            label = f"{scale} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})" if j == 0 else None
            for ax, key in zip(axes, ("train_loss", "val_exact_match")):
                pts = [(e, v) for e, v in zip(c["epoch"], c[key]) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), color=f"C{i}", lw=0.9, alpha=0.7, label=label)
    for ax, name in zip(axes, ("training loss", "validation exact_match")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_ylim(-0.02, 1.02)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return plain_png(fig, dpi=100)
