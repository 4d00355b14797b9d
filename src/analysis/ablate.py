"""Head ablation: a scan of every attention head under two ablation modes, and the targeted set.

    python -m src.analysis.ablate --run runs/pilot [--modes zero,mean] [--device cuda] [--precision fp32|fp16|bf16]
    python -m src.analysis.ablate --run runs/pilot --heads 2.2,0.3        # these heads ablated together

Every head is ablated in turn (its output before the out-projection, `blocks.L.attn.hook_z[:, :, h]`,
set to zero, or under `mean` to its per-position mean over the training set), and the metrics of
src.analysis.evaluate are recomputed on the same examples as the unablated baseline, on test_flat,
test_paren_matched (the flat expressions with value-preserving brackets), test_paren and test_depth3.

Effects, all paired (the same examples with and without the ablation):
    effects[split][metric]      ablated - baseline; exact McNemar for exact_match and
                                end_of_answer_acc, a paired t-test for the others
    bracket_specificity[metric] (ablated - baseline on test_paren_matched) - (ablated - baseline on
                                test_flat): the same expressions with and without brackets, so a
                                non-zero value is about brackets, not content; the exact sign test on
                                per-example contrasts for the yes/no metrics, a paired t-test otherwise.
                                > 0 for answer_loss (< 0 for exact_match): the head matters more when
                                brackets are present.
Decisions use VERDICT_METRICS (exact_match, answer_loss) and Holm over declared families:
    head_effect   heads x modes x verdict metrics x the four splits
    head_bracket  heads x modes x verdict metrics (bracket_specificity)
Every test entry carries test, estimate, ci95, p_value, p_floor, and in a family p_adjusted and
significant. `head_findings` says, per head, under which modes (zero, mean, both) each finding holds.

exact_match here is teacher-forced (src.metrics.EXACT_MATCH_METHODS): every answer token and <EOS> the
argmax given the true prefix, which equals greedy decoding and costs one forward pass instead of one per
generated token; ablation.json's `exact_match_method` holds the unablated model's exact_match both ways.

Targeted set (per mode): heads are ranked by answer_loss bracket_specificity on the even-indexed
examples only (from the scan); the prefixes of that ranking (1 to --max-set-size heads) are then
ablated jointly and tested on the odd-indexed examples, Holm over the prefixes tried (family
targeted_<mode>). The smallest prefix whose bracket_specificity is significantly positive there is
the targeted set. Selection and test never share an example.

Output: RUN/ablation.json (schema ablation/2; keys in docs/SCHEMAS.md) and RUN/ablation_heatmap.png,
or RUN/ablation_heads_<L.H+...>.json with --heads; under --limit N, RUN/ablation.limitN.json and so on.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from src import stats
from src.rundir.atomic import write_result
from src.cli import ArgumentParser, check_output_file, comma_list, int_in, path_arg
from src.data import Batch
from src.device import autocast
from src.errors import UserError, run_main
from src.metrics import (EXACT_MATCH_METHODS, METRIC_DEFINITIONS, METRICS, SIGN_CONVENTION, TEST_SPLITS, VERDICT_METRICS, contrast, paired_difference, per_example_scores, summarize)
from src.analysis.common import (Run, RunData, add_run_arguments, analysis_main, head_label, progress, relative_layer,
                                 scores_by_split)
from src.model import CompactTransformer, HeadAblation, Hooks
from src.plotting import png_bytes, pyplot
from src.text import plain_text, shown
from src.rundir.results import stamp
from src.tokenizer import PAD_ID

MODES = ("zero", "mean")
RANKING_METRIC = "answer_loss"
FLAT, MATCHED = "test_flat", "test_paren_matched"
DEFAULT_MAX_SET_SIZE = 8
MAX_SET_SIZE = 1000  # prefixes tried; more heads than any model here has, each one more Holm comparison
MODE_DEFINITIONS = {
    "zero": "the head's output (hook_z) set to 0",
    "mean": "the head's output set to its per-position mean over the non-padding positions of the training set",
}


# ---------------------------------------------------------------------------- means for the mean mode


@torch.no_grad()
def training_means(model: CompactTransformer, batch: Batch, precision: str = "fp32", chunk: int = 2048) -> torch.Tensor:
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
        with autocast(device, precision):
            recorded = model(b.inputs, hooks=Hooks(record=names)).activations
        for layer, name in enumerate(names):
            sums[layer] += torch.einsum("bthd,bt->thd", recorded[name].double(), keep)
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


EXACT_MATCH_METHOD = "teacher_forced"  # src.metrics.EXACT_MATCH_METHODS: equal to greedy decoding, one forward pass


def score_splits(model, batches: dict, ablation, precision: str, exact_match: str | None = EXACT_MATCH_METHOD) -> dict:
    return {s: per_example_scores(model, b, ablation, precision, exact_match=exact_match) for s, b in batches.items()}


def exact_match_check(greedy: dict, base_scores: dict) -> dict:
    """The unablated model's exact_match both ways on every split: the teacher-forced outcomes the
    scan uses (`base_scores`) against greedy decoding (`greedy`, the definition), and how many
    examples they disagree on."""
    return {s: {"teacher_forced": int(base_scores[s]["exact_match"].sum()), "greedy": int(greedy[s]["exact_match"].sum()),
                "disagreements": int((base_scores[s]["exact_match"] != greedy[s]["exact_match"]).sum()),
                "n_examples": len(greedy[s]["exact_match"])} for s in greedy}


def subset(scores: dict, idx: torch.Tensor) -> dict:
    """Per-example scores of the examples `idx` only."""
    return {k: v[idx] for k, v in scores.items()}


def split_effects(base: dict, ablated: dict) -> dict:
    """{split: {metric: paired difference ablated - baseline}} for every split scored."""
    return {s: {m: paired_difference(m, base[s], ablated[s], ("baseline", "ablated")) for m in METRICS} for s in ablated}


def bracket_specificity(base: dict, ablated: dict, metrics=tuple(METRICS)) -> dict:
    """{metric: (ablated - baseline on test_paren_matched) - (ablated - baseline on test_flat)}, per
    example pairs of a flat expression and its bracketed twin."""
    terms = lambda m: [(1, ablated[MATCHED]), (-1, base[MATCHED]), (-1, ablated[FLAT]), (1, base[FLAT])]  # noqa: E731
    return {m: contrast(m, terms(m)) for m in metrics}


def verdict_entries(row: dict):
    """(member suffix, entry, family name) of each verdict test of a scan row or a --heads result."""
    for split, per in row["effects"].items():
        for m in VERDICT_METRICS:
            yield f"{split}/{m}", per[m], "head_effect"
    for m in VERDICT_METRICS:
        yield f"bracket/{m}", row["bracket_specificity"][m], "head_bracket"


def close_families(rows_by_mode: dict[str, list[dict]], names=("head_effect", "head_bracket")) -> dict:
    """Holm over each family of the scan: every verdict test of every head under every mode."""
    families = {name: stats.Family(name) for name in names}
    for mode, rows in rows_by_mode.items():
        for row in rows:
            for suffix, entry, family in verdict_entries(row):
                if math.isfinite(entry.get("p_value", math.nan)):
                    families[family].add(f"{mode}/{row['head']}/{suffix}", entry)
    return {name: fam.close() for name, fam in families.items()}


def head_findings(rows_by_mode: dict[str, list[dict]], families: dict | None = None) -> list[dict]:
    """Per head: under which ablation modes each verdict test is significant after Holm.

    With `families` (close_families' declared dicts), a test that is significant under no mode and
    whose family part (its family's members of the same test, e.g. the McNemar ones) cannot reach Holm's
    first threshold holds "cannot decide (largest d = ...)", not "neither": no data could have made it
    significant."""
    def holds(modes: list[str]) -> str:
        return {0: "neither", 2: "both"}.get(len(modes), modes[0] if modes else "neither")

    def undecidable(entry: dict) -> str | None:
        declared = (families or {}).get(entry.get("family"))
        if declared is None or stats.decidable(declared, entry.get("test")):
            return None
        return declared.get("verdict_by_test", {}).get(entry.get("test"), declared["verdict"])

    by_head: dict[str, dict] = {}
    for mode, rows in rows_by_mode.items():
        for row in rows:
            h = by_head.setdefault(row["head"], {"head": row["head"], "layer": row["layer"], "head_index": row["head_index"],
                                                 "relative_layer": row["relative_layer"], "tests": {}})
            for suffix, entry, _ in verdict_entries(row):
                t = h["tests"].setdefault(suffix, {"significant_under": [], "estimate": {}, "p_adjusted": {},
                                                   "p_floor": {}, "undecidable": []})
                t["estimate"][mode] = entry.get("estimate")
                t["p_adjusted"][mode] = entry.get("p_adjusted")
                t["p_floor"][mode] = entry.get("p_floor")
                if entry.get("significant"):
                    t["significant_under"].append(mode)
                elif undecidable(entry):
                    t["undecidable"].append(undecidable(entry))
    for h in by_head.values():
        for t in h["tests"].values():
            t["holds_under"] = holds(t["significant_under"]) if len(rows_by_mode) == 2 else (
                "/".join(t["significant_under"]) or "neither")
            why = t.pop("undecidable")
            if not t["significant_under"] and why and len(why) == len(rows_by_mode):
                t["holds_under"] = "cannot decide"
                t["cannot_decide"] = why[0]
    return list(by_head.values())


def scan_heads(model, batches, base_scores, means, precision, log=print, bar=None, mode: str = "") -> tuple[list[dict], dict]:
    """Every head ablated alone: rows ranked by answer_loss bracket_specificity (largest first), and
    each head's per-example scores on the flat and matched splits (for the targeted selection).
    `bar`: a progress bar factory (Run.bar), one step per head."""
    cfg = model.cfg
    rows, kept = [], {}
    tic = time.perf_counter()
    ticker = (bar or progress)(total=cfg.num_layers * cfg.num_heads, desc=f"{mode} ablation scan".strip(), unit="head",
                               disable=bar is None)
    for layer in range(cfg.num_layers):
        for head in range(cfg.num_heads):
            ticker.update()
            scores = score_splits(model, batches, HeadAblation({(layer, head)}, means), precision)
            rows.append({"head": head_label(layer, head), "layer": layer, "head_index": head,
                         "relative_layer": relative_layer(layer, cfg.num_layers),
                         "effects": split_effects(base_scores, scores),
                         "bracket_specificity": bracket_specificity(base_scores, scores)})
            kept[(layer, head)] = {s: scores[s] for s in (FLAT, MATCHED)}
        log(f"  layer {layer}: {cfg.num_heads} heads scanned ({time.perf_counter() - tic:.1f} s)")
    ticker.close()
    rows.sort(key=lambda r: -r["bracket_specificity"][RANKING_METRIC]["estimate"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows, kept


# ---------------------------------------------------------------------------- targeted set


def halves(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(selection, test) example indices: even and odd, disjoint, pairs of matched splits kept together."""
    return torch.arange(0, n, 2), torch.arange(1, n, 2)


def targeted_ablation(model, batches, base_scores, head_scores: dict, means, precision, mode: str, max_size: int,
                      log=print, bar=None) -> dict:
    """Rank heads on the selection half, test the prefixes of the ranking on the test half (Holm)."""
    num_sel, num_test = {}, {}
    for s, b in batches.items():
        num_sel[s], num_test[s] = halves(len(b))
    base_sel = {s: subset(base_scores[s], num_sel[s]) for s in (FLAT, MATCHED)}
    selection = []
    for head, scores in head_scores.items():
        abl_sel = {s: subset(scores[s], num_sel[s]) for s in (FLAT, MATCHED)}
        est = bracket_specificity(base_sel, abl_sel, (RANKING_METRIC,))[RANKING_METRIC]["estimate"]
        selection.append((est, head))
    selection.sort(key=lambda t: -t[0])
    order = [h for _, h in selection]
    test_batches = {s: batches[s].select(num_test[s]) for s in batches}
    base_test = {s: subset(base_scores[s], num_test[s]) for s in batches}
    family = stats.Family(f"targeted_{mode}")
    steps = []
    sizes = range(1, min(max_size, len(order)) + 1)
    for k in (bar(sizes, desc=f"targeted set ({mode})", unit="prefix") if bar is not None else sizes):
        ablation = HeadAblation(set(order[:k]), means)
        # the test needs answer_loss only: teacher forcing, no greedy decoding
        pair = {s: test_batches[s] for s in (FLAT, MATCHED)}
        scores = score_splits(model, pair, ablation, precision, exact_match=None)
        spec = bracket_specificity(base_test, scores, (RANKING_METRIC,))[RANKING_METRIC]
        family.add(f"{mode}/prefix_{k}", spec)
        steps.append({"size": k, "heads": [head_label(*h) for h in order[:k]],
                      f"{RANKING_METRIC}_bracket_specificity": spec})
    declared = family.close()
    for step in steps:
        spec = step[f"{RANKING_METRIC}_bracket_specificity"]
        log(f"  targeted ({mode}), {step['size']} head(s): answer_loss bracket_specificity {fmt_ci(spec)} "
            f"p_adjusted={spec['p_adjusted']:.3g}")
    chosen = next((s for s in steps if s[f"{RANKING_METRIC}_bracket_specificity"]["significant"]
                   and s[f"{RANKING_METRIC}_bracket_specificity"]["estimate"] > 0), None)
    result = {
        "mode": mode,
        "selection": f"heads ranked by {RANKING_METRIC} bracket_specificity on the even-indexed examples "
                     f"({len(num_sel[FLAT])} pairs), from the scan",
        "test": f"prefixes of that ranking ablated jointly and tested on the odd-indexed examples "
                f"({len(num_test[FLAT])} pairs and the odd half of every other split); Holm over the {len(steps)} "
                "prefixes tried; the smallest prefix with a significantly positive bracket_specificity is the set",
        "selection_examples": "even indices", "test_examples": "odd indices",
        "ranking_on_selection": [{"head": head_label(*h), "estimate": e} for e, h in selection],
        "sets_tried": len(steps), "steps": steps, "family": declared, "found": chosen is not None,
    }
    if chosen is None:
        best = min(steps, key=lambda s: s[f"{RANKING_METRIC}_bracket_specificity"]["p_adjusted"])
        result.update(heads=None, size=None,
                      message=f"no prefix of up to {len(steps)} heads has a significant bracket-specific answer_loss "
                              f"effect on the held-out half (smallest p_adjusted {best[f'{RANKING_METRIC}_bracket_specificity']['p_adjusted']:.3g}, "
                              f"at {best['size']} head(s))")
        return result
    k = chosen["size"]
    scores = score_splits(model, test_batches, HeadAblation(set(order[:k]), means), precision)
    result.update(heads=chosen["heads"], size=k,
                  effects_on_test_half=split_effects(base_test, scores),
                  bracket_specificity_on_test_half=bracket_specificity(base_test, scores))
    return result


# ---------------------------------------------------------------------------- output


def parse_head(item: str) -> tuple[int, int]:
    """One head, written LAYER.HEAD (or L<layer>-H<head>, as the result files label heads)."""
    text = item.replace("L", "").replace("H", "").replace("-", ".")
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError("is not a head; write a head as LAYER.HEAD, e.g. 2.2")
    return int(parts[0]), int(parts[1])


HEADS_FORM = "heads as LAYER.HEAD separated by commas, each once, e.g. 2.2,0.3"
heads_list = comma_list(item=parse_head, what=HEADS_FORM)
modes_list = comma_list(MODES, what=f"a comma-separated list of distinct modes from {', '.join(MODES)}")


def fmt_ci(entry: dict, digits: int = 4) -> str:
    lo, hi = entry.get("ci95", (math.nan, math.nan))
    return f"{entry.get('estimate', math.nan):+.{digits}f} [{lo:+.{digits}f},{hi:+.{digits}f}]"


SCAN_LEGEND = (
    "columns: rel = relative layer (layer / (layers - 1)); dAL = change of answer_loss (ablated - baseline, nats per "
    "token; > 0: the ablation hurts); dEM = change of exact_match (< 0: it hurts); bracket spec. dAL = dAL on "
    "test_paren_matched - dAL on test_flat, [its 95% interval]; p_adj = p-value after Holm over the scan's family "
    "(head_bracket for the bracket specificity, head_effect for dEM matched)")


def format_scan(rows: list[dict], mode: str, top: int = 10) -> str:
    lines = [f"{mode} ablation, top {min(top, len(rows))} of {len(rows)} by answer_loss bracket_specificity",
             f"{'rank':>4} {'head':<7} {'rel':>4}  {'bracket spec. dAL [95% CI]':>31} {'p_adj':>8}  "
             f"{'dAL flat':>9} {'dAL matched':>11} {'dEM matched':>11} {'p_adj':>8}"]
    for r in rows[:top]:
        s, e = r["bracket_specificity"][RANKING_METRIC], r["effects"]
        em = e[MATCHED]["exact_match"]
        lines.append(f"{r['rank']:>4} {r['head']:<7} {r['relative_layer']:>4.2f}  {fmt_ci(s):>31} "
                     f"{s.get('p_adjusted', math.nan):>8.3g}  {e[FLAT][RANKING_METRIC]['estimate']:>+9.4f} "
                     f"{e[MATCHED][RANKING_METRIC]['estimate']:>+11.4f} {em.get('estimate', math.nan):>+11.4f} "
                     f"{em.get('p_adjusted', math.nan):>8.3g}")
    return "\n".join(lines)


def format_verdicts(families: dict) -> str:
    """One line per family (and per test within a family that mixes tests): what it can conclude."""
    lines = []
    for name, declared in families.items():
        lines.append(f"family {name} ({declared['size']} tests): {declared['verdict']}")
        for test, verdict in declared.get("verdict_by_test", {}).items():
            lines.append(f"  {test}: {verdict}")
    return "\n".join(lines)


def format_effects(effects: dict) -> str:
    lines = [f"{'split':<18} " + "  ".join(f"{m:>32}" for m in METRICS)]
    for split, per_metric in effects.items():
        lines.append(f"{split:<18} " + "  ".join(f"{fmt_ci(per_metric[m]):>32}" for m in METRICS))
    return "\n".join(lines)


@plain_text()  # names drawn as written: no mathtext
def render_heatmap(rows_by_mode: dict, cfg, title: str) -> bytes:
    """PNG bytes of the heads x modes heatmap of answer_loss bracket_specificity."""
    title = shown(title)  # a run directory's name may hold bytes that are not UTF-8
    plt = pyplot()

    modes = list(rows_by_mode)
    grids, marks = {}, {}
    for mode, rows in rows_by_mode.items():
        grid = torch.full((cfg.num_layers, cfg.num_heads), math.nan)
        for r in rows:
            s = r["bracket_specificity"][RANKING_METRIC]
            grid[r["layer"], r["head_index"]] = s["estimate"]
            marks[(mode, r["layer"], r["head_index"])] = "*" if s.get("significant") else ""
        grids[mode] = grid
    bound = max(max(float(g.abs().nan_to_num(0).max()) for g in grids.values()), 1e-6)
    fig, axes = plt.subplots(1, len(modes), figsize=(len(modes) * (1.6 + 0.75 * cfg.num_heads), 1.4 + 0.5 * cfg.num_layers),
                             dpi=100, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        grid = grids[mode]
        im = ax.imshow(grid.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        for layer in range(cfg.num_layers):
            for head in range(cfg.num_heads):
                value = float(grid[layer, head])
                ax.text(head, layer, f"{value:+.3f}{marks.get((mode, layer, head), '')}", ha="center", va="center",
                        fontsize=6, color="white" if abs(value) > 0.6 * bound else "black")
        ax.set_xticks(range(cfg.num_heads), [f"H{h}" for h in range(cfg.num_heads)])
        ax.set_yticks(range(cfg.num_layers), [f"L{layer}" for layer in range(cfg.num_layers)])
        ax.set_title(f"{mode} ablation", fontsize=8)
    fig.colorbar(im, ax=list(axes[0])).set_label("answer_loss: matched delta - flat delta", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return png_bytes(fig)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m src.analysis.ablate", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--modes", type=modes_list, default="zero,mean",
                        help="ablation modes, comma-separated, each once (default: %(default)s). zero: a head's output "
                        "set to 0; mean: to its per-position mean over the training set (non-padding positions)")
    parser.add_argument("--heads", type=heads_list, default=None, metavar="L.H,...",
                        help="ablate these heads together (e.g. 0.2,0.3; each once) instead of the scan; written to "
                        "RUN/ablation_heads_<heads>.json")
    parser.add_argument("--max-set-size", type=int_in(1, MAX_SET_SIZE), default=DEFAULT_MAX_SET_SIZE,
                        help=f"largest prefix of the ranking the targeted set tries, 1 to {MAX_SET_SIZE} (default: "
                        "%(default)s; each prefix tried is one comparison of the Holm family)")
    parser.add_argument("--out", type=path_arg, default=None,
                        help="JSON path (default: RUN/ablation.json, or RUN/ablation_heads_<heads>.json); the heatmap "
                        "goes beside it")
    return parser


def ablation_output(run: Run, heads, out: Path | None) -> Path:
    """--out, else RUN/ablation.json (RUN/ablation_heads_<L.H+...>.json with --heads), NAME.limitN.json under --limit."""
    if out is not None and out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file path such as {out / 'ablation.json'}")
    name = f"ablation_heads_{'+'.join(f'{l}.{h}' for l, h in sorted(set(heads)))}.json" if heads else "ablation.json"
    return check_output_file(run.output(name, out), "--out" if out else "output", "ablation.json")


def ablate_run(run: Run, data: RunData, args) -> dict:
    """The head scan and targeted sets (or the --heads ablation) of an opened run; writes the JSON and,
    for the scan, the heatmap; returns the result."""
    modes, heads = args.modes, args.heads
    # every input is checked before any computation, every output path before anything is written
    if heads is not None:
        try:
            run.model.check_ablation(HeadAblation(set(heads)))
        except ValueError as err:
            raise UserError(f"--heads: {err}") from None
    out_path = ablation_output(run, heads, args.out)
    png = None if heads else check_output_file(out_path.with_name(out_path.stem + "_heatmap.png"), "heatmap")
    model, cfg, precision = run.model, run.cfg, run.precision
    tic = time.perf_counter()
    batches = data.batches(TEST_SPLITS)
    means = {"zero": None}
    if "mean" in modes:
        means["mean"] = training_means(model, data.batches(["train"])["train"], precision)

    if run.limit is not None:
        print(run.titled("head ablation"))
    print(f"baseline on {', '.join(f'{s} ({len(b)})' for s, b in batches.items())} ...")
    base_scores = score_splits(model, batches, None, precision)
    result = {
        "run": str(run.path), "checkpoint": run.checkpoint, "epoch": run.ckpt["epoch"], "step": run.ckpt.get("step"),
        "config": cfg.name, "seed": run.seed, "device": str(run.device), "precision": precision,
        "fp16": precision == "fp16", "modes": {m: MODE_DEFINITIONS[m] for m in modes}, "limit": run.limit,
        "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "sign_convention": SIGN_CONVENTION, "metric_definitions": METRIC_DEFINITIONS,
        "verdict_metrics": list(VERDICT_METRICS), "ranking_metric": RANKING_METRIC,
        "baseline": {s: summarize(v) for s, v in base_scores.items()},
        "exact_match_method": {"method": EXACT_MATCH_METHOD, "definition": EXACT_MATCH_METHODS[EXACT_MATCH_METHOD],
                               "check_against_greedy": exact_match_check(
                                   scores_by_split(run, batches, "greedy decoding (exact_match check)"), base_scores)},
    }
    if heads:
        rows = {}
        for mode in modes:
            scores = score_splits(model, batches, HeadAblation(set(heads), means[mode]), precision)
            rows[mode] = [{"head": "+".join(head_label(*h) for h in sorted(set(heads))), "effects": split_effects(base_scores, scores),
                           "bracket_specificity": bracket_specificity(base_scores, scores)}]
        result["families"] = close_families(rows)
        print(format_verdicts(result["families"]))
        result["heads"] = [head_label(*h) for h in sorted(set(heads))]
        result["by_mode"] = {mode: {k: v for k, v in r[0].items() if k != "head"} for mode, r in rows.items()}
        for mode in modes:
            print(f"heads {', '.join(result['heads'])} ablated together ({mode}): ablated - baseline [95% CI] per split")
            print(format_effects(result["by_mode"][mode]["effects"]))
    else:
        n_heads = cfg.model.num_layers * cfg.model.num_heads
        rows_by_mode, kept = {}, {}
        for mode in modes:
            print(f"scanning {n_heads} heads ({mode} ablation) ...")
            rows_by_mode[mode], kept[mode] = scan_heads(model, batches, base_scores, means[mode], precision,
                                                        log=lambda *_: None, bar=run.bar, mode=mode)
        result["families"] = close_families(rows_by_mode)
        result["scan"] = {"heads_tested": n_heads, "modes": rows_by_mode}
        result["head_findings"] = head_findings(rows_by_mode, result["families"])
        print(format_verdicts(result["families"]))
        for mode in modes:
            print(format_scan(rows_by_mode[mode], mode))
        print(SCAN_LEGEND)
        result["targeted"] = {}
        for mode in modes:
            print(f"targeted set ({mode}) ...")
            t = targeted_ablation(model, batches, base_scores, kept[mode], means[mode], precision, mode, args.max_set_size,
                                  bar=run.bar)
            result["targeted"][mode] = t
            print(f"  set: {', '.join(t['heads'])}" if t["found"] else f"  {t['message']}")
    result["elapsed_s"] = time.perf_counter() - tic
    figure = None
    if png is not None:  # rendered in memory: nothing is written until everything is computed
        figure = render_heatmap(result["scan"]["modes"], cfg.model,
                                run.titled(f"{cfg.name} ({run.path.name}): answer_loss bracket_specificity per head; "
                                           "* significant after Holm"))
    result = stamp("ablation", result)
    write_result(out_path, result, (png, figure))
    return result


def main(argv=None) -> int:
    return analysis_main(build_parser, ablate_run, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
