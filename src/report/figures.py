"""The report's figures, each rendered in memory as PNG bytes (None when there is nothing to draw):
training curves, probe accuracy against relative depth with the untrained control, each head's
bracket-specific ablation effect, and the attention roles of every head. The caller writes them
(src.rundir.atomic) once every figure and every number is ready, so a failure leaves no partial file."""

from __future__ import annotations

from src.plotting import pyplot
from src.text import plain_png
from src.report.compare import dig
from src.analysis.roles import ROLES
from src.rundir.results import evaluated


def step(row: dict) -> int:
    """Where a metrics row sits on the x axis: its optimizer step (its epoch in rows without one)."""
    return row.get("step", row["epoch"])


def training_curves(runs: list[tuple[str, list[dict]]]) -> bytes | None:
    """Loss (train and validation) and validation accuracies against optimizer step, one colour per run:
    the training loss of every epoch, the validation figures of the evaluated ones."""
    runs = [(label, rows, evaluated(rows)) for label, rows in runs]
    runs = [run for run in runs if run[2]]
    if not runs:
        return None
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for i, (label, rows, evals) in enumerate(runs):
        trained = [r for r in rows if r.get("train_loss") is not None]
        ax_loss.plot([step(r) for r in trained], [r["train_loss"] for r in trained], "--", color=f"C{i}",
                     label=f"{label} train")
        x = [step(r) for r in evals]
        ax_loss.plot(x, [r["val"]["loss"] for r in evals], "o-", color=f"C{i}", ms=3, label=f"{label} val")
        ax_acc.plot(x, [r["val"]["exact_match"] for r in evals], "o-", color=f"C{i}", ms=3, label=f"{label} exact_match")
        ax_acc.plot(x, [r["val"]["end_of_answer_acc"] for r in evals], "x:", color=f"C{i}",
                    label=f"{label} end_of_answer_acc")
    ax_loss.set(xlabel="optimizer step", ylabel="mean token cross-entropy", title="loss (all supervised positions)")
    ax_acc.set(xlabel="optimizer step", ylabel="validation accuracy", ylim=(-0.02, 1.02),
               title="exact_match (the task) vs end_of_answer_acc")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=6)
    fig.tight_layout()
    return plain_png(fig)


def probe_depth(aggs: dict) -> bytes | None:
    panels = [("binary", "test_paren"), ("exact", "test_paren"), ("binary", "test_depth3")]
    if not any(dig(a, "probe", "curves", t, s) for a in aggs.values() for t, s in panels):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100, sharey=True)
    for ax, (task, split) in zip(axes, panels):
        for i, (name, agg) in enumerate(aggs.items()):
            curve = dig(agg, "probe", "curves", task, split)
            if not curve:
                continue
            x = curve["relative_depth"]
            for model, style in (("trained", "o-"), ("control", "x--")):
                ax.plot(x, [c["mean"] for c in curve[model]], style, color=f"C{i}", label=f"{name} {model}")
                if curve[model][0]["n"] > 1:
                    ax.fill_between(x, [c["min"] for c in curve[model]], [c["max"] for c in curve[model]],
                                    color=f"C{i}", alpha=0.15 if model == "trained" else 0.07)
            if curve["majority"]["n"]:
                ax.axhline(curve["majority"]["mean"], color=f"C{i}", ls=":", lw=1, label=f"{name} majority class")
        ax.axhspan(0.95, 1.02, color="0.85", zorder=0, label="control ≥ 0.95: ceiling")
        ax.set_title(f"{task} on {split}", fontsize=9)
        ax.set_xlabel("relative depth (0 = embedding, 1 = last block)")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("probe accuracy (residual stream)")
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.suptitle("Depth probes: mean over seeds, band = range; dashed = untrained control", fontsize=9)
    fig.tight_layout()
    return plain_png(fig)


def head_bracket_effects(groups: dict) -> bytes | None:
    """Each head's answer_loss bracket_specificity (matched delta - flat delta) against its relative
    layer, both ablation modes, every seed; filled markers are significant after Holm."""
    runs = [(name, r) for name, rs in groups.items() for r in rs if dig(r, "ablation", "scan", "modes")]
    if not runs:
        return None
    plt = pyplot()
    modes = ("zero", "mean")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100, sharey=True)
    names = list(groups)
    for ax, mode in zip(axes, modes):
        labelled = set()
        for name, r in runs:
            i = names.index(name)
            rows = r["ablation"]["scan"]["modes"].get(mode, [])
            n_heads = r["ablation"]["num_heads"]
            for h in rows:
                e = h["bracket_specificity"]["answer_loss"]
                x = h["relative_layer"] + 0.012 * (h["head_index"] - (n_heads - 1) / 2)
                lo, hi = e["ci95"]
                ax.errorbar([x], [e["estimate"]], yerr=[[e["estimate"] - lo], [hi - e["estimate"]]], fmt="o", ms=3.5,
                            lw=0.5, color=f"C{i}", mfc=f"C{i}" if e.get("significant") else "white", alpha=0.8,
                            label=name if name not in labelled else None)
                labelled.add(name)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("relative layer (layer / (num_layers − 1))")
        ax.set_title(f"{mode} ablation (filled: significant after Holm)", fontsize=9)
    axes[0].set_ylabel("answer_loss bracket specificity\n(Δ bracketed twin − Δ flat)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return plain_png(fig)


def attention_roles(groups: dict) -> bytes | None:
    """One panel per role: every head's combined share against its relative layer, per config, with
    each run's uniform-attention baseline and the role threshold."""
    runs = [(name, r) for name, rs in groups.items() for r in rs if r["roles"]]
    if not runs:
        return None
    plt = pyplot()
    names = list(groups)
    fig, axes = plt.subplots(1, len(ROLES), figsize=(3.2 * len(ROLES), 3.3), dpi=100, sharey=True)
    for ax, role in zip(axes, ROLES):
        labelled = set()
        for name, r in runs:
            i = names.index(name)
            rows = [h for h in r["roles"]["heads"] if h["combined"].get(role) is not None]
            ax.scatter([h["relative_layer"] for h in rows], [h["combined"][role] for h in rows], s=12, color=f"C{i}",
                       alpha=0.6, label=name if name not in labelled else None)
            labelled.add(name)
            uniform = dig(r["roles"], "combined_queries", role, "uniform")
            if uniform is not None:
                ax.axhline(uniform, color=f"C{i}", ls=":", lw=0.8)
        ax.axhline(runs[0][1]["roles"].get("threshold", 0.4), color="k", ls="--", lw=0.8)
        ax.set_title(role, fontsize=9)
        ax.set_xlabel("relative layer")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("attention share (bracketed test sets)")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Attention roles of every head, every seed (dotted: uniform attention; dashed: role threshold)",
                 fontsize=9)
    fig.tight_layout()
    return plain_png(fig)
