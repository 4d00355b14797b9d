"""The metrics of ../shared/SPEC.md section 5, defined once and used by training, ablation and reports.

    python -m src.analysis.evaluate --run runs/scale_10m [--checkpoint best|latest|PATH] [--device cuda] [--out PATH]

Metrics of a set of examples (all from one teacher-forced pass plus batched greedy decoding) are
defined in METRICS below, the one place that says what each means. Accuracies carry 95% intervals
(Wilson for per-example proportions, a bootstrap over examples for token-weighted ones); losses carry
bootstrap intervals.

Besides each split's metrics, eval.json holds two comparisons of the test sets:
    bracket_cost             test_paren_matched minus test_flat: the same 2,000 expressions with and
                             without value-preserving brackets, so the difference is the cost of the
                             brackets alone; a paired test per metric (exact McNemar for the yes/no
                             metrics, a paired t-test for the others), Holm over the verdict metrics
    content_and_bracket_gap  test_paren minus test_flat: different expressions (operand counts, the
                             share of `*`, signs differ too), so this mixes content with brackets; an
                             interval from resampling each set, no test and no verdict
and, per split, exact_match by expression class (`exact_match_by_class`: operands, operators, depth
and their cross, each with a Wilson interval; src/data/classes.py, SPEC section 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from src import stats
from src.rundir.atomic import write_result
from src.rundir.checkpoint import load_model
from src.data.classes import exact_match_by_class
from src.cli import MAX_EXAMPLES, ArgumentParser, check_output_file, int_in
from src.config import config_from_dict
from src.data import Batch, load_jsonl, make_batch
from src.device import PRECISIONS, autocast, resolve_device, run_precision
from src.errors import UserError, run_main
from src.model import CompactTransformer, HeadAblation, Hooks
from src.rundir.results import stamp
from src.tokenizer import EOS_ID, IGNORE_INDEX, PAD_ID

EVAL_SPLITS = ("val", "test_flat", "test_paren", "test_paren_matched", "test_depth3")
TEST_SPLITS = ("test_flat", "test_paren_matched", "test_paren", "test_depth3")


@dataclass(frozen=True)
class Metric:
    num: str            # per-example numerator (a key of per_example_scores)
    den: str            # per-example denominator
    binary: bool        # a per-example yes/no outcome: paired comparisons use exact tests
    definition: str


METRICS = {
    "exact_match": Metric("exact_match", "one", True,
                          "greedy decoding from `<BOS>expr = ` gives exactly str(result) then `<EOS>`: the task's accuracy"),
    "end_of_answer_acc": Metric("eos_correct", "one", True,
                                "teacher-forced accuracy at the `<EOS>` position only (is `<EOS>` predicted after the "
                                "true answer?): the figure the original study called \"accuracy\""),
    "answer_token_acc": Metric("answer_correct", "n_answer", False,
                               "teacher-forced accuracy over the answer tokens and `<EOS>`"),
    "answer_loss": Metric("answer_loss_sum", "n_answer", False,
                          "mean cross-entropy over the answer tokens and `<EOS>` (nats/token; the most sensitive "
                          "measure for ablations)"),
    "loss": Metric("token_loss_sum", "n_tokens", False, "mean cross-entropy over every supervised position (nats/token)"),
}
METRIC_DEFINITIONS = {name: m.definition for name, m in METRICS.items()}
# per-example (numerator, denominator) of each metric; see per_example_scores
METRIC_PARTS = {name: (m.num, m.den) for name, m in METRICS.items()}
PROPORTIONS = tuple(name for name, m in METRICS.items() if m.binary)
# the metrics that verdicts are drawn from: the task's accuracy and the most sensitive loss
VERDICT_METRICS = ("exact_match", "answer_loss")
SIGN_CONVENTION = (
    "delta = b - a (ablated - baseline; bracketed - flat): a harmful change raises loss/answer_loss (delta > 0) "
    "and lowers exact_match/end_of_answer_acc/answer_token_acc (delta < 0)"
)


@torch.no_grad()
def greedy_decode(model: CompactTransformer, batch: Batch, ablation=None, precision="fp32") -> torch.Tensor:
    """Greedy continuation of every prompt at once: [N, T] tokens, prompts then generated ids.

    Each step is one forward pass over the whole fixed-width buffer; the causal mask makes the
    padding after each example's frontier irrelevant, so examples of different lengths advance
    together.
    """
    device = batch.inputs.device
    n, width = batch.inputs.shape
    positions = torch.arange(width, device=device)
    tokens = torch.where(positions < batch.prompt_len[:, None], batch.inputs, PAD_ID)
    frontier = batch.prompt_len.clone()  # index where the next generated token goes
    done = torch.zeros(n, dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)
    hooks = Hooks(ablation=ablation) if ablation is not None else None
    for _ in range(width):
        active = ~done & (frontier < width)
        if not bool(active.any()):
            break
        with autocast(device, precision):
            logits = model(tokens, hooks=hooks).logits
        next_id = logits[rows, (frontier - 1).clamp(max=width - 1)].argmax(-1)
        write = active.nonzero().squeeze(1)
        tokens[write, frontier[write]] = next_id[write]
        done |= active & (next_id == EOS_ID)
        frontier = torch.where(active, frontier + 1, frontier)
    return tokens


EXACT_MATCH_METHODS = {
    "greedy": "greedy decoding from the prompt, compared with the answer and <EOS> (the definition, SPEC section 5)",
    "teacher_forced": "every answer token and <EOS> is the argmax of the teacher-forced logits, i.e. given the true "
                      "prefix. Equal to greedy decoding: a greedy decoder that has produced the true prefix so far "
                      "sees exactly the teacher-forced input, so it stays on the answer if and only if every "
                      "teacher-forced argmax is right (up to floating-point near-ties between differently shaped "
                      "forward passes). One forward pass instead of one per generated token.",
}


@torch.no_grad()
def per_example_scores(model, batch: Batch, ablation: HeadAblation | None = None, precision="fp32",
                       chunk: int = 2048, exact_match: str | None = "greedy") -> dict:
    """Per-example parts of every metric (float64 tensors on the CPU, one entry per example).

    `exact_match`: how exact_match is computed (EXACT_MATCH_METHODS), or None for none (NaN)."""
    if exact_match is not None and exact_match not in EXACT_MATCH_METHODS:
        raise ValueError(f"exact_match={exact_match!r}: expected one of {', '.join(EXACT_MATCH_METHODS)} or None")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hooks = Hooks(ablation=ablation) if ablation is not None else None
    parts = {k: [] for k in ("token_loss_sum", "n_tokens", "answer_loss_sum", "n_answer",
                             "answer_correct", "eos_correct", "exact_match")}
    for start in range(0, len(batch), chunk):
        b = batch.select(torch.arange(start, min(start + chunk, len(batch)))).to(device)
        with autocast(device, precision):
            logits = model(b.inputs, hooks=hooks).logits.float()
        supervised = b.labels != IGNORE_INDEX
        token_loss = F.cross_entropy(logits.transpose(1, 2), b.labels.clamp(min=0), reduction="none")
        token_loss = token_loss * supervised
        correct = (logits.argmax(-1) == b.labels) & supervised
        rows = torch.arange(len(b), device=device)
        parts["token_loss_sum"].append(token_loss.sum(1))
        parts["n_tokens"].append(supervised.sum(1))
        parts["answer_loss_sum"].append((token_loss * b.answer_mask).sum(1))
        parts["n_answer"].append(b.answer_mask.sum(1))
        parts["answer_correct"].append((correct & b.answer_mask).sum(1))
        parts["eos_correct"].append(correct[rows, b.eos_pos])
        if exact_match == "teacher_forced":
            parts["exact_match"].append(~(b.answer_mask & ~correct).any(1))
        elif exact_match == "greedy":
            generated = greedy_decode(model, b, ablation, precision)
            # strict: token j+1 generated must be label j at every answer position (digits, then
            # <EOS> exactly where the answer ends); nothing is skipped or normalised
            wrong = (generated[:, 1:] != b.labels[:, :-1]) & b.answer_mask[:, :-1]
            parts["exact_match"].append(~wrong.any(1))
        else:
            parts["exact_match"].append(torch.full((len(b),), float("nan"), device=device))
    model.train(was_training)
    out = {k: torch.cat(v).double().cpu() for k, v in parts.items()}
    out["one"] = torch.ones(len(batch), dtype=torch.float64)
    return out


def summarize(scores: dict, with_intervals: bool = True) -> dict:
    """Metric values (and 95% intervals) from per-example scores."""
    n = len(scores["one"])
    result = {"n_examples": n}
    for name, (num, den) in METRIC_PARTS.items():
        value = (scores[num].sum() / scores[den].sum()).item()
        result[name] = value
        if not with_intervals or math.isnan(value):
            continue
        if name in PROPORTIONS:
            result[f"{name}_ci95"] = list(stats.wilson_interval(int(scores[num].sum()), n))
        else:
            result[f"{name}_ci95"] = list(stats.bootstrap_ratio_interval(scores[num], scores[den]))
    # exp overflows past a loss of ~709 nats (a diverged model): its perplexity is then infinite
    result["perplexity"] = math.inf if result["loss"] > 709 else math.exp(result["loss"])
    return result


def metric_value(scores: dict, metric: str) -> float:
    m = METRICS[metric]
    return (scores[m.num].sum() / scores[m.den].sum()).item()


def contrast(metric: str, terms: list[tuple[float, dict]]) -> dict:
    """A contrast sum(w * metric(scores)) over score sets of the same examples, with its paired test.

    Two terms [(-1, a), (+1, b)] give the difference b - a; four give a difference of differences
    (an ablation's effect on bracketed twins minus its effect on the flat originals). The interval
    is the paired t interval (stats.paired_contrast); the p-value comes from the exact test for a
    yes/no metric (McNemar for two terms, the sign test on per-example contrasts otherwise) and from
    the paired t-test for the others. `estimate` is NaN, with no test, when the metric was not scored
    (exact_match without decoding).
    """
    m = METRICS[metric]
    if any(torch.isnan(s[m.num]).any() for _, s in terms):
        return {"estimate": float("nan")}
    entry = stats.paired_contrast([(w, s[m.num], s[m.den]) for w, s in terms])
    if not m.binary:
        return entry
    entry = {k: v for k, v in entry.items() if k not in ("t", "df")}
    if [w for w, _ in terms] == [-1, 1]:
        exact = stats.mcnemar_exact(terms[0][1][m.num], terms[1][1][m.num])
        counts = {"lost": exact["only_a"], "gained": exact["only_b"]}
    else:
        exact = stats.sign_test_exact(sum(w * s[m.num] for w, s in terms))
        counts = {"positive": exact["positive"], "negative": exact["negative"]}
    return {**entry, "test": exact["test"], "p_value": exact["p_value"], "p_floor": exact["p_floor"], **counts,
            "ci95_method": "paired_t (normal approximation; the p-value is exact)"}


def paired_difference(metric: str, a: dict, b: dict, names=("a", "b")) -> dict:
    """metric(b) - metric(a) on the same examples: both values, the difference and its paired test."""
    return {names[0]: metric_value(a, metric), names[1]: metric_value(b, metric), **contrast(metric, [(-1, a), (1, b)])}


def compare_test_sets(scores: dict) -> dict:
    """The bracket cost on matched pairs (paired tests, Holm over VERDICT_METRICS) and the
    content-and-bracket gap of test_paren over test_flat (descriptive)."""
    flat, matched, paren = (scores.get(s) for s in ("test_flat", "test_paren_matched", "test_paren"))
    out = {}
    if flat is not None and matched is not None:
        if len(flat["one"]) != len(matched["one"]):
            raise UserError("test_flat and test_paren_matched differ in length: the matched file must pair line i with "
                            "line i; regenerate it with `python -m src.data --seed 42 --out data`")
        family = stats.Family("bracket_cost")
        cost = {}
        for metric in METRICS:
            cost[metric] = paired_difference(metric, flat, matched, ("flat", "bracketed"))
            if metric in VERDICT_METRICS and math.isfinite(cost[metric].get("p_value", math.nan)):
                family.add(metric, cost[metric])
        out["bracket_cost"] = {"what": "test_paren_matched minus test_flat: each flat test expression against its "
                                       "twin with value-preserving brackets (same expressions, same answers)",
                               "metrics": cost, "family": family.close()}
    if flat is not None and paren is not None:
        out["content_and_bracket_gap"] = {
            "what": "test_paren minus test_flat: different expressions, so this mixes content (operand counts, the share "
                    "of `*`, signs) with brackets; descriptive, no verdict",
            "metrics": {metric: stats.independent_difference(flat[METRICS[metric].num], flat[METRICS[metric].den],
                                                             paren[METRICS[metric].num], paren[METRICS[metric].den])
                        for metric in METRICS}}
    return out


def evaluate_batch(model, batch: Batch, precision="fp32", ablation=None, with_intervals=True) -> dict:
    return summarize(per_example_scores(model, batch, ablation, precision), with_intervals)


# The analyses (probe fits, mean-ablation means) read at most this many training expressions: the
# first lines of the training file. Every generated set starts with data/pilot_train.jsonl (nested
# sets), so every model of both studies is probed and mean-ablated on the very same 2,000 expressions.
ANALYSIS_TRAIN_MAX = 2_000


def split_records(cfg, split: str, train_max: int | None = None) -> list:
    """The validated records of one split; of the training set only the first `train_max`, when given."""
    path = cfg.data.path(split)
    if split == "train" and cfg.data.train_size and not path.is_file():
        raise UserError(f"{path}: the training set of this run is not there; generate it with "
                        f"`python -m src.data --train-size {cfg.data.train_size}`")
    return load_jsonl(path, cfg.model.max_seq_len, max_records=train_max if split == "train" else None)


def load_split_batches(cfg, splits=EVAL_SPLITS, train_max: int | None = None) -> dict[str, Batch]:
    """Validated data of each split as one padded batch; of the training set only the first
    `train_max` expressions, when given."""
    return {s: make_batch(split_records(cfg, s, train_max), cfg.model.max_seq_len, cfg.data.answer_format)
            for s in splits}


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table, one row per split, every accuracy with its interval."""
    cols = ("exact_match", "end_of_answer_acc", "answer_token_acc", "answer_loss", "loss")
    lines = [f"{'split':<18} {'n':>5}  " + "  ".join(f"{c:>24}" for c in cols)]
    for split, r in results.items():
        cells = []
        for c in cols:
            lo, hi = r.get(f"{c}_ci95", (float("nan"), float("nan")))
            cells.append(f"{r[c]:>8.4f} [{lo:.3f},{hi:.3f}]".rjust(24))
        lines.append(f"{split:<18} {r['n_examples']:>5}  " + "  ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- shared by the analysis CLIs


def run_seed(run: Path, default: int = 42) -> int:
    """The training seed recorded in summary.json (checkpoints do not carry it)."""
    try:
        return int(json.loads((Path(run) / "summary.json").read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def head_label(layer: int, head: int) -> str:
    return f"L{layer}-H{head}"


def relative_layer(layer: int, num_layers: int) -> float:
    """layer / (num_layers - 1): 0 for the first layer, 1 for the last, comparable across depths."""
    return layer / (num_layers - 1) if num_layers > 1 else 0.0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory written by src.train")
    parser.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path (default: best)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available); a missing CUDA falls back to the CPU "
                        "with a warning")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="arithmetic of the forward passes (default: the precision the run trained in, as its "
                        "checkpoint records; fp32 on the CPU)")
    parser.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                        help="the same as --precision fp16 (float16 autocast on CUDA, as the 10M run trained)")
    parser.add_argument("--limit", type=int_in(1, MAX_EXAMPLES), default=None, metavar="N",
                        help="use only the first N examples of every split, the training set included (CPU smoke "
                        "runs; results are then not the study's figures)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")


def open_run(args) -> tuple[CompactTransformer, dict, object, torch.device]:
    """(model in eval mode on the device, checkpoint dict, Config, device) for the parsed flags.

    Every analysis command opens its run here, before it reads data or writes anything: a missing
    run, an unreadable checkpoint, weights that are not finite (src.rundir.checkpoint.check_weights) and a
    precision the device cannot run are all refused at this point."""
    if not args.run.is_dir():
        raise UserError(f"--run {args.run}: not a directory; pass a run directory written by src.train")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of examples")
    device, _ = resolve_device(args.device, gpu_only=False, precision=args.precision or "fp32")
    model, ckpt = load_model(args.run, args.checkpoint, device)
    if args.precision is None:  # the run's own precision, unless this device cannot run it
        args.precision = run_precision(ckpt, args.run)
        if args.precision != "fp32" and device.type != "cuda":
            print(f"note: the run trained in {args.precision}; evaluating in fp32 on the CPU", file=sys.stderr)
            args.precision = "fp32"
    cfg = config_from_dict(ckpt["config"], f"{args.run} checkpoint")
    return model, ckpt, cfg, device


def load_batches(cfg, splits, limit: int | None, device) -> dict[str, Batch]:
    """Each split as one padded batch on the device, cut to its first `limit` examples; the training
    set to its first ANALYSIS_TRAIN_MAX expressions at most (the extension's sets hold millions)."""
    train_max = min(limit or ANALYSIS_TRAIN_MAX, ANALYSIS_TRAIN_MAX)
    batches = load_split_batches(cfg, tuple(splits), train_max=train_max)
    if limit is not None:
        batches = {s: b.select(torch.arange(min(limit, len(b)))) for s, b in batches.items()}
    return {s: b.to(device) for s, b in batches.items()}



def with_data_dir(cfg, directory: Path):
    """`cfg` with each evaluation split read from DIRECTORY/pilot_<split>.jsonl where that file exists."""
    if not directory.is_dir():
        raise UserError(f"--data-dir {directory}: not a directory")
    found = {split: str(directory.resolve() / f"pilot_{split}.jsonl") for split in EVAL_SPLITS
             if (directory / f"pilot_{split}.jsonl").is_file()}
    if not found:
        raise UserError(f"--data-dir {directory}: holds none of {', '.join(f'pilot_{s}.jsonl' for s in EVAL_SPLITS)}; "
                        "write fresh test files with `python -m src.data --fresh-test SEED --out DIR`")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **found))


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m src.analysis.evaluate", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: RUN/eval.json, or RUN/eval_<DIR name>.json with --data-dir); e.g. "
                        "RUN/eval_epoch_10.json for a periodic checkpoint")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="evaluate on the files of DIR named as the shipped ones (pilot_test_flat.jsonl, ...) "
                        "instead of the config's, split by split, e.g. the fresh test files of "
                        "`python -m src.data --fresh-test SEED`; splits without a file there keep the config's")
    args = parser.parse_args(argv)
    model, ckpt, cfg, device = open_run(args)
    if args.data_dir is not None:
        cfg = with_data_dir(cfg, args.data_dir)
    default_out = args.run / ("eval.json" if args.data_dir is None else f"eval_{args.data_dir.resolve().name}.json")
    path = check_output_file(args.out or default_out, "--out" if args.out else "output", "eval.json")
    batches = load_batches(cfg, EVAL_SPLITS, args.limit, device)
    scores = {s: per_example_scores(model, b, precision=args.precision) for s, b in batches.items()}
    results = {s: summarize(v) for s, v in scores.items()}
    by_class = {s: exact_match_by_class(load_jsonl(cfg.data.path(s), cfg.model.max_seq_len)[: args.limit],
                                        scores[s]["exact_match"]) for s in batches}
    comparisons = compare_test_sets(scores)
    print(format_table(results))
    for metric in VERDICT_METRICS:
        c = comparisons["bracket_cost"]["metrics"][metric]
        lo, hi = c.get("ci95", (math.nan, math.nan))
        print(f"bracket cost (test_paren_matched - test_flat), {metric}: {c['estimate']:+.4f} [{lo:+.4f}, {hi:+.4f}]  "
              f"{c.get('test')} p={c.get('p_value', math.nan):.3g} p_adjusted={c.get('p_adjusted', math.nan):.3g}")
    out = stamp("eval", {"run": str(args.run), "checkpoint": args.checkpoint, "epoch": ckpt["epoch"],
                         "step": ckpt.get("step"), "config": cfg.name, "seed": run_seed(args.run), "precision": args.precision, "fp16": args.precision == "fp16",
                         "limit": args.limit, "metric_definitions": METRIC_DEFINITIONS, "sign_convention": SIGN_CONVENTION,
                         "data_files": {split: str(cfg.data.path(split)) for split in EVAL_SPLITS},
                         "metrics": results, **comparisons, "exact_match_by_class": by_class})
    write_result(path, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
