"""The metrics of docs/DESIGN.md section 5, defined once and used by training, ablation and reports.

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
the cost of brackets by kind (redundant: the matched pairs; precedence-changing:
pilot_test_paren_precedence.jsonl against the flat lines it names) with the floor of each test, exact_match
on the near-twin-free subset of each file (src/analysis/bracket_cost.py),
and, per split, exact_match by expression class (`exact_match_by_class`: operands, operators, depth
and their cross, each with a Wilson interval; src/data/classes.py, DESIGN.md section 8).
"""

from __future__ import annotations

import math
from pathlib import Path


from src.rundir.atomic import write_result
from src.data.classes import exact_match_by_class
from src.cli import ArgumentParser, check_output_file, path_arg
from src.errors import run_main
from src.rundir.results import stamp

from src.analysis import bracket_cost
from src.analysis.common import Run, RunData, add_run_arguments, open_run, scores_by_split, with_data_dir
from src.metrics import (EVAL_SPLITS, METRIC_DEFINITIONS, SIGN_CONVENTION, VERDICT_METRICS, compare_test_sets,
                         summarize)


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
    lines.append("n: examples scored; each cell: the metric [its 95% interval: Wilson for exact_match and "
                 "end_of_answer_acc, a bootstrap over examples otherwise]; answer_loss and loss in nats per token")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m src.analysis.evaluate", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--out", type=path_arg, default=None,
                        help="JSON path (default: RUN/eval.json, or RUN/eval_<DIR name>.json with --data-dir, each "
                        "as NAME.limitN.json under --limit); e.g. RUN/eval_epoch_10.json for a periodic checkpoint")
    parser.add_argument("--data-dir", type=path_arg, default=None, metavar="DIR",
                        help="evaluate on the files of DIR named as the shipped ones (pilot_test_flat.jsonl, ...) "
                        "instead of the config's, split by split, e.g. the fresh test files of "
                        "`python -m src.data --fresh-test SEED`; splits without a file there keep the config's")
    return parser


def evaluate_run(run: Run, data: RunData, args) -> dict:
    """eval.json of an opened run on `data` (the config's files, or those of --data-dir), written to
    --out or the run directory; returns what it wrote."""
    name = "eval.json" if args.data_dir is None else f"eval_{args.data_dir.resolve().name}.json"
    path = check_output_file(run.output(name, args.out), "--out" if args.out else "output", "eval.json")
    cfg = data.cfg
    batches = data.batches(EVAL_SPLITS)
    scores = scores_by_split(run, batches, "evaluating")
    results = {s: summarize(v) for s, v in scores.items()}
    by_class = {s: exact_match_by_class(data.records(s), scores[s]["exact_match"]) for s in batches}
    comparisons = compare_test_sets(scores)
    if run.limit is not None:
        print(run.titled("evaluation"))
    by_kind = bracket_cost.report(run.model, cfg, scores, run.limit, run.device, run.precision)
    print(format_table(results))
    for metric in VERDICT_METRICS:
        c = comparisons["bracket_cost"]["metrics"][metric]
        lo, hi = c.get("ci95", (math.nan, math.nan))
        print(f"bracket cost (test_paren_matched - test_flat), {metric}: {c['estimate']:+.4f} [{lo:+.4f}, {hi:+.4f}]  "
              f"{c.get('test')} p={c.get('p_value', math.nan):.3g} p_adjusted={c.get('p_adjusted', math.nan):.3g}")
    print(bracket_cost.summary(by_kind))
    out = stamp("eval", {"run": str(run.path), "checkpoint": run.checkpoint, "epoch": run.ckpt["epoch"],
                         "step": run.ckpt.get("step"), "config": cfg.name, "seed": run.seed, "precision": run.precision,
                         "fp16": run.precision == "fp16", "limit": run.limit, "metric_definitions": METRIC_DEFINITIONS,
                         "sign_convention": SIGN_CONVENTION,
                         "data_files": {split: str(cfg.data.path(split)) for split in EVAL_SPLITS},
                         "metrics": results, **comparisons, "exact_match_by_class": by_class, **by_kind})
    write_result(path, out)
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = open_run(args)
    cfg = run.cfg if args.data_dir is None else with_data_dir(run.cfg, args.data_dir)
    evaluate_run(run, RunData(cfg, run.limit, run.device), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
