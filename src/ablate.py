"""Head ablation: a scan of every attention head, and the targeted minimal ablation.

    python -m src.ablate --run runs/pilot [--mode zero|mean] [--device cuda] [--fp16]
    python -m src.ablate --run runs/pilot --heads 2.2 0.3      # these heads ablated together

Every head is ablated in turn (its output before the out-projection, `blocks.L.attn.hook_z[:, :, h]`,
set to zero, or with `--mode mean` to its per-position mean over the training set), and the SPEC
section 5 metrics are recomputed on the same examples as the unablated baseline.

Sign convention: `delta = ablated - baseline`, per split and metric. A harmful ablation gives a
positive delta for the losses (`loss`, `answer_loss`) and a negative delta for the accuracies
(`exact_match`, `end_of_answer_acc`, `answer_token_acc`). `specialization = paren delta - flat
delta` (test_paren minus test_flat): positive for `answer_loss` when the head matters more for
parenthesized expressions. Deltas carry a paired bootstrap 95% interval and p-value (resampling
examples, each keeping its pair), the per-example proportions also an exact McNemar test;
specialization carries the interval of `stats.difference_of_differences` (the two test sets
resampled independently). Heads are ranked by specialization on `answer_loss`, the most sensitive
measure; with one test per head, `p_bonferroni = min(1, p * heads_tested)` is the p-value that
survives the multiple comparison.

The targeted ablation adds heads in ranking order until the joint ablation raises `answer_loss`
on test_paren (interval above zero) and raises it more there than on test_flat (specialization
interval above zero, p < 0.05). The ranking and this test use
the same examples, so the set's p-value is optimistic; the JSON says so and records
`p_bonferroni` (times the number of heads ranked).

Output: DIR/ablation.json and DIR/ablation_heatmap.png (scan, zero mode), DIR/ablation_mean.json and
DIR/ablation_mean_heatmap.png (scan, mean mode), DIR/ablation_heads_<L.H+...>[_mean].json (--heads).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from src import stats
from src.checkpoint import atomic_write_json
from src.data import Batch
from src.errors import UserError, run_main
from src.evaluate import (EVAL_SPLITS, METRIC_PARTS, add_run_arguments, autocast, head_label, load_batches, open_run,
                          per_example_scores, relative_layer, run_seed, summarize)
from src.model import CompactTransformer, HeadAblation
from src.tokenizer import PAD_ID

TEST_SPLITS = ("test_flat", "test_paren", "test_depth3")
RANKING_METRIC = "answer_loss"
ALPHA = 0.05
# per-example correctness behind each per-example proportion, for McNemar's test
PAIRED_BINARY = {"exact_match": "exact_match", "end_of_answer_acc": "eos_correct"}
SIGN_CONVENTION = (
    "delta = ablated - baseline; a harmful ablation raises loss/answer_loss (delta > 0) and lowers "
    "exact_match/end_of_answer_acc/answer_token_acc (delta < 0). specialization = delta(test_paren) - "
    "delta(test_flat): > 0 for answer_loss means the head matters more for parenthesized expressions."
)
METRIC_NAMES = {
    "exact_match": "greedy decoding gives exactly str(result) then <EOS>: the task's accuracy",
    "end_of_answer_acc": "teacher-forced accuracy at the <EOS> position only: the original study's 'accuracy'",
    "answer_token_acc": "teacher-forced accuracy over answer tokens and <EOS>",
    "answer_loss": "mean cross-entropy over answer tokens and <EOS>",
    "loss": "mean cross-entropy over every supervised position",
}


# ---------------------------------------------------------------------------- means for --mode mean


@torch.no_grad()
def training_means(model: CompactTransformer, batch: Batch, fp16: bool = False, chunk: int = 2048) -> torch.Tensor:
    """Per-position mean of every head's output over the training examples: [L, H, T, head_dim].

    Averaged over the non-padding input positions of each position index (position t's mean comes
    from the examples at least t+1 tokens long); a position no example reaches gets the head's mean
    over all non-padding positions.
    """
    cfg = model.cfg
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.num_layers)]
    device = next(model.parameters()).device
    T = batch.inputs.shape[1]
    sums = torch.zeros(cfg.num_layers, T, cfg.num_heads, cfg.head_dim, dtype=torch.float64, device=device)
    counts = torch.zeros(T, dtype=torch.float64, device=device)
    for start in range(0, len(batch), chunk):
        b = batch.select(torch.arange(start, min(start + chunk, len(batch)))).to(device)
        keep = (b.inputs != PAD_ID).double()  # [B, T]
        with autocast(device, fp16):
            cache = model(b.inputs, cache=names).cache
        for layer, name in enumerate(names):
            sums[layer] += torch.einsum("bthd,bt->thd", cache[name].double(), keep)
        counts += keep.sum(0)
    overall = sums.sum(1) / counts.sum()  # [L, H, d]
    per_pos = sums / counts.clamp(min=1).view(1, T, 1, 1)
    per_pos = torch.where((counts > 0).view(1, T, 1, 1), per_pos, overall[:, None])
    means = per_pos.transpose(1, 2).float()  # [L, H, T, d]
    if T < cfg.max_seq_len:  # HeadAblation slices means to the input length
        pad = means[:, :, -1:].expand(-1, -1, cfg.max_seq_len - T, -1)
        means = torch.cat([means, pad], dim=2)
    return means


# ---------------------------------------------------------------------------- effects


def paired_effects(base: dict, ablated: dict, n_tests: int = 1, resamples: int = stats.DEFAULT_RESAMPLES) -> dict:
    """Per metric: baseline, ablated, delta (ablated - baseline), paired bootstrap ci95 and p-value,
    p_bonferroni (times n_tests), and for per-example proportions the exact McNemar test."""
    out = {}
    for metric, (num, den) in METRIC_PARTS.items():
        b_val = (base[num].sum() / base[den].sum()).item()
        a_val = (ablated[num].sum() / ablated[den].sum()).item()
        entry = {"baseline": b_val, "ablated": a_val}
        if math.isnan(a_val) or math.isnan(b_val):
            out[metric] = {**entry, "delta": float("nan")}
            continue
        test = stats.paired_bootstrap(base[num], base[den], ablated[num], ablated[den], resamples=resamples)
        entry.update(delta=test["estimate"], ci95=test["ci95"], p_value=test["p_value"],
                     p_bonferroni=min(1.0, test["p_value"] * n_tests))
        if metric in PAIRED_BINARY:
            mc = stats.mcnemar_exact(base[PAIRED_BINARY[metric]], ablated[PAIRED_BINARY[metric]])
            entry["mcnemar"] = {"lost": mc["only_a"], "gained": mc["only_b"], "p_value": mc["p_value"]}
        out[metric] = entry
    return out


def specialization(base: dict, ablated: dict, n_tests: int = 1, resamples: int = stats.DEFAULT_RESAMPLES,
                   flat: str = "test_flat", paren: str = "test_paren") -> dict:
    """Per metric: delta(paren) - delta(flat) with a 95% interval and p-value
    (stats.difference_of_differences), p_bonferroni, and whether each is significant at 0.05."""
    out = {}
    for metric, (num, den) in METRIC_PARTS.items():
        parts = [(s[split][num], s[split][den]) for split in (flat, paren) for s in (base, ablated)]
        if any(torch.isnan(n).any() for n, _ in parts):
            continue
        dd = stats.difference_of_differences(*parts, resamples=resamples)
        lo, hi = dd["ci95"]
        p_bonf = min(1.0, dd["p_value"] * n_tests)
        out[metric] = {**dd, "p_bonferroni": p_bonf,
                       "significant": bool(dd["p_value"] < ALPHA and (lo > 0 or hi < 0)),
                       "significant_bonferroni": bool(p_bonf < ALPHA and (lo > 0 or hi < 0))}
    return out


def score_splits(model, batches: dict, ablation, fp16: bool, decode: bool = True, splits=None) -> dict:
    splits = batches.keys() if splits is None else splits
    return {s: per_example_scores(model, batches[s], ablation, fp16, decode_answers=decode) for s in splits}


def heads_effect(model, batches, base_scores, heads, means, fp16, resamples, n_tests=1) -> dict:
    """The joint ablation of `heads`: per-split effects and flat-vs-paren specialization."""
    ablation = HeadAblation(set(heads), means)
    scores = score_splits(model, batches, ablation, fp16)
    return {
        "heads": [head_label(*h) for h in sorted(heads)],
        "effects": {s: paired_effects(base_scores[s], scores[s], n_tests, resamples) for s in batches},
        "specialization": specialization(base_scores, scores, n_tests, resamples),
    }


def scan_heads(model, batches, base_scores, means, fp16, resamples, log=print) -> list[dict]:
    """Every head ablated alone, ranked by answer_loss specialization (largest first)."""
    cfg = model.cfg
    n_heads = cfg.num_layers * cfg.num_heads
    rows = []
    tic = time.perf_counter()
    for layer in range(cfg.num_layers):
        for head in range(cfg.num_heads):
            effect = heads_effect(model, batches, base_scores, {(layer, head)}, means, fp16, resamples, n_heads)
            rows.append({"head": head_label(layer, head), "layer": layer, "head_index": head,
                         "relative_layer": relative_layer(layer, cfg.num_layers),
                         "splits": effect["effects"], "specialization": effect["specialization"]})
        log(f"  layer {layer}: {cfg.num_heads} heads scanned ({time.perf_counter() - tic:.1f} s)")
    rows.sort(key=lambda r: -r["specialization"][RANKING_METRIC]["estimate"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def is_paren_specific(spec: dict, paren_delta: dict) -> bool:
    """The targeted ablation's criterion, on answer_loss: the ablation hurts parenthesized
    expressions (paren delta > 0, interval above 0) and hurts them more than flat ones
    (specialization > 0, interval above 0, p < 0.05)."""
    return (spec["estimate"] > 0 and spec["ci95"][0] > 0 and spec["p_value"] < ALPHA
            and paren_delta["estimate"] > 0 and paren_delta["ci95"][0] > 0)


def targeted_ablation(model, batches, base_scores, ranking: list[dict], means, fp16, resamples, log=print) -> dict:
    """Smallest prefix of the ranking whose joint ablation is significantly paren-specific."""
    n_heads = len(ranking)
    order = [(r["layer"], r["head_index"]) for r in ranking]
    pair = ("test_flat", "test_paren")
    num, den = METRIC_PARTS[RANKING_METRIC]
    steps, found = [], False
    for k in range(1, n_heads + 1):
        ablation = HeadAblation(set(order[:k]), means)
        # the search needs answer_loss only: teacher forcing, no greedy decoding
        scores = score_splits(model, batches, ablation, fp16, decode=False, splits=pair)
        spec = specialization(base_scores, scores, 1, resamples)[RANKING_METRIC]
        b, a = base_scores["test_paren"], scores["test_paren"]
        paren = stats.paired_bootstrap(b[num], b[den], a[num], a[den], resamples=resamples)
        steps.append({"size": k, "heads": [head_label(*h) for h in order[:k]],
                      "answer_loss_specialization": spec, "answer_loss_delta_paren": paren})
        log(f"  targeted, {k} head(s): answer_loss specialization {fmt_ci(spec)} p={spec['p_value']:.4f}; "
            f"paren delta {fmt_ci(paren)}")
        found = is_paren_specific(spec, paren)
        if found:
            break
    result = {
        "found": found,
        "criterion": f"on {RANKING_METRIC}, heads added in ranking order until the joint ablation raises it on "
                     f"test_paren (delta > 0, 95% interval above 0) and raises it more there than on test_flat "
                     f"(specialization > 0, 95% interval above 0, p < {ALPHA})",
        "heads_ranked": n_heads,
        "sets_tested": len(steps),
        "steps": steps,
        "note": "the ranking was made on the same examples that test the set, so its p-value is optimistic; "
                "p_bonferroni multiplies it by the number of heads ranked",
    }
    if not found:
        result.update(heads=None, size=None,
                      message=f"no prefix of the ranking (up to all {n_heads} heads) gives a significant "
                              "paren-specific answer_loss effect")
        return result
    k = len(steps)
    final = heads_effect(model, batches, base_scores, set(order[:k]), means, fp16, resamples, n_tests=n_heads)
    result.update(heads=final["heads"], size=k, effects=final["effects"], specialization=final["specialization"])
    return result


# ---------------------------------------------------------------------------- output


def heads_arg(text: str, cfg) -> tuple[int, int]:
    try:
        layer, head = (int(x) for x in text.replace("L", "").replace("H", "").replace("-", ".").split("."))
    except ValueError:
        raise UserError(f"--heads {text!r}: write a head as LAYER.HEAD, e.g. 2.2") from None
    if not (0 <= layer < cfg.model.num_layers and 0 <= head < cfg.model.num_heads):
        raise UserError(f"--heads {text!r}: the model has layers 0-{cfg.model.num_layers - 1} and heads "
                        f"0-{cfg.model.num_heads - 1}")
    return layer, head


def fmt_ci(entry: dict, digits: int = 4) -> str:
    lo, hi = entry.get("ci95", (float("nan"), float("nan")))
    value = entry.get("estimate", entry.get("delta"))
    return f"{value:+.{digits}f} [{lo:+.{digits}f},{hi:+.{digits}f}]"


def format_scan(rows: list[dict]) -> str:
    head = (f"{'rank':>4} {'head':<7} {'rel':>4}  {'answer_loss spec. [95% CI]':>31} {'p':>7} {'p_bonf':>7}  "
            f"{'dAL flat':>9} {'dAL paren':>9} {'dAL d3':>9}  {'dEM paren':>9} {'dEOA flat':>9} {'dEOA paren':>10}")
    lines = [head]
    for r in rows:
        s, sp = r["specialization"][RANKING_METRIC], r["splits"]
        em = sp["test_paren"]["exact_match"].get("delta", float("nan"))
        d3 = sp.get("test_depth3", {}).get(RANKING_METRIC, {}).get("delta", float("nan"))
        lines.append(
            f"{r['rank']:>4} {r['head']:<7} {r['relative_layer']:>4.2f}  {fmt_ci(s):>31} {s['p_value']:>7.4f} "
            f"{s['p_bonferroni']:>7.4f}  {sp['test_flat'][RANKING_METRIC]['delta']:>+9.4f} "
            f"{sp['test_paren'][RANKING_METRIC]['delta']:>+9.4f} {d3:>+9.4f}  {em:>+9.4f} "
            f"{sp['test_flat']['end_of_answer_acc']['delta']:>+9.4f} {sp['test_paren']['end_of_answer_acc']['delta']:>+10.4f}"
        )
    lines.append("dAL = delta answer_loss, dEM = delta exact_match, dEOA = delta end_of_answer_acc (ablated - baseline); "
                 "spec. = paren delta - flat delta")
    return "\n".join(lines)


def format_effects(effects: dict) -> str:
    lines = [f"{'split':<12} " + "  ".join(f"{m:>32}" for m in METRIC_PARTS)]
    for split, per_metric in effects.items():
        lines.append(f"{split:<12} " + "  ".join(f"{fmt_ci(per_metric[m]):>32}" for m in METRIC_PARTS))
    return "\n".join(lines)


def write_heatmap(rows: list[dict], cfg, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.full((cfg.num_layers, cfg.num_heads), float("nan"))
    marks = {}
    for r in rows:
        s = r["specialization"][RANKING_METRIC]
        grid[r["layer"], r["head_index"]] = s["estimate"]
        marks[(r["layer"], r["head_index"])] = "**" if s["significant_bonferroni"] else ("*" if s["significant"] else "")
    bound = max(float(grid.abs().nan_to_num(0).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(2.2 + 0.8 * cfg.num_heads, 1.2 + 0.55 * cfg.num_layers), dpi=100)
    im = ax.imshow(grid.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for (layer, head), mark in marks.items():
        dark = abs(float(grid[layer, head])) > 0.6 * bound
        ax.text(head, layer, f"{grid[layer, head]:+.3f}{mark}", ha="center", va="center", fontsize=7,
                color="white" if dark else "black")
    ax.set_xticks(range(cfg.num_heads), [f"H{h}" for h in range(cfg.num_heads)])
    ax.set_yticks(range(cfg.num_layers), [f"L{layer}" for layer in range(cfg.num_layers)])
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax).set_label("paren delta - flat delta", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def default_out(run: Path, mode: str, heads) -> Path:
    suffix = "" if mode == "zero" else "_mean"
    if heads:
        return run / f"ablation_heads_{'+'.join(f'{l}.{h}' for l, h in sorted(heads))}{suffix}.json"
    return run / f"ablation{suffix}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.ablate", description=__doc__.split("\n\n")[0],
        epilog=SIGN_CONVENTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--mode", choices=("zero", "mean"), default="zero",
                        help="zero: a head's output is set to 0; mean: to its per-position mean over the training "
                        "set (non-padding positions)")
    parser.add_argument("--heads", nargs="+", default=None, metavar="L.H",
                        help="ablate these heads together (e.g. --heads 0.2 0.3 or 0.2,0.3) instead of the scan")
    parser.add_argument("--splits", nargs="+", default=list(TEST_SPLITS), metavar="SPLIT",
                        help="splits to score (must include test_flat and test_paren; default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: RUN/ablation.json; ablation_mean.json with --mode mean; "
                        "ablation_heads_<heads>.json with --heads); the heatmap goes beside it")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES,
                        help="bootstrap resamples (default: %(default)s; the smallest p-value is 2/N)")
    args = parser.parse_args(argv)
    for required in ("test_flat", "test_paren"):
        if required not in args.splits:
            raise UserError(f"--splits must include {required}: specialization compares test_paren with test_flat")
    unknown = set(args.splits) - set(EVAL_SPLITS)
    if unknown:
        raise UserError(f"--splits: unknown split {sorted(unknown)[0]!r}; choose from {' '.join(EVAL_SPLITS)}")
    if args.resamples < 100:
        raise UserError(f"--resamples {args.resamples}: use at least 100")

    model, ckpt, cfg, device = open_run(args)
    heads = None
    if args.heads:
        heads = {heads_arg(t, cfg) for item in args.heads for t in item.split(",") if t}
    out_path = args.out or default_out(args.run, args.mode, heads)
    tic = time.perf_counter()
    batches = load_batches(cfg, args.splits, args.limit, device)
    means, mean_over = None, None
    if args.mode == "mean":
        train = load_batches(cfg, ["train"], args.limit, device)["train"]
        means = training_means(model, train, args.fp16)
        mean_over = (f"per-position mean of blocks.L.attn.hook_z over the non-padding input positions of "
                     f"{len(train)} training examples ({cfg.data.train}); shape [L, H, T, head_dim]")

    print(f"baseline on {', '.join(f'{s} ({len(b)})' for s, b in batches.items())} ...")
    base_scores = score_splits(model, batches, None, args.fp16)
    baseline = {s: summarize(v) for s, v in base_scores.items()}
    result = {
        "run": str(args.run), "checkpoint": args.checkpoint, "epoch": ckpt["epoch"],
        "config": cfg.name, "seed": run_seed(args.run), "device": str(device), "fp16": args.fp16,
        "mode": args.mode, "mean_over": mean_over, "limit": args.limit, "resamples": args.resamples,
        "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "sign_convention": SIGN_CONVENTION, "metrics": METRIC_NAMES, "ranking_metric": RANKING_METRIC,
        "baseline": baseline,
    }
    if heads:
        effect = heads_effect(model, batches, base_scores, heads, means, args.fp16, args.resamples)
        result.update(effect)
        print(f"heads {', '.join(effect['heads'])} ablated together ({args.mode}): delta [95% CI] per split")
        print(format_effects(effect["effects"]))
        s = effect["specialization"][RANKING_METRIC]
        print(f"answer_loss specialization (paren - flat): {fmt_ci(s)}  p={s['p_value']:.4f}")
    else:
        n_heads = cfg.model.num_layers * cfg.model.num_heads
        print(f"scanning {n_heads} heads ({args.mode} ablation) ...")
        rows = scan_heads(model, batches, base_scores, means, args.fp16, args.resamples)
        result["scan"] = {"heads_tested": n_heads,
                          "bonferroni": f"p_bonferroni = min(1, p * {n_heads}); significant_bonferroni uses it",
                          "heads": rows}
        print(format_scan(rows))
        print("targeted minimal ablation ...")
        targeted = targeted_ablation(model, batches, base_scores, rows, means, args.fp16, args.resamples)
        result["targeted"] = targeted
        if targeted["found"]:
            print(f"smallest paren-specific set: {', '.join(targeted['heads'])}; delta [95% CI] per split")
            print(format_effects(targeted["effects"]))
        else:
            print(targeted["message"])
    result["elapsed_s"] = time.perf_counter() - tic
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, result)
    print(f"wrote {out_path}")
    if not heads:
        png = out_path.with_name(out_path.stem + "_heatmap.png")
        write_heatmap(result["scan"]["heads"], cfg.model, png,
                      f"{cfg.name} ({args.run.name}): answer_loss specialization, {args.mode} ablation\n"
                      "* p<0.05, ** Bonferroni p<0.05")
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
