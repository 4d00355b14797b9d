"""Activation patching on the matched pairs: where does a model carry what brackets change?

    python -m src.analysis.patching --run runs/pilot [--limit N] [--device cpu|cuda] [--out RUN/patching.json]

Line i of data/pilot_test_paren_matched.jsonl is line i of data/pilot_test_flat.jsonl with
value-preserving brackets added (docs/DESIGN.md section 5). Each pair is run twice, once per
direction; the receiving sequence is run with one activation replaced, at a class of positions, by
the one recorded on its twin (the source) at the aligned positions:

    bracketed_to_flat   source: the bracketed twin; receiver: the flat expression
    flat_to_bracketed   source: the flat expression; receiver: the bracketed twin

Sites: the residual stream after each block (`blocks.{l}.hook_resid_post`, site "resid") and each
head's output before the out-projection (`blocks.{l}.attn.hook_z[:, :, h]`, site "heads"). The patch
is applied where the activation is produced (src.model Hooks.patch), so every later layer sees it.

Alignment. `<BOS>expr = answer<EOS>` of the flat expression maps token by token, in order, onto the
bracketed one, which has extra `(` and `)` tokens and nothing else (checked: removing every bracket
gives the flat expression exactly, and the results are equal; a pair that fails is a UserError naming
its line in both files).

Position classes, defined on the bracketed sequence (its input positions, tokens[:-1]):
    open      a `(` token
    inside    an expression token (number or operator) strictly inside a bracket pair
    close     a `)` token
    outside   an expression token outside every bracket pair
    equals    the `=` token
    prompt    every token of `<BOS>expr = ` except the brackets
    answer    the positions whose next-token prediction is scored: the space after `=` and each answer
              character (patches here see the answer teacher-forced; see the metrics)
A bracket has no flat counterpart. It is paired with the flat position of the last non-bracket token
before it (for `1+(2*3)`: the `(` with the flat `+`, the `)` with the flat `3`), the point of the flat
sequence that the bracket follows. flat_to_bracketed writes that flat activation into the bracket's
position; bracketed_to_flat writes the bracket's activation into that flat position (where two
brackets share it, as `((` or `))`, the later bracket's). Every other class is one to one.

Metrics (per example, on the receiver's own answer, teacher-forced):
    logp                    log-probability of the answer and `<EOS>` (= -answer_loss_sum of src.analysis.evaluate)
    restored_share          sum(logp_patched - logp_receiver) / sum(logp_source - logp_receiver) over the
                            pairs, with a bootstrap interval (resampling pairs): 0 = the patch changed
                            nothing, 1 = the receiver scores as its twin does. The headline (and the
                            figure): the per-example ratio is unbounded where a pair's two logps are close
    restored_share_per_example
                            the mean of the per-example ratios over the pairs whose |logp gap| is at
                            least --min-gap nats, with a bootstrap interval
    answer_correct          teacher-forced: every answer token and `<EOS>` is the argmax given the true
                            prefix. Not exact_match by definition; but where every patched position lies in
                            the prompt (all classes except `answer`), the patched values come from the
                            source's prompt only, so greedy decoding with the same patch at every step
                            writes the answer iff this holds (tests/test_patching.py checks the premise)
    answer_correct_restored_share
                            the same share for answer_correct (NaN when the twins never differ)
The numbers are descriptive (intervals, no tests, no verdicts).

Batching: each forward pass holds a chunk of pairs; for the heads, the chunk is stacked once per head
of the layer, copy h patching head h, so one pass serves every head of a layer.

Output: RUN/patching.json (schema patching/1) and RUN/patching.png (the restored share of the
residual stream, layer x position class, one panel per direction); under --limit N,
RUN/patching.limitN.json and RUN/patching.limitN.png.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch

from src import stats
from src.rundir.atomic import write_result
from src.cli import ArgumentParser, check_output_file, comma_list, float_in, int_in, path_arg
from src.data import Batch, Record, depth_labels, load_jsonl, make_batch
from src.device import autocast
from src.errors import UserError, run_main
from src.analysis.common import Run, RunData, add_run_arguments, analysis_main, head_label, progress, relative_layer
from src.metrics import teacher_forced_scores
from src.model import CompactTransformer, Hooks, Patch
from src.plotting import png_bytes, pyplot
from src.text import plain_text, shown
from src.tokenizer import ANSWER_SEPARATOR, answer_text

SCHEMA = "patching/1"
FLAT, MATCHED = "test_flat", "test_paren_matched"
BRACKETS = "()"
POSITION_CLASSES = {
    "open": "a `(` token (paired with the flat position of the last non-bracket token before it)",
    "inside": "an expression token (number or operator) strictly inside a bracket pair",
    "close": "a `)` token (paired with the flat position of the last non-bracket token before it)",
    "outside": "an expression token outside every bracket pair",
    "equals": "the `=` token",
    "prompt": "every token of `<BOS>expr = ` except the brackets",
    "answer": "the input positions whose next-token prediction is scored: the space after `=` and each answer "
              "character (the patched values then see the answer, teacher-forced)",
}
BRACKET_COUNTERPART = ("a bracket has no flat counterpart: it is paired with the flat position of the last non-bracket "
                       "token before it; flat_to_bracketed writes that flat activation into the bracket, "
                       "bracketed_to_flat writes the bracket's activation into that flat position (the later bracket's "
                       "where two share it)")
DIRECTIONS = {"bracketed_to_flat": ("bracketed", "flat"), "flat_to_bracketed": ("flat", "bracketed")}  # (source, receiver)
SITES = {"resid": "blocks.{layer}.hook_resid_post", "heads": "blocks.{layer}.attn.hook_z[:, :, head]"}
DEFAULT_MIN_GAP = 0.1
DEFAULT_CHUNK = 256
METRIC_DEFINITIONS = {
    "logp": "log-probability of the answer characters and `<EOS>`, teacher-forced, on the receiver's sequence",
    "restored_share": "sum(logp_patched - logp_receiver) / sum(logp_source - logp_receiver) over the pairs; 95% "
                      "percentile bootstrap interval over pairs",
    "restored_share_per_example": "mean over the pairs with |logp_source - logp_receiver| >= min_gap of "
                                  "(logp_patched - logp_receiver) / (logp_source - logp_receiver); bootstrap interval",
    "answer_correct": "teacher-forced: every answer token and `<EOS>` is the argmax given the true prefix (not "
                      "exact_match; equal to greedy decoding under the same patch when only prompt positions are "
                      "patched, i.e. every class but `answer`); Wilson interval",
    "answer_correct_restored_share": "sum(correct_patched - correct_receiver) / sum(correct_source - correct_receiver); "
                                     "bootstrap interval; null when the twins never differ",
    "logp_change": "mean over the pairs of logp_patched - logp_receiver (nats); logp_change_test: paired t-test over "
                   "the pairs (analytic, p_floor 0), uncorrected here: a reader of several cells declares the family "
                   "(src.report.analyses: Holm over the cells of each run's profile)",
    "answer_correct_change": "answer_correct_patched - answer_correct_receiver over the pairs; answer_correct_change_test: "
                             "exact McNemar (p_floor 2^(1-d) for d discordant pairs), Holm over every cell of one site "
                             "and direction (families answer_correct_<site>_<direction>, each with its verdict: "
                             "'cannot decide' where no cell has enough discordant pairs to reach Holm's first threshold)",
}


# ---------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class Alignment:
    """One matched pair's token positions in `<BOS>expr = answer<EOS>` (input positions are all but the last).

    flat_to_bracketed[p]   the bracketed position of the flat token p (same token)
    counterpart[b]         the flat position bracketed position b is paired with: its own token's, or for a
                           bracket the last non-bracket token's before it
    classes[name]          the bracketed input positions of each position class (POSITION_CLASSES)
    """

    flat_to_bracketed: tuple
    counterpart: tuple
    classes: dict

    @property
    def flat_len(self) -> int:
        return len(self.flat_to_bracketed)

    @property
    def bracketed_len(self) -> int:
        return len(self.counterpart)


def align(flat_expr: str, bracketed_expr: str, result: int, answer_format: str = "plain") -> Alignment:
    """The alignment of a flat expression and its bracketed twin; ValueError when the bracketed one without
    its brackets is not the flat one, or its brackets do not balance."""
    stripped = "".join(ch for ch in bracketed_expr if ch not in BRACKETS)
    if stripped != flat_expr:
        raise ValueError(f"the bracketed {bracketed_expr!r} without its brackets is {stripped!r}, not the flat "
                         f"{flat_expr!r}")
    depth = depth_labels(bracketed_expr)
    if depth and (min(depth) < 0 or depth[-1] != 0):
        raise ValueError(f"the brackets of {bracketed_expr!r} do not balance")
    flat_to_bracketed, counterpart = [0], [0]  # <BOS>
    for ch in bracketed_expr:
        if ch in BRACKETS:
            counterpart.append(counterpart[-1])  # the last non-bracket token's flat position
        else:
            counterpart.append(len(flat_to_bracketed))
            flat_to_bracketed.append(len(counterpart) - 1)
    for _ in range(len(ANSWER_SEPARATOR) + len(answer_text(result, answer_format)) + 1):  # " = ", answer, <EOS>
        counterpart.append(len(flat_to_bracketed))
        flat_to_bracketed.append(len(counterpart) - 1)
    n_expr = len(bracketed_expr)
    prompt_len = 1 + n_expr + len(ANSWER_SEPARATOR)
    chars = list(enumerate(bracketed_expr, start=1))  # (position, character)
    classes = {
        "open": [b for b, ch in chars if ch == "("],
        "inside": [b for b, ch in chars if ch not in BRACKETS and depth[b - 1] >= 1],
        "close": [b for b, ch in chars if ch == ")"],
        "outside": [b for b, ch in chars if ch not in BRACKETS and depth[b - 1] == 0],
        "equals": [1 + n_expr + ANSWER_SEPARATOR.index("=")],
        "prompt": [b for b in range(prompt_len) if b == 0 or b > n_expr or bracketed_expr[b - 1] not in BRACKETS],
        "answer": list(range(prompt_len - 1, len(counterpart) - 1)),
    }
    assert set(classes) == set(POSITION_CLASSES)
    return Alignment(tuple(flat_to_bracketed), tuple(counterpart), {k: tuple(v) for k, v in classes.items()})


def class_positions(alignment: Alignment, classes, direction: str) -> list[tuple[int, int]]:
    """(receiver position, source position) of every position of `classes` (a name or several: their union)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; one of {', '.join(DIRECTIONS)}")
    names = [classes] if isinstance(classes, str) else list(classes)
    bracketed = sorted({b for name in names for b in alignment.classes[name]})
    pairs = [(b, alignment.counterpart[b]) for b in bracketed]  # (bracketed, flat)
    if direction == "flat_to_bracketed":
        return pairs
    by_flat = {f: b for b, f in pairs}  # brackets sharing a flat position: the later one's value
    return sorted(by_flat.items())


def patch_plan(alignments: list[Alignment], classes, direction: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [N, width] bool, index [N, width] long): the receiver positions to patch, and for each the
    source position to take the value from (0 where nothing is patched)."""
    mask = torch.zeros(len(alignments), width, dtype=torch.bool)
    index = torch.zeros(len(alignments), width, dtype=torch.long)
    for i, alignment in enumerate(alignments):
        for receiver, source in class_positions(alignment, classes, direction):
            mask[i, receiver], index[i, receiver] = True, source
    return mask, index


# ---------------------------------------------------------------------------- the matched pairs


@dataclass
class Pairs:
    """The matched pairs as two padded batches (row i of each is pair i) and their alignments."""

    flat: Batch
    bracketed: Batch
    alignments: list

    def __len__(self) -> int:
        return len(self.alignments)

    def select(self, idx) -> "Pairs":
        positions = torch.arange(len(self))[torch.as_tensor(idx)].tolist()
        return Pairs(self.flat.select(idx), self.bracketed.select(idx), [self.alignments[i] for i in positions])


def pair_records(flat: list[Record], bracketed: list[Record], flat_path, bracketed_path,
                 answer_format: str = "plain") -> list[Alignment]:
    """The alignment of each pair (line i with line i); a UserError names the first bad pair's line in both files."""
    regenerate = "the matched file is the flat one with value-preserving brackets added; regenerate both with " \
                 "`python -m src.data --seed 42 --out data`"
    if len(flat) != len(bracketed):
        n = min(len(flat), len(bracketed))
        longer = flat_path if len(flat) > n else bracketed_path
        other = bracketed_path if longer == flat_path else flat_path
        raise UserError(f"{flat_path} has {len(flat)} records and {bracketed_path} has {len(bracketed)}: line {n + 1} of "
                        f"{longer} has no twin in {other}; {regenerate}")
    alignments = []
    for line, (f, b) in enumerate(zip(flat, bracketed), start=1):
        where = f"{flat_path}:{line} and {bracketed_path}:{line}"
        if any(ch in BRACKETS for ch in f.expr):
            raise UserError(f"{where}: the flat expression {f.expr!r} has brackets; {regenerate}")
        if not any(ch in BRACKETS for ch in b.expr):
            raise UserError(f"{where}: the bracketed twin {b.expr!r} has no brackets; {regenerate}")
        try:
            alignment = align(f.expr, b.expr, f.result, answer_format)
        except ValueError as err:
            raise UserError(f"{where}: not a matched pair: {err}; {regenerate}") from None
        if f.result != b.result:
            raise UserError(f"{where}: not a matched pair: the results differ ({f.result} for {f.expr!r}, {b.result} for "
                            f"{b.expr!r}), so the brackets change the value; {regenerate}")
        alignments.append(alignment)
    return alignments


def pairs_of(flat: list[Record], bracketed: list[Record], flat_path, bracketed_path, max_seq_len: int,
             answer_format: str = "plain", limit: int | None = None) -> Pairs:
    """The matched pairs of two files' records, every pair checked (the whole files, --limit or not),
    then cut to `limit`."""
    alignments = pair_records(flat, bracketed, flat_path, bracketed_path, answer_format)
    if limit is not None:
        flat, bracketed, alignments = flat[:limit], bracketed[:limit], alignments[:limit]
    return Pairs(make_batch(flat, max_seq_len, answer_format), make_batch(bracketed, max_seq_len, answer_format),
                 alignments)


def load_pairs(flat_path, bracketed_path, max_seq_len: int, answer_format: str = "plain",
               limit: int | None = None) -> Pairs:
    """The matched pairs of two files (see pairs_of)."""
    return pairs_of(load_jsonl(flat_path, max_seq_len), load_jsonl(bracketed_path, max_seq_len), flat_path,
                    bracketed_path, max_seq_len, answer_format, limit)


# ---------------------------------------------------------------------------- patched forward passes


def answer_scores(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp [N], answer_correct [N]) of the answer and `<EOS>`, teacher-forced (see METRIC_DEFINITIONS):
    -answer_loss_sum and all_answer_correct of src.metrics.teacher_forced_scores, in float64: a restored share
    divides differences of these sums, which float32 rounding would swamp where the twins' gap is small."""
    scores = teacher_forced_scores(logits, batch, torch.float64)
    return -scores["answer_loss_sum"], scores["all_answer_correct"]


def gather_positions(activation: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """activation [N, T, ...] read at index [N, T] along the positions: out[i, t] = activation[i, index[i, t]]."""
    rows = torch.arange(activation.shape[0], device=activation.device).unsqueeze(1)
    return activation[rows, index]


def cut(batch: Batch, width: int) -> Batch:
    """The batch's first `width` positions (every sequence of it fits them)."""
    fields = {k: (v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 else v) for k, v in batch.__dict__.items()}
    return Batch(**fields)


def site_name(site: str, layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post" if site == "resid" else f"blocks.{layer}.attn.hook_z"


@torch.no_grad()
def patching_scan(model: CompactTransformer, pairs: Pairs, classes=tuple(POSITION_CLASSES), directions=tuple(DIRECTIONS),
                  sites=tuple(SITES), precision: str = "fp32", chunk: int = DEFAULT_CHUNK, log=print, bar=None) -> dict:
    """Per-example scores of the clean twins and of every patch.

    Returns {"clean": {"flat"|"bracketed": {"logp", "correct"}}, "cells": {(direction, site, layer, head, class):
    {"logp", "correct"}}} (CPU tensors, one entry per pair; head is None for the residual stream). A forward
    pass holds `chunk` pairs; for the heads, `chunk` pairs times the number of heads.
    """
    cfg = model.cfg
    L, H = cfg.num_layers, cfg.num_heads
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    width = pairs.flat.inputs.shape[1]
    plans = {(d, c): patch_plan(pairs.alignments, c, d, width) for d in directions for c in classes}
    record = [site_name(s, layer) for s in sites for layer in range(L)]
    parts: dict = {}

    def add(key, logp, correct):  # kept on the device until the end: no host synchronisation per cell
        entry = parts.setdefault(key, {"logp": [], "correct": []})
        entry["logp"].append(logp)
        entry["correct"].append(correct)

    tic = time.perf_counter()
    # pairs in order of length, each chunk cut to its longest sequence: the padding is most of a
    # max_seq_len-wide batch, and a causal model's logits do not depend on the positions after them
    lengths = torch.tensor([a.bracketed_len for a in pairs.alignments])
    order = torch.argsort(lengths, stable=True)
    ticker = (bar or progress)(total=len(pairs), desc="patching", unit="pair", disable=bar is None)
    for start in range(0, len(pairs), chunk):
        idx = order[start:start + chunk]
        n, w = len(idx), int(lengths[idx].max()) - 1  # input positions of the longest (bracketed) sequence
        seqs = {"flat": cut(pairs.flat.select(idx), w).to(device), "bracketed": cut(pairs.bracketed.select(idx), w).to(device)}
        acts, clean = {}, {}
        for which, b in seqs.items():
            with autocast(device, precision):
                out = model(b.inputs, hooks=Hooks(record=record))
            acts[which], clean[which] = out.activations, answer_scores(out.logits, b)
            add(("clean", which), *clean[which])
        for direction in directions:
            source, receiver = DIRECTIONS[direction]
            rb = seqs[receiver]
            for cls in classes:
                mask, index = (t[idx, :w].to(device) for t in plans[(direction, cls)])
                empty = not bool(mask.any())  # e.g. no pair of the chunk has an `outside` token: nothing changes
                if "resid" in sites:
                    for layer in range(L):
                        key = (direction, "resid", layer, None, cls)
                        if empty:
                            add(key, *clean[receiver])
                            continue
                        name = site_name("resid", layer)
                        patch = Patch(gather_positions(acts[source][name], index), mask.unsqueeze(-1))
                        with autocast(device, precision):
                            logits = model(rb.inputs, hooks=Hooks(patch={name: patch})).logits
                        add(key, *answer_scores(logits, rb))
                if "heads" in sites:
                    heads_mask = torch.eye(H, dtype=torch.bool, device=device).repeat_interleave(n, 0)  # copy h: head h
                    stacked = rb.select(torch.arange(n).repeat(H))  # the pairs once per head
                    for layer in range(L):
                        if empty:
                            for head in range(H):
                                add((direction, "heads", layer, head, cls), *clean[receiver])
                            continue
                        name = site_name("heads", layer)
                        values = gather_positions(acts[source][name], index).repeat(H, 1, 1, 1)  # [H*n, T, H, d]
                        stacked_mask = mask.repeat(H, 1)[:, :, None, None] & heads_mask[:, None, :, None]
                        with autocast(device, precision):
                            logits = model(stacked.inputs, hooks=Hooks(patch={name: Patch(values, stacked_mask)})).logits
                        logp, correct = answer_scores(logits, stacked)
                        for head in range(H):
                            add((direction, "heads", layer, head, cls), logp[head * n:(head + 1) * n],
                                correct[head * n:(head + 1) * n])
        log(f"  pairs {start + n}/{len(pairs)} patched ({time.perf_counter() - tic:.1f} s)")
        ticker.update(n)
    ticker.close()
    model.train(was_training)
    back = torch.argsort(order)  # the pairs' own order again
    out = {key: {"logp": torch.cat(v["logp"]).double().cpu()[back], "correct": torch.cat(v["correct"]).cpu()[back]}
           for key, v in parts.items()}
    return {"clean": {which: out.pop(("clean", which)) for which in ("flat", "bracketed")}, "cells": out}


# ---------------------------------------------------------------------------- summaries


def _finite(x: float) -> float | None:
    """A number for JSON: None for NaN or an infinity."""
    return x if math.isfinite(x) else None


def _interval(lo_hi) -> list | None:
    lo, hi = lo_hi
    return [_finite(lo), _finite(hi)] if math.isfinite(lo) and math.isfinite(hi) else None


def restored_share(patched, receiver, source) -> tuple[float, list | None]:
    """sum(patched - receiver) / sum(source - receiver) with its bootstrap interval; NaN without a gap."""
    num, den = patched.double() - receiver.double(), source.double() - receiver.double()
    if float(den.sum()) == 0.0:
        return math.nan, None
    return float(num.sum() / den.sum()), _interval(stats.bootstrap_ratio_interval(num, den))


def summarize_cell(patched: dict, receiver: dict, source: dict, min_gap: float) -> dict:
    share, ci = restored_share(patched["logp"], receiver["logp"], source["logp"])
    gap = source["logp"] - receiver["logp"]
    keep = gap.abs() >= min_gap
    per_example, per_ci = math.nan, None
    if int(keep.sum()) > 0:
        ratios = (patched["logp"] - receiver["logp"])[keep] / gap[keep]
        per_example = float(ratios.mean())
        per_ci = _interval(stats.bootstrap_ratio_interval(ratios, torch.ones_like(ratios))) if len(ratios) > 1 else None
    ones = torch.ones_like(patched["logp"], dtype=torch.float64)
    change_test = stats.paired_contrast([(-1, receiver["logp"], ones), (1, patched["logp"], ones)])
    correct = patched["correct"]
    em_share, em_ci = restored_share(correct, receiver["correct"], source["correct"])
    em_test = stats.mcnemar_exact(receiver["correct"], correct)
    return {
        "restored_share": _finite(share), "ci95": ci,
        "restored_share_per_example": _finite(per_example), "per_example_ci95": per_ci,
        "n_per_example": int(keep.sum()),
        "logp_change": float((patched["logp"] - receiver["logp"]).mean()),
        "logp_change_test": {k: change_test[k] for k in ("test", "estimate", "ci95", "p_value", "p_floor", "n")},
        "answer_correct": float(correct.double().mean()),
        "answer_correct_ci95": list(stats.wilson_interval(int(correct.sum()), len(correct))),
        "answer_correct_restored_share": _finite(em_share), "answer_correct_restored_share_ci95": em_ci,
        "answer_correct_change_test": {k: em_test[k] for k in ("test", "estimate", "only_a", "only_b", "discordant",
                                                               "p_value", "p_floor")},
    }


def summarize_clean(clean: dict) -> dict:
    out = {}
    for which, s in clean.items():
        ones = torch.ones_like(s["logp"])
        out[which] = {"logp": float(s["logp"].mean()), "logp_ci95": _interval(stats.bootstrap_ratio_interval(s["logp"], ones)),
                      "answer_correct": float(s["correct"].double().mean()),
                      "answer_correct_ci95": list(stats.wilson_interval(int(s["correct"].sum()), len(s["correct"])))}
    ones = torch.ones_like(clean["flat"]["logp"])
    gap = stats.paired_contrast([(-1, clean["flat"]["logp"], ones), (1, clean["bracketed"]["logp"], ones)])
    out["bracketed_minus_flat"] = {
        "logp": {"estimate": gap["estimate"], "ci95": gap["ci95"], "method": "paired t interval"},
        "answer_correct": out["bracketed"]["answer_correct"] - out["flat"]["answer_correct"]}
    return out


def summarize_scan(scan: dict, cfg, min_gap: float) -> dict:
    """{"resid": {direction: {class: [one entry per layer]}}, "heads": {direction: {class: [one per head]}}}."""
    clean = scan["clean"]
    out: dict = {}
    for (direction, site, layer, head, cls), patched in scan["cells"].items():
        source, receiver = DIRECTIONS[direction]
        entry = {"layer": layer, "relative_layer": relative_layer(layer, cfg.num_layers)}
        if head is not None:
            entry = {"head": head_label(layer, head), **entry, "head_index": head}
        entry.update(summarize_cell(patched, clean[receiver], clean[source], min_gap))
        out.setdefault(site, {}).setdefault(direction, {}).setdefault(cls, []).append(entry)
    out["families"] = cell_families(out)
    return out


def cell_families(summary: dict) -> dict:
    """Holm over the answer_correct McNemar tests of every cell of one site and direction, each family
    with its verdict (stats.family_verdict): with few discordant pairs per cell it cannot decide."""
    families = {}
    for site in SITES:
        for direction, per_class in summary.get(site, {}).items():
            fam = stats.Family(f"answer_correct_{site}_{direction}")
            for cls, cells in per_class.items():
                for e in cells:
                    fam.add(f"{cls}/{e.get('head', 'L' + str(e['layer']))}", e["answer_correct_change_test"])
            families[fam.name] = fam.close()
    return families


def class_counts(alignments: list[Alignment]) -> dict:
    """Per position class: how many pairs have it, and its positions in all (bracketed side)."""
    return {c: {"pairs": sum(1 for a in alignments if a.classes[c]), "positions": sum(len(a.classes[c]) for a in alignments)}
            for c in POSITION_CLASSES}


def format_resid(resid: dict, classes) -> str:
    lines = []
    for direction, per_class in resid.items():
        lines.append(f"{direction}: restored share of the answer's log-probability, residual stream after each layer")
        lines.append(f"{'layer':>5}  " + "  ".join(f"{c:>8}" for c in classes))
        layers = len(next(iter(per_class.values())))
        for layer in range(layers):
            cells = [per_class[c][layer]["restored_share"] for c in classes]
            lines.append(f"{layer:>5}  " + "  ".join(f"{'nan' if v is None else f'{v:+.3f}':>8}" for v in cells))
    lines.append("columns: the position classes patched (patching.json position_classes); each cell: sum(logp_patched - "
                 "logp_receiver) / sum(logp_source - logp_receiver) over the pairs, 0 = nothing restored, 1 = the "
                 "receiver scores as its twin; nan: no gap to restore")
    return "\n".join(lines)


@plain_text()  # names drawn as written: no mathtext
def render_figure(resid: dict, classes, title: str) -> bytes:
    """PNG bytes: layer x position class heatmap of the residual stream's restored share, one panel per direction."""
    title = shown(title)  # a run directory's name may hold bytes that are not UTF-8
    plt = pyplot()

    directions = list(resid)
    layers = len(next(iter(resid[directions[0]].values())))
    height = 2.0 + 0.45 * layers
    fig, axes = plt.subplots(1, len(directions), figsize=(len(directions) * (1.8 + 0.8 * len(classes)), height),
                             dpi=100, squeeze=False)
    fig.subplots_adjust(top=1 - 0.8 / height, bottom=0.5 / height)  # room for the two-line title and the class names
    im = None
    for ax, direction in zip(axes[0], directions):
        grid = torch.tensor([[math.nan if resid[direction][c][layer]["restored_share"] is None
                              else resid[direction][c][layer]["restored_share"] for c in classes] for layer in range(layers)])
        im = ax.imshow(grid.numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
        for layer in range(layers):
            for k in range(len(classes)):
                value = float(grid[layer, k])
                ax.text(k, layer, "n/a" if math.isnan(value) else f"{value:+.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(value) > 0.6 else "black")
        ax.set_xticks(range(len(classes)), list(classes), fontsize=7, rotation=30)
        ax.set_yticks(range(layers), [f"L{layer}" for layer in range(layers)], fontsize=7)
        source, receiver = DIRECTIONS[direction]
        ax.set_title(f"{source} -> {receiver}", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), extend="both").set_label("restored share of answer logp", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return png_bytes(fig)


# ---------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m src.analysis.patching", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--sites", type=comma_list(SITES, what="sites from resid, heads"), default=list(SITES),
                        help="what to patch (default: resid,heads): resid, the residual stream after each block; heads, "
                        "each head's output")
    parser.add_argument("--classes", type=comma_list(POSITION_CLASSES, what="position classes from "
                                                     + ", ".join(POSITION_CLASSES)),
                        default=list(POSITION_CLASSES), help=f"position classes (default: all: {', '.join(POSITION_CLASSES)})")
    parser.add_argument("--min-gap", type=float_in(0.0, None), default=DEFAULT_MIN_GAP,
                        help="nats: the per-example share averages the pairs whose twins' answer log-probabilities differ "
                        "by at least this much (default: %(default)s)")
    parser.add_argument("--chunk", type=int_in(1, 100_000), default=DEFAULT_CHUNK,
                        help="pairs per forward pass (times the number of heads for the heads; default: %(default)s)")
    parser.add_argument("--out", type=path_arg, default=None, help="JSON path (default: RUN/patching.json); the figure goes "
                        "beside it (same name, .png)")
    return parser


def patching_run(run: Run, data: RunData, args) -> dict:
    """Activation patching on the matched pairs of an opened run; writes patching.json and its figure,
    returns the result."""
    # every input is checked before any computation, every output path before anything is written
    out_path = check_output_file(run.output("patching.json", args.out), "--out" if args.out else "output",
                                 "patching.json")
    png = check_output_file(out_path.with_suffix(".png"), "figure")
    cfg = run.cfg
    classes = [c for c in POSITION_CLASSES if c in args.classes]
    sites = [s for s in SITES if s in args.sites]
    flat_path, bracketed_path = cfg.data.path(FLAT), cfg.data.path(MATCHED)
    pairs = pairs_of(data.all_records(FLAT), data.all_records(MATCHED), flat_path, bracketed_path, cfg.model.max_seq_len,
                     cfg.data.answer_format, run.limit)
    print(run.titled(f"patching {len(pairs)} matched pairs: sites {', '.join(sites)}, classes {', '.join(classes)}, "
                     f"{cfg.model.num_layers} layers x {cfg.model.num_heads} heads"))
    tic = time.perf_counter()
    scan = patching_scan(run.model, pairs, classes, tuple(DIRECTIONS), sites, run.precision, args.chunk,
                         log=lambda *_: None, bar=run.bar)
    scan_s = time.perf_counter() - tic
    summary = summarize_scan(scan, cfg.model, args.min_gap)
    result = {
        "schema": SCHEMA,
        "run": str(run.path), "checkpoint": run.checkpoint, "epoch": run.ckpt["epoch"], "step": run.ckpt.get("step"),
        "config": cfg.name, "seed": run.seed, "device": str(run.device), "precision": run.precision,
        "limit": run.limit, "n_pairs": len(pairs), "files": {"flat": str(flat_path), "bracketed": str(bracketed_path)},
        "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "directions": {d: {"source": s, "receiver": r} for d, (s, r) in DIRECTIONS.items()},
        "sites": {s: SITES[s] for s in sites}, "position_classes": {c: POSITION_CLASSES[c] for c in classes},
        "bracket_counterpart": BRACKET_COUNTERPART, "class_counts": class_counts(pairs.alignments),
        "metric_definitions": METRIC_DEFINITIONS, "min_gap": args.min_gap, "resamples": stats.DEFAULT_RESAMPLES,
        "verdicts": "descriptive shares with intervals; each cell's logp_change carries a paired t-test, uncorrected "
                    "(the family is declared by whoever reads several cells); each cell's answer_correct change carries "
                    "an exact McNemar test, Holm per site and direction (`families`, each with its verdict)",
        "baseline": summarize_clean(scan["clean"]), **summary,
    }
    result["scan_s"] = scan_s
    result["elapsed_s"] = time.perf_counter() - tic
    if "resid" in summary:
        print(format_resid(summary["resid"], classes))
    figure = None
    if "resid" in summary:  # rendered in memory: nothing is written until everything is computed
        gap = result["baseline"]["bracketed_minus_flat"]["logp"]
        lo, hi = gap["ci95"]
        figure = render_figure(summary["resid"], classes, run.titled(
            f"{cfg.name} ({run.path.name}): activation patching on {len(pairs)} matched pairs, residual stream") +
            f"\nrestored share = sum(patched - receiver) / sum(source - receiver) of answer logp over a gap "
            f"(bracketed - flat) of {gap['estimate']:+.3f} [{lo:+.3f}, {hi:+.3f}] nats per pair")
    print(f"{scan_s:.1f} s of patching")
    write_result(out_path, result, (png, figure))
    return result


def main(argv=None) -> int:
    return analysis_main(build_parser, patching_run, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
