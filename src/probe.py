"""Linear probes for parenthesis depth at every activation site.

    python -m src.probe --run runs/pilot [--device cuda] [--fp16] [--limit N] [--out PATH]

Sites, in forward order: `hook_embed`, then per layer each head's output
(`blocks.L.attn.hook_z`, head h: site `blocks.L.attn.hook_z.h`) and the residual stream after the
block (`blocks.L.hook_resid_post`). The examples are the input positions of the expression's
characters (`Batch.depth >= 0`; `<BOS>`, `" = "`, the answer and padding are left out); the target
at a position is the nesting depth of that character (SPEC section 4).

Two tasks: `binary` (depth > 0) and `exact` (depth as a class, 0-2 in training). On test_depth3,
depth 3 is a class the probe never saw and cannot predict; its accuracy is reported anyway, with
`accuracy_seen_classes` (positions of depth 0-2 only) beside it, and the binary task there asks
"inside any parenthesis?" of the out-of-distribution expressions.

A probe is a softmax regression on standardized features (training mean and std), with an L2
penalty, fitted full-batch by L-BFGS from zero weights (deterministic). It is fitted on the
activations of the training expressions and scored on the other splits (different expressions).
Baseline: the majority class of the training targets. Control: the same probes on an untrained
model of the same architecture and seed (`torch.manual_seed(seed)`, then `CompactTransformer`,
as src.train builds it); `selectivity = trained accuracy - control accuracy`.

Intervals: `ci95_wilson` treats tokens as independent draws, which they are not (the positions of
one expression share its structure), so it is too narrow; `ci95_bootstrap` resamples whole
expressions (stats.bootstrap_ratio_interval over per-expression (correct, count)) and is the one
to quote.

Output: DIR/probe.json and DIR/probe_layers.png (accuracy against relative depth for the trained
model, the control and the majority class).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from src import stats
from src.evaluate import relative_layer, run_seed
from src.checkpoint import atomic_write_json
from src.data import Batch
from src.errors import UserError, run_main
from src.evaluate import EVAL_SPLITS, add_run_arguments, autocast, load_batches, open_run
from src.model import CompactTransformer

TASKS = {"binary": "depth > 0 (inside at least one parenthesis)",
         "exact": "depth as a class (0, 1, 2 in training; depth 3 on test_depth3 is an unseen class)"}
FIGURE_SPLIT = "test_paren"


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
def collect_features(model: CompactTransformer, batch: Batch, names: list[str], fp16: bool = False,
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
        with autocast(device, fp16):
            cache = model(b.inputs, cache=set(names)).cache
        for n in names:
            x = cache[n][keep].float()
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


def accuracy_entry(correct: torch.Tensor, expr: torch.Tensor, resamples: int = stats.DEFAULT_RESAMPLES) -> dict:
    """Token accuracy with a Wilson interval (tokens as if independent) and a bootstrap interval
    over expressions (the one to quote)."""
    correct, expr = correct.double().cpu(), expr.cpu()
    n = len(correct)
    if n == 0:
        return {"accuracy": float("nan"), "n_tokens": 0, "n_expressions": 0}
    ids, expr = torch.unique(expr, return_inverse=True)
    per_correct = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, expr, correct)
    per_count = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, expr, torch.ones_like(correct))
    k = int(correct.sum())
    return {"accuracy": k / n,
            "ci95_wilson": list(stats.wilson_interval(k, n)),
            "ci95_bootstrap": list(stats.bootstrap_ratio_interval(per_correct, per_count, resamples=resamples)),
            "n_tokens": n, "n_expressions": len(ids)}


def task_targets(depth: torch.Tensor, task: str) -> torch.Tensor:
    return (depth > 0).long() if task == "binary" else depth.long()


def score_probe(probe: Probe, feats: dict, depth: dict, expr: dict, task: str, num_classes: int, splits,
                resamples: int) -> list[dict]:
    """Per slice s of the probe: {split: accuracy entry} over the evaluation splits, and the training accuracy."""
    S = probe.weight.shape[0]
    out = [{"train_accuracy": None, "splits": {}} for _ in range(S)]
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
    return out


def probe_model(model, batches: dict, splits, fp16: bool, l2: float, max_iter: int, resamples: int,
                classes: dict, log=print) -> dict:
    """{site name: {task: {"train_accuracy", "splits"}}} for every site of `model`."""
    results = {}
    for group in site_groups(model.cfg):
        names = sorted({site.activation for site in group})
        feats, depth, expr = {}, {}, {}
        for split, batch in batches.items():
            f, depth[split], expr[split] = collect_features(model, batch, names, fp16)
            for n in names:
                feats[(n, split)] = f[n]
        for n in names:
            sites = [s for s in group if s.activation == n]
            per_split = {split: feats[(n, split)] for split in batches}
            for task in TASKS:
                probe = fit_probes(per_split["train"], task_targets(depth["train"], task), classes[task], l2, max_iter)
                scored = score_probe(probe, per_split, depth, expr, task, classes[task], splits, resamples)
                for site, score in zip(sorted(sites, key=lambda s: s.head or 0), scored):
                    results.setdefault(site.name, {})[task] = score
        log(f"  {', '.join(names)}: probed")
    return results


# ---------------------------------------------------------------------------- output


def format_table(result: dict) -> str:
    split = FIGURE_SPLIT
    lines = [f"accuracy on {split} (trained / control / selectivity) and on test_depth3 (trained)",
             f"{'site':<28} {'binary':>22} {'exact':>22}   {'d3 binary':>9} {'d3 exact':>8} {'d3 seen':>8}"]
    maj = result["majority"]
    lines.append(f"{'majority class':<28} {maj['binary']['splits'][split]['accuracy']:>22.3f} "
                 f"{maj['exact']['splits'][split]['accuracy']:>22.3f}")
    for site in result["sites"]:
        cells = []
        for task in TASKS:
            t = site[task]
            cells.append(f"{t['trained']['splits'][split]['accuracy']:.3f} / {t['control']['splits'][split]['accuracy']:.3f}"
                         f" / {t['selectivity'][split]:+.3f}")
        d3 = {task: site[task]["trained"]["splits"].get("test_depth3", {}) for task in TASKS}
        seen = d3["exact"].get("accuracy_seen_classes")
        lines.append(f"{site['site']:<28} {cells[0]:>22} {cells[1]:>22}   "
                     f"{d3['binary'].get('accuracy', float('nan')):>9.3f} {d3['exact'].get('accuracy', float('nan')):>8.3f} "
                     f"{(seen if seen is not None else float('nan')):>8.3f}")
    return "\n".join(lines)


def write_figure(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = result["num_layers"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100, sharey=True)
    for ax, task in zip(axes, TASKS):
        for model, color in (("trained", "C0"), ("control", "C7")):
            resid = [s for s in result["sites"] if s["kind"] != "head"]
            heads = [s for s in result["sites"] if s["kind"] == "head"]
            ax.plot([s["relative_depth"] for s in resid], [s[task][model]["splits"][FIGURE_SPLIT]["accuracy"] for s in resid],
                    "o-", color=color, label=f"{model}: residual stream")
            ax.scatter([s["relative_depth"] for s in heads], [s[task][model]["splits"][FIGURE_SPLIT]["accuracy"] for s in heads],
                       s=12, marker="x" if model == "control" else "o", color=color, alpha=0.6, label=f"{model}: heads")
            if model == "trained" and "test_depth3" in resid[0][task][model]["splits"]:
                ax.plot([s["relative_depth"] for s in resid],
                        [s[task][model]["splits"]["test_depth3"]["accuracy"] for s in resid],
                        "s--", color="C1", markersize=4, label="trained: residual, test_depth3")
        ax.axhline(result["majority"][task]["splits"][FIGURE_SPLIT]["accuracy"], color="k", ls=":", label="majority class")
        ax.set_xticks([0] + [(l + 1) / L for l in range(L)], ["embed"] + [f"L{l}" for l in range(L)])
        ax.set_xlabel("site (residual after block; heads between)")
        ax.set_title(f"{task}: {TASKS[task].split(' (')[0]}", fontsize=9)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel(f"probe accuracy on {FIGURE_SPLIT}")
    axes[1].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.probe", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=list(EVAL_SPLITS), metavar="SPLIT",
                        help="splits to score the probes on (they train on `train`; default: %(default)s)")
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on the probe weights (default: %(default)s)")
    parser.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations per fit (default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES,
                        help="bootstrap resamples of the over-expressions interval (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the untrained control model (default: the run's seed from summary.json, else 42)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: RUN/probe.json); the figure "
                        "probe_layers.png goes beside it")
    args = parser.parse_args(argv)
    unknown = set(args.splits) - set(EVAL_SPLITS)
    if unknown:
        raise UserError(f"--splits: unknown split {sorted(unknown)[0]!r}; choose from {' '.join(EVAL_SPLITS)}")
    if args.l2 < 0 or args.max_iter < 1:
        raise UserError("--l2 must be >= 0 and --max-iter >= 1")

    model, ckpt, cfg, device = open_run(args)
    seed = args.seed if args.seed is not None else run_seed(args.run)
    torch.manual_seed(seed)
    control = CompactTransformer(cfg.model).to(device).eval()
    tic = time.perf_counter()
    batches = load_batches(cfg, ["train", *args.splits], args.limit, device)
    train_depth = batches["train"].depth[batches["train"].depth >= 0]
    classes = {"binary": 2, "exact": int(train_depth.max()) + 1}

    majority = {}
    for task in TASKS:
        y_train = task_targets(train_depth, task)
        cls = int(torch.bincount(y_train).argmax())
        entries = {}
        for split in args.splits:
            b = batches[split]
            keep = b.depth >= 0
            y = task_targets(b.depth[keep], task)
            expr = torch.arange(len(b), device=device)[:, None].expand_as(keep)[keep]
            entries[split] = accuracy_entry(y == cls, expr, args.resamples)
        majority[task] = {"class": cls, "splits": entries}

    per_model = {}
    for kind, m in (("trained", model), ("control", control)):
        print(f"probing the {kind} model ...")
        per_model[kind] = probe_model(m, batches, args.splits, args.fp16, args.l2, args.max_iter, args.resamples, classes)

    sites = []
    for group in site_groups(cfg.model):
        for site in group:
            entry = {"site": site.name, "activation": site.activation, "kind": site.kind, "layer": site.layer,
                     "head": site.head, "relative_depth": site.relative_depth,
                     "relative_layer": None if site.layer is None else relative_layer(site.layer, cfg.model.num_layers)}
            for task in TASKS:
                trained, ctrl = per_model["trained"][site.name][task], per_model["control"][site.name][task]
                entry[task] = {"trained": trained, "control": ctrl,
                               "selectivity": {s: trained["splits"][s]["accuracy"] - ctrl["splits"][s]["accuracy"]
                                               for s in args.splits}}
            sites.append(entry)
    result = {
        "run": str(args.run), "checkpoint": args.checkpoint, "epoch": ckpt["epoch"], "config": cfg.name,
        "seed": run_seed(args.run), "control_seed": seed, "device": str(device), "fp16": args.fp16,
        "limit": args.limit, "l2": args.l2, "max_iter": args.max_iter, "resamples": args.resamples,
        "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "positions": "input positions of the expression's characters (Batch.depth >= 0)",
        "train_split": f"train ({len(batches['train'])} expressions, {len(train_depth)} positions)",
        "tasks": TASKS, "classes": classes,
        "intervals": "ci95_wilson treats tokens as independent (too narrow: positions of one expression are "
                     "correlated); ci95_bootstrap resamples expressions",
        "relative_depth": "embed 0; a head of layer l (l + 0.5) / num_layers; residual after block l (l + 1) / num_layers",
        "majority": majority, "sites": sites,
        "elapsed_s": time.perf_counter() - tic,
    }
    if FIGURE_SPLIT in args.splits:
        print(format_table(result))
    out = args.out or args.run / "probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")
    if FIGURE_SPLIT in args.splits:
        png = out.with_name("probe_layers.png")
        write_figure(result, png, f"{cfg.name} ({args.run.name}): depth probes; control = untrained model, seed {seed}")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
