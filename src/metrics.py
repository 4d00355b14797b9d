"""The metrics of a set of examples, defined once: training's validation, evaluation, ablation
and the reports all read them from here.

METRICS below is the one place that says what each metric means. Accuracies carry 95% intervals
(Wilson for per-example proportions, a bootstrap over examples for token-weighted ones); losses carry
bootstrap intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src import stats
from src.data import Batch
from src.device import autocast
from src.errors import UserError
from src.model import CompactTransformer, HeadAblation, Hooks
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
    "greedy": "greedy decoding from the prompt, compared with the answer and <EOS> (the definition, DESIGN.md section 5)",
    "teacher_forced": "every answer token and <EOS> is the argmax of the teacher-forced logits, i.e. given the true "
                      "prefix. Equal to greedy decoding: a greedy decoder that has produced the true prefix so far "
                      "sees exactly the teacher-forced input, so it stays on the answer if and only if every "
                      "teacher-forced argmax is right (up to floating-point near-ties between differently shaped "
                      "forward passes). One forward pass instead of one per generated token.",
}


def teacher_forced_scores(logits: torch.Tensor, batch: Batch, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Per-example parts of the teacher-forced metrics from the logits [N, T, vocab] of one pass over
    `batch` (tensors on its device): token_loss_sum and n_tokens (every supervised position),
    answer_loss_sum and n_answer (the answer tokens and `<EOS>`), answer_correct (how many of those are
    the argmax), eos_correct, and all_answer_correct (every one of them is: exact_match by teacher forcing).
    The losses are computed in `dtype` (float64 where differences of them are divided, as patching does)."""
    logits = logits.to(dtype)
    supervised = batch.labels != IGNORE_INDEX
    token_loss = F.cross_entropy(logits.transpose(1, 2), batch.labels.clamp(min=0), reduction="none") * supervised
    correct = (logits.argmax(-1) == batch.labels) & supervised
    rows = torch.arange(len(batch), device=logits.device)
    return {"token_loss_sum": token_loss.sum(1), "n_tokens": supervised.sum(1),
            "answer_loss_sum": (token_loss * batch.answer_mask).sum(1), "n_answer": batch.answer_mask.sum(1),
            "answer_correct": (correct & batch.answer_mask).sum(1), "eos_correct": correct[rows, batch.eos_pos],
            "all_answer_correct": ~(batch.answer_mask & ~correct).any(1)}


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
            logits = model(b.inputs, hooks=hooks).logits
        forced = teacher_forced_scores(logits, b)
        for key in ("token_loss_sum", "n_tokens", "answer_loss_sum", "n_answer", "answer_correct", "eos_correct"):
            parts[key].append(forced[key])
        if exact_match == "teacher_forced":
            parts["exact_match"].append(forced["all_answer_correct"])
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
    return {**entry, "test": exact["test"], "p_value": exact["p_value"], "p_floor": exact["p_floor"],
            "discordant": exact["discordant"], **counts,
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
