"""Linear probes for parenthesis depth at every activation site, read against an untrained control.

    python -m src.analysis.probe --run runs/pilot [--device cuda] [--precision fp32|fp16|bf16] [--limit N] [--splits SPLIT ...] [--out PATH]

Sites, in forward order: `hook_embed`, then per layer each head's output
(`blocks.L.attn.hook_z`, head h: site `blocks.L.attn.hook_z.h`) and the residual stream after the
block (`blocks.L.hook_resid_post`). The examples are the input positions of the expression's
characters (`Batch.depth >= 0`; `<BOS>`, `" = "`, the answer and padding are left out); the target
at a position is the nesting depth of that character (docs/DESIGN.md section 4).

Two tasks: `binary` (depth > 0) and `exact` (depth as a class, 0-2 in training). A split whose
expressions go deeper than the training ones is out of distribution (test_depth3); there the exact
task has a class the probe never saw and cannot predict: its accuracy is reported anyway, with
`accuracy_seen_classes` (positions of the seen classes only) beside it, and the binary task asks
"inside any parenthesis?" of the out-of-distribution expressions.

A probe is a softmax regression on standardized features (training mean and std), with an L2
penalty, fitted full-batch by L-BFGS from zero weights (deterministic). It is fitted on the
activations of the training expressions and scored on the other splits (different expressions).
Baseline: the majority class of the training targets. Control: the same probes on an untrained
model of the same architecture and seed (`torch.manual_seed(seed)`, then `CompactTransformer`,
as src.train builds it), at every site and on every scored split.

A probe is read against its control (docs/DESIGN.md section 5). `selectivity` = trained accuracy - control
accuracy, with stats.paired_bootstrap over expressions: both probes are scored on the very same
positions, so each resampled expression carries its correct counts under both (control as a,
trained as b). A control that reaches CEILING (0.95) on a split puts that probe at its ceiling
there (`at_ceiling`): the depth is decodable without any training, and the probe supports no
claim. Where the split holds a class the probe never saw (exact on test_depth3) the accuracy
cannot reach 1, so the control's accuracy over the seen classes is held against CEILING too.

Intervals: `ci95_wilson` treats tokens as independent draws, which they are not (the positions of
one expression share its structure), so it is too narrow; `ci95_bootstrap` resamples whole
expressions (stats.bootstrap_ratio_interval over per-expression (correct, count)) and is the one
to quote.

Output: DIR/probe.json and DIR/probe_layers.png (probe.limitN.json and probe_layers.limitN.png under
--limit N). The keys of probe.json:
    schema            "probe/2" (the first key)
    run, checkpoint, epoch, config, seed, control_seed, device, precision, limit, l2, max_iter,
    resamples, num_layers, num_heads      what was probed, and how
    positions, train_split, tasks, classes, intervals, relative_depth, selectivity_definition,
    ceiling (0.95), ceiling_rule          definitions
    split_depths      {split: {min_depth, max_depth, in_distribution}}; a split is out of
                      distribution when its expressions go deeper than the training ones
    majority          {task: {class, splits: {split: accuracy entry}}}: the majority-class baseline
    sites             one entry per site, in forward order: site, activation, kind (embed | head |
                      resid), layer, head, relative_depth, relative_layer, and per task (binary, exact):
                        trained, control  {train_accuracy, splits: {split: accuracy entry}}
                        selectivity       {split: the stats.paired_bootstrap dict, passed through:
                                          estimate, ci95, p_value (and whatever else it reports)}
                        at_ceiling        {split: bool}
    summary           rule (how the two sites are chosen and a claim is read), ceiling,
                      in_distribution, out_of_distribution (lists of splits), and
                      tasks: {task: {split: {distribution, in_distribution, first_block, best_site,
                      best_is_first_block}}}. first_block (the residual stream after block 0) and
                      best_site each hold: site, layer, relative_depth, trained_accuracy,
                      trained_ci95, control_accuracy, control_ci95, selectivity (as in sites),
                      at_ceiling, claim ("at ceiling: no claim", "selective" or "not selective"),
                      and on a split with an unseen class n_unseen_class_tokens,
                      trained_accuracy_seen_classes, control_accuracy_seen_classes
    elapsed_s
An accuracy entry: accuracy, ci95_wilson, ci95_bootstrap, n_tokens, n_expressions; on a split with
an unseen class also n_unseen_class_tokens and accuracy_seen_classes.
probe_layers.png (written when test_paren is scored): accuracy against relative depth on test_paren
and on each out-of-distribution split, for the trained model, the control and the majority class;
the band at 0.95 and above is hatched, and a probe at its ceiling is ringed.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src import stats
from src.rundir.atomic import write_result
from src.cli import (MAX_ITERATIONS, MAX_RESAMPLES, MAX_SEED, ArgumentParser, check_output_file, distinct, float_in,
                     int_in, path_arg)
from src.data import Batch
from src.device import autocast
from src.errors import UserError, run_main
from src.metrics import EVAL_SPLITS
from src.analysis.common import (Run, RunData, add_run_arguments, analysis_main, limited_name, relative_layer,
                                 untrained_control)
from src.model import CompactTransformer, Hooks
from src.plotting import png_bytes, pyplot
from src.text import plain_text, shown

SCHEMA = "probe/2"
TASKS = {"binary": "depth > 0 (inside at least one parenthesis)",
         "exact": "depth as a class (0, 1, 2 in training; depth 3 on test_depth3 is an unseen class)"}
FIGURE_SPLIT = "test_paren"
CEILING = 0.95  # a control at or above this accuracy leaves the probe no room to show anything
MIN_RESAMPLES = 100  # fewer leave the 2.5% and 97.5% percentiles resting on one or two resamples
FIRST_BLOCK = "blocks.0.hook_resid_post"
SUMMARY_RULE = (
    "first_block: blocks.0.hook_resid_post, the residual stream after block 0. best_site: among the "
    "residual-stream sites after each block (blocks.L.hook_resid_post; the embedding and the heads left out), "
    "the one whose trained-model probe is most accurate on the training expressions it was fitted on (ties: the "
    "earlier site); chosen once per task on expressions that no scored split contains, so that its scores are "
    "taken on examples it was not selected on (DESIGN.md section 5), then reported on every split. claim: 'at ceiling: "
    "no claim' when the control reaches the ceiling on that split; else 'selective' when the 95% interval of the "
    "selectivity lies above 0, 'not selective' otherwise (one interval per claim, not corrected across the "
    "claims of this summary).")


# ---------------------------------------------------------------------------- sites and features


@dataclass(frozen=True)
class Site:
    name: str          # e.g. blocks.1.attn.hook_z.2
    activation: str    # the model's activation name
    kind: str          # embed | head | resid
    layer: int | None
    head: int | None
    relative_depth: float  # embed 0, a head of layer l (l + 0.5) / L, the residual after block l (l + 1) / L


def site_groups(cfg) -> list[list[Site]]:
    """Sites grouped by the forward pass that reads them: the embedding, then one group per layer."""
    L = cfg.num_layers
    groups = [[Site("hook_embed", "hook_embed", "embed", None, None, 0.0)]]
    for layer in range(L):
        z = f"blocks.{layer}.attn.hook_z"
        heads = [Site(f"{z}.{h}", z, "head", layer, h, (layer + 0.5) / L) for h in range(cfg.num_heads)]
        resid = f"blocks.{layer}.hook_resid_post"
        groups.append(heads + [Site(resid, resid, "resid", layer, None, (layer + 1) / L)])
    return groups


@torch.no_grad()
def collect_features(model: CompactTransformer, batch: Batch, names: list[str], precision: str = "fp32",
                     chunk: int = 2048) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Activations at the expression positions: ({name: [N, S, d] float32}, depth [N], expression index [N]).

    A head activation has S = num_heads (one slice per head); a residual one S = 1.
    """
    device = next(model.parameters()).device
    feats = {n: [] for n in names}
    depths, exprs = [], []
    for start in range(0, len(batch), chunk):
        b = batch.select(torch.arange(start, min(start + chunk, len(batch)))).to(device)
        keep = b.depth >= 0
        with autocast(device, precision):
            recorded = model(b.inputs, hooks=Hooks(record=names)).activations
        for n in names:
            x = recorded[n][keep].float()
            feats[n].append(x if x.dim() == 3 else x[:, None])
        depths.append(b.depth[keep])
        exprs.append((torch.arange(len(b), device=device)[:, None] + start).expand_as(keep)[keep])
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(depths), torch.cat(exprs)


# ---------------------------------------------------------------------------- probes


@dataclass
class Probe:
    """S independent softmax regressions over d standardized features."""

    mean: torch.Tensor    # [S, d]
    std: torch.Tensor     # [S, d]
    weight: torch.Tensor  # [S, d, C]
    bias: torch.Tensor    # [S, C]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nsd,sdc->nsc", (x - self.mean) / self.std, self.weight) + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """[N, S, d] -> predicted class [N, S]."""
        return self.logits(x).argmax(-1)


def fit_probes(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4, max_iter: int = 200) -> Probe:
    """Fit one probe per slice of x [N, S, d] to targets y [N] (full-batch L-BFGS, zero start).

    The loss is the sum over slices of (mean cross-entropy + l2 * |W_s|^2); slices share no
    parameter, so each reaches its own optimum: S probes in one vectorized fit.
    """
    x = x.float()
    N, S, d = x.shape
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weight = torch.zeros(S, d, num_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(S, num_classes, device=x.device, requires_grad=True)
    target = y.long()[:, None].expand(N, S)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("nsd,sdc->nsc", z, weight) + bias
        loss = F.cross_entropy(logits.reshape(N * S, -1), target.reshape(-1), reduction="sum") / N
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(mean, std, weight.detach(), bias.detach())


# ---------------------------------------------------------------------------- scoring


def expression_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(depth [N], expression index [N]) of the expression's characters, in the order collect_features reads them."""
    keep = batch.depth >= 0
    return batch.depth[keep], torch.arange(len(batch), device=batch.depth.device)[:, None].expand_as(keep)[keep]


def per_expression(correct: torch.Tensor, expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct count, position count) per expression, float64 on the CPU, in order of expression index."""
    correct, expr = correct.double().cpu(), expr.cpu()
    ids, inverse = torch.unique(expr, return_inverse=True)
    num = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, correct)
    den = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(correct))
    return num, den


def accuracy_entry(correct: torch.Tensor, expr: torch.Tensor, resamples: int = stats.DEFAULT_RESAMPLES) -> dict:
    """Token accuracy with a Wilson interval (tokens as if independent) and a bootstrap interval
    over expressions (the one to quote)."""
    n = len(correct)
    if n == 0:
        return {"accuracy": float("nan"), "n_tokens": 0, "n_expressions": 0}
    num, den = per_expression(correct, expr)
    k = int(num.sum())
    return {"accuracy": k / n,
            "ci95_wilson": list(stats.wilson_interval(k, n)),
            "ci95_bootstrap": list(stats.bootstrap_ratio_interval(num, den, resamples=resamples)),
            "n_tokens": n, "n_expressions": len(num)}


def selectivity_entry(trained_correct: torch.Tensor, control_correct: torch.Tensor, expr: torch.Tensor,
                      resamples: int = stats.DEFAULT_RESAMPLES) -> dict:
    """Trained minus control accuracy over the same positions, paired over expressions.

    `trained_correct` and `control_correct` are the two probes' outcomes at the positions `expr`
    indexes (one entry per position, the same positions for both): each resampled expression
    carries its correct counts under both models.
    """
    if not len(trained_correct) == len(control_correct) == len(expr):
        raise ValueError("selectivity: the trained and control probes must be scored on the same positions")
    if len(expr) == 0:
        return {"estimate": None, "ci95": None, "p_value": None}
    num_b, den = per_expression(trained_correct, expr)
    num_a, _ = per_expression(control_correct, expr)
    return dict(stats.paired_bootstrap(num_a, den, num_b, den, resamples=resamples))


def at_ceiling(control_entry: dict) -> bool:
    """The control reaches CEILING on this split (over the seen classes too, where some class is unseen)."""
    values = [control_entry.get("accuracy"), control_entry.get("accuracy_seen_classes")]
    return any(v is not None and v >= CEILING for v in values)


def claim(ceiling: bool, selectivity: dict) -> str:
    if ceiling:
        return "at ceiling: no claim"
    ci = selectivity.get("ci95")
    return "selective" if ci is not None and ci[0] > 0 else "not selective"


def task_targets(depth: torch.Tensor, task: str) -> torch.Tensor:
    return (depth > 0).long() if task == "binary" else depth.long()


def score_probe(probe: Probe, feats: dict, depth: dict, expr: dict, task: str, num_classes: int, splits,
                resamples: int) -> tuple[list[dict], list[dict]]:
    """Per slice s of the probe: ({"train_accuracy", "splits": {split: accuracy entry}}, {split: correct [N] bool}).

    The second holds each position's outcome on the scored splits, for the paired selectivity.
    """
    S = probe.weight.shape[0]
    out = [{"train_accuracy": None, "splits": {}} for _ in range(S)]
    outcomes = [{} for _ in range(S)]
    for split in ["train", *splits]:
        y = task_targets(depth[split], task)
        pred = probe.predict(feats[split])  # [N, S]
        for s in range(S):
            correct = pred[:, s] == y
            if split == "train":
                out[s]["train_accuracy"] = correct.double().mean().item()
                continue
            entry = accuracy_entry(correct, expr[split], resamples)
            unseen = y >= num_classes
            if bool(unseen.any()):
                seen = ~unseen
                entry["n_unseen_class_tokens"] = int(unseen.sum())
                entry["accuracy_seen_classes"] = correct[seen].double().mean().item() if bool(seen.any()) else None
            out[s]["splits"][split] = entry
            outcomes[s][split] = correct.cpu()
    return out, outcomes


def fit_groups(cfg) -> list[list[Site]]:
    """Sites fitted together: every head (d_head features), then the embedding and every residual
    stream (d_model features). One vectorized fit per group and task instead of one per layer: the
    probes share no parameter, so the summed objective has the same optimum; only the shared line
    search and stopping rule differ (on a pilot checkpoint, on the CPU, every accuracy stayed within
    0.001 of the per-layer fits). Fewer L-BFGS loops is the point: a fit at this size is bound by
    launches and host synchronisations, not by arithmetic."""
    sites = [site for group in site_groups(cfg) for site in group]
    return [[s for s in sites if s.kind == "head"], [s for s in sites if s.kind != "head"]]


def probe_model(model, batches: dict, positions: dict, splits, precision: str, l2: float, max_iter: int, resamples: int,
                classes: dict, log=print, tick=None) -> tuple[dict, dict]:
    """({site name: {task: {"train_accuracy", "splits"}}}, {site name: {task: {split: correct [N]}}}) for
    every site of `model`; `positions` is {split: expression_positions(batch)}, the positions both models
    are scored on."""
    results, outcomes = {}, {}
    for group in fit_groups(model.cfg):
        names = list(dict.fromkeys(site.activation for site in group))
        per_split, depth, expr = {}, {}, {}
        for split, batch in batches.items():
            f, depth[split], expr[split] = collect_features(model, batch, names, precision)
            if not torch.equal(expr[split], positions[split][1]):
                raise RuntimeError(f"{split}: probed positions differ from expression_positions")
            # one slice per site, in the group's order: a head activation [N, H, d_head] gives slice `head`
            per_split[split] = torch.cat([f[s.activation][:, s.head or 0][:, None] for s in group], dim=1)
            del f
        for task in TASKS:
            probe = fit_probes(per_split["train"], task_targets(depth["train"], task), classes[task], l2, max_iter)
            scored, correct = score_probe(probe, per_split, depth, expr, task, classes[task], splits, resamples)
            for site, score, c in zip(group, scored, correct):
                results.setdefault(site.name, {})[task] = score
                outcomes.setdefault(site.name, {})[task] = c
            if tick is not None:
                tick()
        log(f"  {len(group)} {'head' if group[0].kind == 'head' else 'embedding and residual'} sites: probed")
    return results, outcomes


def split_depths(positions: dict, train_max_depth: int) -> dict:
    """{split: {min_depth, max_depth, in_distribution}} of the scored splits."""
    out = {}
    for split, (depth, _) in positions.items():
        if split == "train":
            continue
        lo, hi = (int(depth.min()), int(depth.max())) if len(depth) else (None, None)
        out[split] = {"min_depth": lo, "max_depth": hi, "in_distribution": hi is None or hi <= train_max_depth}
    return out


def distribution_label(depths: dict, train_max_depth: int) -> str:
    lo, hi = depths["min_depth"], depths["max_depth"]
    span = f"depth {lo}" if lo == hi else f"depth {lo}-{hi}"
    if depths["in_distribution"]:
        return f"in distribution ({span}; training covers depth 0-{train_max_depth})"
    return f"out of distribution ({span}; training stops at depth {train_max_depth})"


def site_label(site: dict, task: str, split: str) -> dict:
    """One site's figures on one split, as the summary states them."""
    t = site[task]
    trained, control = t["trained"]["splits"][split], t["control"]["splits"][split]
    label = {"site": site["site"], "layer": site["layer"], "relative_depth": site["relative_depth"],
             "trained_accuracy": trained["accuracy"], "trained_ci95": trained.get("ci95_bootstrap"),
             "control_accuracy": control["accuracy"], "control_ci95": control.get("ci95_bootstrap"),
             "selectivity": t["selectivity"][split], "at_ceiling": t["at_ceiling"][split],
             "claim": claim(t["at_ceiling"][split], t["selectivity"][split])}
    if "n_unseen_class_tokens" in trained:
        label |= {"n_unseen_class_tokens": trained["n_unseen_class_tokens"],
                  "trained_accuracy_seen_classes": trained.get("accuracy_seen_classes"),
                  "control_accuracy_seen_classes": control.get("accuracy_seen_classes")}
    return label


def summarize(sites: list[dict], splits, depths: dict, train_max_depth: int) -> dict:
    """The summary block: per task and split, the first block and the best site, each with its claim."""
    resid = [s for s in sites if s["kind"] == "resid"]
    first = next(s for s in resid if s["site"] == FIRST_BLOCK)
    tasks = {}
    for task in TASKS:
        best = max(resid, key=lambda s: s[task]["trained"]["train_accuracy"])  # max keeps the earliest of ties
        tasks[task] = {split: {"distribution": distribution_label(depths[split], train_max_depth),
                               "in_distribution": depths[split]["in_distribution"],
                               "first_block": site_label(first, task, split),
                               "best_site": site_label(best, task, split),
                               "best_is_first_block": best is first}
                       for split in splits}
    return {"rule": SUMMARY_RULE, "ceiling": CEILING,
            "in_distribution": [s for s in splits if depths[s]["in_distribution"]],
            "out_of_distribution": [s for s in splits if not depths[s]["in_distribution"]],
            "tasks": tasks}


# ---------------------------------------------------------------------------- output


def _interval(ci) -> str:
    return "[  n/a  ,  n/a  ]" if ci is None else f"[{ci[0]:+.3f},{ci[1]:+.3f}]"


def format_table(result: dict) -> str:
    """Per site on test_paren (when scored): trained, control, selectivity, ceiling mark; then the summary."""
    lines = []
    split = FIGURE_SPLIT
    if split in result["majority"]["binary"]["splits"]:
        lines += [f"depth probes on {split}: trained accuracy [95% over expressions], untrained control, "
                  f"selectivity = trained - control [paired 95%]; * = control >= {CEILING}: at ceiling, no claim"]
        for task in TASKS:
            maj = result["majority"][task]["splits"][split]["accuracy"]
            lines.append(f"{task:<28} {'trained':>21} {'control':>8} {'selectivity':>24}   (majority class {maj:.3f})")
            for site in result["sites"]:
                t = site[task]
                tr, ct, sel = t["trained"]["splits"][split], t["control"]["splits"][split], t["selectivity"][split]
                lo, hi = tr["ci95_bootstrap"]
                est = float("nan") if sel["estimate"] is None else sel["estimate"]
                lines.append(f"  {site['site']:<26} {tr['accuracy']:.3f} [{lo:.3f},{hi:.3f}] {ct['accuracy']:>8.3f} "
                             f"{est:+.3f} {_interval(sel['ci95'])}{'  *' if t['at_ceiling'][split] else ''}")
    summary = result["summary"]
    lines.append("summary: first_block = the residual stream after block 0; best_site = the residual-stream site "
                 "best on the training expressions (see summary.rule)")
    for split in next(iter(summary["tasks"].values())):
        lines.append(f"  {split}: {next(iter(summary['tasks'].values()))[split]['distribution']}")
        for task, per_split in summary["tasks"].items():
            for which in ("first_block", "best_site"):
                e = per_split[split][which]
                est = float("nan") if e["selectivity"]["estimate"] is None else e["selectivity"]["estimate"]
                seen = e.get("trained_accuracy_seen_classes")
                lines.append(f"    {task:<6} {which:<11} {e['site']:<26} trained {e['trained_accuracy']:.3f} "
                             f"control {e['control_accuracy']:.3f} selectivity {est:+.3f} "
                             f"{_interval(e['selectivity']['ci95'])}  {e['claim']}"
                             + (f" (seen classes: trained {seen:.3f}, control {e['control_accuracy_seen_classes']:.3f})"
                                if seen is not None else ""))
    return "\n".join(lines)


@plain_text()  # names drawn as written: no mathtext
def render_figure(result: dict, title: str) -> bytes:
    """PNG bytes of the accuracy-against-depth figure."""
    title = shown(title)  # a run directory's name may hold bytes that are not UTF-8
    plt = pyplot()

    L = result["num_layers"]
    ood = result["summary"]["out_of_distribution"]
    resid = [s for s in result["sites"] if s["kind"] != "head"]
    heads = [s for s in result["sites"] if s["kind"] == "head"]
    x = lambda sites: [s["relative_depth"] for s in sites]  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), dpi=100, sharey=True)
    for ax, task in zip(axes, TASKS):
        acc = lambda sites, model, split: [s[task][model]["splits"][split]["accuracy"] for s in sites]  # noqa: E731
        ax.axhspan(CEILING, 1.02, facecolor="none", edgecolor="0.75", hatch="///", lw=0,
                   label=f"control >= {CEILING}: at ceiling")
        for model, color in (("trained", "C0"), ("control", "C7")):
            ax.plot(x(resid), acc(resid, model, FIGURE_SPLIT), "o-", color=color, markersize=4,
                    label=f"{model}: residual, {FIGURE_SPLIT}")
            ax.scatter(x(heads), acc(heads, model, FIGURE_SPLIT), s=10, marker="x" if model == "control" else "o",
                       color=color, alpha=0.5, label=f"{model}: heads, {FIGURE_SPLIT}")
        for split in ood:
            for model, color in (("trained", "C1"), ("control", "C7")):
                ax.plot(x(resid), acc(resid, model, split), "s--", color=color, markersize=3, lw=0.8,
                        label=f"{model}: residual, {split}")
        drawn = [(FIGURE_SPLIT, result["sites"])] + [(split, resid) for split in ood]  # the points plotted above
        ringed = [(s["relative_depth"], s[task]["trained"]["splits"][split]["accuracy"])
                  for split, sites in drawn for s in sites if s[task]["at_ceiling"][split]]
        if ringed:
            ax.scatter(*zip(*ringed), s=45, facecolors="none", edgecolors="C3", lw=0.8,
                       label="ringed: control at ceiling, no claim")
        ax.axhline(result["majority"][task]["splits"][FIGURE_SPLIT]["accuracy"], color="k", ls=":", lw=0.8,
                   label=f"majority class, {FIGURE_SPLIT}")
        ax.set_xticks([0] + [(l + 1) / L for l in range(L)], ["embed"] + [f"L{l}" for l in range(L)])
        ax.set_xlabel("site (residual after block; heads between)", fontsize=8)
        ax.set_title(f"{task}: {TASKS[task].split(' (')[0]}", fontsize=9)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("probe accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a ring appears only in a panel with a probe at its ceiling
        h, lab = ax.get_legend_handles_labels()
        handles += [x for x, name in zip(h, lab) if name not in labels]
        labels += [name for name in lab if name not in labels]
    fig.legend(handles, labels, fontsize=6, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return png_bytes(fig)


# ---------------------------------------------------------------------------- entry point


def check_flags(args) -> None:
    """Range-check every numeric flag and the splits; raised before anything is read or written.
    (The parser's types check the numbers first; these checks hold for a caller that builds args.)"""
    distinct(args.splits, "--splits", EVAL_SPLITS)
    if not MIN_RESAMPLES <= args.resamples <= MAX_RESAMPLES:
        raise UserError(f"--resamples {args.resamples}: must be at least {MIN_RESAMPLES} "
                        f"(default {stats.DEFAULT_RESAMPLES}) for a percentile interval, and at most {MAX_RESAMPLES}")
    if not (math.isfinite(args.l2) and args.l2 >= 0):
        raise UserError(f"--l2 {args.l2}: must be a finite number >= 0")
    if not 1 <= args.max_iter <= MAX_ITERATIONS:
        raise UserError(f"--max-iter {args.max_iter}: must be at least 1 and at most {MAX_ITERATIONS}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of examples")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m src.analysis.probe", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=list(EVAL_SPLITS), metavar="SPLIT",
                        help="splits to score the probes on, each once, any of %(default)s (they train on `train`; "
                        "default: all)")
    parser.add_argument("--l2", type=float_in(0, None), default=1e-4,
                        help="L2 penalty on the probe weights, finite and >= 0 (default: %(default)s)")
    parser.add_argument("--max-iter", type=int_in(1, MAX_ITERATIONS), default=200,
                        help=f"L-BFGS iterations per fit, 1 to {MAX_ITERATIONS} (default: %(default)s)")
    parser.add_argument("--resamples", type=int_in(MIN_RESAMPLES, MAX_RESAMPLES), default=stats.DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples of the intervals over expressions, {MIN_RESAMPLES} to {MAX_RESAMPLES} "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int_in(0, MAX_SEED), default=None,
                        help="seed of the untrained control model (default: the run's training seed, which its "
                        "checkpoint records)")
    parser.add_argument("--out", type=path_arg, default=None, help="JSON path (default: RUN/probe.json, RUN/probe.limitN.json "
                        "under --limit); the figure probe_layers.png (probe_layers.limitN.png) goes beside it")
    return parser


def probe_run(run: Run, data: RunData, args) -> dict:
    """The depth probes of an opened run against its untrained control; writes probe.json and the
    figure, returns the result."""
    check_flags(args)
    out = check_output_file(run.output("probe.json", args.out), "--out" if args.out else "output", "probe.json")
    png = check_output_file(out.with_name(limited_name("probe_layers.png", run.limit)), "figure") \
        if FIGURE_SPLIT in args.splits else None
    cfg = run.cfg
    seed = args.seed if args.seed is not None else run.seed
    control = untrained_control(cfg, seed, run.device)
    tic = time.perf_counter()
    batches = data.batches(["train", *args.splits])
    positions = {split: expression_positions(b) for split, b in batches.items()}
    train_depth = positions["train"][0]
    train_max_depth = int(train_depth.max())
    classes = {"binary": 2, "exact": train_max_depth + 1}
    depths = split_depths(positions, train_max_depth)

    majority = {}
    for task in TASKS:
        cls = int(torch.bincount(task_targets(train_depth, task)).argmax())
        majority[task] = {"class": cls, "splits": {
            split: accuracy_entry(task_targets(positions[split][0], task) == cls, positions[split][1], args.resamples)
            for split in args.splits}}

    per_model, outcomes = {}, {}
    with run.bar(total=2 * len(fit_groups(cfg.model)) * len(TASKS), desc="depth probes: fits", unit="fit") as bar:
        for kind, m in (("trained", run.model), ("control", control)):
            bar.set_postfix_str(kind)
            per_model[kind], outcomes[kind] = probe_model(m, batches, positions, args.splits, run.precision, args.l2,
                                                          args.max_iter, args.resamples, classes,
                                                          log=lambda *_: None, tick=bar.update)

    sites = []
    for group in site_groups(cfg.model):
        for site in group:
            entry = {"site": site.name, "activation": site.activation, "kind": site.kind, "layer": site.layer,
                     "head": site.head, "relative_depth": site.relative_depth,
                     "relative_layer": None if site.layer is None else relative_layer(site.layer, cfg.model.num_layers)}
            for task in TASKS:
                trained, ctrl = per_model["trained"][site.name][task], per_model["control"][site.name][task]
                entry[task] = {"trained": trained, "control": ctrl, "selectivity": {}, "at_ceiling": {}}
            sites.append(entry)
    for split in run.bar(args.splits, desc="depth probes: selectivity", unit="split"):
        # split outermost: the bootstrap's resample matrix is cached per split size
        for entry in sites:
            for task in TASKS:
                entry[task]["selectivity"][split] = selectivity_entry(
                    outcomes["trained"][entry["site"]][task][split], outcomes["control"][entry["site"]][task][split],
                    positions[split][1], args.resamples)
                entry[task]["at_ceiling"][split] = at_ceiling(entry[task]["control"]["splits"][split])

    result = {
        "schema": SCHEMA,
        "run": str(run.path), "checkpoint": run.checkpoint, "epoch": run.ckpt["epoch"], "config": cfg.name,
        "seed": run.seed, "control_seed": seed, "device": str(run.device), "precision": run.precision,
        "fp16": run.precision == "fp16",
        "limit": run.limit, "l2": args.l2, "max_iter": args.max_iter, "resamples": args.resamples,
        "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "positions": "input positions of the expression's characters (Batch.depth >= 0)",
        "train_split": f"train ({len(batches['train'])} expressions, {len(train_depth)} positions)",
        "tasks": TASKS, "classes": classes,
        "intervals": "ci95_wilson treats tokens as independent (too narrow: positions of one expression are "
                     "correlated); ci95_bootstrap resamples expressions",
        "relative_depth": "embed 0; a head of layer l (l + 0.5) / num_layers; residual after block l (l + 1) / num_layers",
        "selectivity_definition": "trained accuracy - control accuracy on the same positions; stats.paired_bootstrap "
                                  "over expressions (control as a, trained as b)",
        "ceiling": CEILING,
        "ceiling_rule": f"at_ceiling when the untrained control's accuracy on that split is >= {CEILING} (or its "
                        "accuracy over the seen classes, where the split holds a class the probe never saw): the "
                        "probe then supports no claim",
        "split_depths": depths,
        "majority": majority, "sites": sites,
        "summary": summarize(sites, args.splits, depths, train_max_depth),
        "elapsed_s": time.perf_counter() - tic,
    }
    if run.limit is not None:
        print(run.titled("depth probes"))
    print(format_table(result))
    figure = None
    if png is not None:  # rendered in memory: nothing is written until everything is computed
        figure = render_figure(result, run.titled(f"{cfg.name} ({run.path.name}): depth probes; control = untrained "
                                                  f"model, seed {seed}"))
    write_result(out, result, (png, figure))
    return result


def main(argv=None) -> int:
    return analysis_main(build_parser, probe_run, argv, check=check_flags)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
