"""Interchange interventions on aligned counterfactual pairs: where does a model carry a causal variable?

    python -m src.analysis.interchange --run RUN [--variables value,operator] [--limit N] [--device cpu|cuda]

Variables (docs/DESIGN.md section 9), one pair file each, data/counterfactual_<variable>.jsonl.gz (read by
src.data.counterfactual.load_pairs, which checks every line against the causal model; the checks below add
the run's limits):
    value      V, the value of one bracketed sub-expression: base and source differ only inside that bracket
    operator   the operator that the bracket's result feeds (the one adjacent to the bracket pair, outside it)
A pair (base, source) shares one template (same length, same bracket and operator positions, numbers of
the same digit counts), so every position of the base has its counterpart at the same index of the
source, of the same kind: a patch never writes a bracket into a digit's position. `predicted` is the
causal model's answer: the base evaluated with the variable set to the source's value.

The intervention: for a site and a position class, the base runs with the activation at those positions
replaced by the source's (src.model Hooks.patch), and the answer is decoded greedily with the patch held at
every step. The patched positions are prompt positions, and a prompt position's activation depends on the
prompt alone, so the source's values are the same at every step.
    sites            hook_embed (the embedding), blocks.{l}.hook_resid_post (the residual stream after block
                     l) and each head's output blocks.{l}.attn.hook_z[:, :, h]
    position classes inside (the characters strictly inside the bracket pair), open (its `(`), close (its
                     `)`), operator (the operator the bracket's result feeds; pairs without one are left out
                     of that class), equals (the `=` token); with --classes, also bracket (exploratory, outside
                     the registered battery: the whole bracket pair, `(` to `)`; for a value pair it patches all
                     that differs at the embedding, and deeper its IIA falls as far as later positions have read
                     the bracket's value below the patched site)
Excluded by construction: the last block's residual output and its heads' outputs. In a causal decoder
the last block's output at a prompt position feeds only that position's own logits, and no class holds the
last prompt position (the space after `=`, whose logits give the first answer token), so a patch there
cannot change the answer; it is left out rather than reported as an IIA of 0.

Metric. IIA (interchange intervention accuracy) = the share of pairs whose decoded answer is exactly the
causal model's `predicted` answer, over the pairs whose `predicted` differs from the base's result, with a
95% Wilson interval, over all pairs and per template class (depth x inside operators x outer operator x
operands). `kept_base` = the share whose decoded answer is the base's own.
Controls (the pair file's `control` field):
    interchange       the intervention itself: IIA is the figure
    value_preserving  (value only) other digits inside the bracket, the same inner value: predicted is the
                      base's answer, so the figure is kept_base: a site that carries the value keeps it, a
                      site that carries the digits does not
    random            a random source of the same template whose predicted answer differs from the base's
    ceiling           every prompt position patched at the embedding: the base runs as the source, so the
                      decoded answer must be the source's on every pair the model gets right (1 exactly)
Every figure is read only on pairs whose base and source the model answers right unpatched (greedy
decoding); `counts` says how many that leaves, per control and template class.

Batching: all pairs of one site (every position class, and for the heads every head of the layer) are one
batch, split into chunks of --chunk rows. Whether greedy decoding gives an answer is read in one
teacher-forced forward pass per answer compared (`answer_hits`: the causal model's, the base's and the
source's, one pass for two that coincide), which decides exactly what decoding step by step decides.

Output: RUN/interchange.json (schema interchange/1), or RUN/interchange.limit<N>.json with --limit, and
the figure beside it (.png): IIA of the interchange control against relative depth (0 = embedding, 1 =
after the last block), residual stream, one line per position class, one panel per variable.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from src import stats
from src.analysis.common import (
    Run,
    RunData,
    add_run_arguments,
    analysis_main,
    head_label,
)
from src.cli import ArgumentParser, check_output_file, comma_list, int_in, path_arg
from src.data import ExpressionError, evaluate
from src.data import counterfactual
from src.device import autocast
from src.errors import UserError, run_main
from src.model import CompactTransformer, Hooks, Patch
from src.plotting import png_bytes, pyplot
from src.text import plain_text, shown
from src.rundir.atomic import write_result
from src.rundir.results import stamp
from src.tokenizer import ANSWER_SEPARATOR, BOS_ID, EOS_ID, PAD_ID, answer_text, encode

VARIABLES = {
    "value": "V, the value of the intervened bracketed sub-expression",
    "operator": "the operator that the bracket's result feeds (adjacent to the bracket pair, outside it)",
}
CONTROLS = {
    "interchange": "base and source differ only in the variable; IIA is the figure",
    "value_preserving": "other digits inside the bracket, the same inner value (predicted = the base's answer): "
                        "kept_base is the figure",
    "random": "a random source of the same template whose predicted answer differs from the base's",
}
CEILING = ("every prompt position patched at the embedding (hook_embed), interchange pairs: the decoded answer must "
           "be the source's (= predicted) on every pair the model answers right, IIA 1 exactly")
POSITION_CLASSES = {
    "inside": "the characters strictly inside the intervened bracket pair",
    "open": "its `(`",
    "close": "its `)`",
    "operator": "the operator the bracket's result feeds (pairs without one are left out of this class)",
    "equals": "the `=` token",
}
# Asked for by --classes only, never in the registered battery: exploratory, read beside it.
EXPLORATORY_CLASSES = {
    "bracket": "the whole bracket pair, its `(`, the characters inside and its `)` (exploratory): at the embedding "
               "a value pair's base then runs as its source; deeper, the IIA falls as far as later positions have "
               "already read the bracket's value below the patched site",
}
ALL_CLASSES = {**POSITION_CLASSES, **EXPLORATORY_CLASSES}
METRIC = {
    "iia": "interchange intervention accuracy: share of pairs whose greedily decoded answer (patch held at every "
           "step) is exactly str(predicted) then <EOS>, over the pairs whose predicted answer differs from the "
           "base's result; 95% Wilson interval",
    "kept_base": "share of pairs whose decoded answer is exactly the base's own answer; 95% Wilson interval",
}
PAIRS_COMMAND = counterfactual.PAIRS_COMMAND
IIA_REACH = 0.9  # the level whose first relative depth the summary reports (docs/PREREGISTRATION.md, H2)
DEFAULT_CHUNK = 8192
OPERATORS = "+-*"


def template_of(expr: str) -> str:
    """Every digit as N, every operator as o: two expressions align position by position iff these agree."""
    return re.sub(r"[+\-*]", "o", re.sub(r"[0-9]", "N", expr))


def class_key(template_class: dict) -> str:
    outer = template_class["outer_op"] or "none"
    return (f"depth{template_class['depth']}/inner{template_class['inner_ops']}/outer{outer}/"
            f"operands{template_class['operands']}")


# ---------------------------------------------------------------------------- the pair files


@dataclass(frozen=True)
class Pair:
    """One aligned pair of a pair file; `positions[cls]` are token positions (character index c is token c + 1)."""

    line: int
    control: str
    template_class: str
    base: str
    base_result: int
    source: str
    source_result: int
    predicted: int
    positions: dict

    @property
    def prompt_len(self) -> int:
        return 1 + len(self.base) + len(ANSWER_SEPARATOR)


def pairs_path(directory: Path, variable: str) -> Path:
    """The pair file of `variable` in `directory`: counterfactual_<variable>.jsonl.gz."""
    return Path(directory) / counterfactual.FILES[variable]


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_pair(obj, variable: str, line: int, where: str, max_seq_len: int, answer_format: str) -> Pair:
    """One line of a pair file, checked against the pair format; UserError naming the line."""
    def bad(why: str) -> UserError:
        return UserError(f"{where}: {why}; regenerate the pairs with `{PAIRS_COMMAND}`")

    if not isinstance(obj, dict):
        raise bad("not a JSON object")
    for key in ("variable", "control", "template", "template_class", "base", "source", "bracket", "sites", "predicted"):
        if key not in obj:
            raise bad(f"no '{key}'")
    if obj["variable"] != variable:
        raise bad(f"variable {obj['variable']!r} in the file of variable {variable!r}")
    control = obj["control"]
    if control not in CONTROLS or (control == "value_preserving" and variable != "value"):
        raise bad(f"control {control!r} is not one of {', '.join(CONTROLS)} (value_preserving for value only)")
    sides = {}
    for side in ("base", "source"):
        s = obj[side]
        if not (isinstance(s, dict) and isinstance(s.get("expr"), str) and _int(s.get("result"))):
            raise bad(f"'{side}' must be {{\"expr\": str, \"result\": int}}")
        try:
            value = evaluate(s["expr"])
        except ExpressionError as err:
            raise bad(f"{side} {s['expr']!r} is not an expression of the grammar ({err})") from None
        if value != s["result"]:
            raise bad(f"{side} {s['expr']!r} has result {s['result']}, but evaluates to {value}")
        sides[side] = s
    base, source = sides["base"]["expr"], sides["source"]["expr"]
    if not (template_of(base) == template_of(source) == obj["template"]):
        raise bad(f"base {base!r} and source {source!r} do not align: templates {template_of(base)!r} and "
                  f"{template_of(source)!r}, the record's {obj['template']!r} (same length, same bracket and operator "
                  "positions, same digit counts)")
    tc = obj["template_class"]
    if not (isinstance(tc, dict) and tc.get("depth") in (1, 2) and tc.get("inner_ops") in ("+-", "*")
            and tc.get("outer_op") in ("+", "-", "*", None) and tc.get("operands") in (2, 3, 4)):
        raise bad(f"template_class {tc!r}: needs depth 1|2, inner_ops '+-'|'*', outer_op '+'|'-'|'*'|null, operands 2-4")
    bracket, sites = obj["bracket"], obj["sites"]
    if not (isinstance(bracket, list) and len(bracket) == 2 and all(_int(i) for i in bracket)
            and 0 <= bracket[0] < bracket[1] < len(base) and base[bracket[0]] == "(" and base[bracket[1]] == ")"):
        raise bad(f"bracket {bracket!r} is not the [index of '(', index of ')'] of {base!r}")
    i_open, i_close = bracket
    inside = list(range(i_open + 1, i_close))
    if not isinstance(sites, dict) or sites.get("open") != i_open or sites.get("close") != i_close \
            or sites.get("inside") != inside:
        raise bad(f"sites {sites!r} do not match the bracket {bracket!r} (inside must be {inside})")
    op = sites.get("operator")
    if op is not None and not (_int(op) and op in (i_open - 1, i_close + 1) and 0 <= op < len(base)
                               and base[op] in OPERATORS and source[op] in OPERATORS):
        raise bad(f"sites.operator {op!r} is not the index of an operator adjacent to the bracket pair outside it")
    if variable == "operator" and op is None:
        raise bad("an operator pair needs sites.operator")
    predicted = obj["predicted"]
    if not _int(predicted):
        raise bad("'predicted' is not an integer")
    outside_equal = all(b == s for k, (b, s) in enumerate(zip(base, source)) if not i_open < k < i_close)
    if variable == "operator":
        swapped = base[:op] + source[op] + base[op + 1:]
        if evaluate(swapped) != predicted:
            raise bad(f"predicted {predicted}, but the base with the source's operator, {swapped!r}, is {evaluate(swapped)}")
    if control == "interchange":
        differ = outside_equal if variable == "value" else all(
            b == s for k, (b, s) in enumerate(zip(base, source)) if k != op)
        if not differ:
            raise bad(f"an interchange pair must differ only {'inside the bracket' if variable == 'value' else 'in the operator'}"
                      f": {base!r} and {source!r}")
        if predicted != sides["source"]["result"]:
            raise bad(f"predicted {predicted} of an interchange pair must be the source's result {sides['source']['result']}")
    if control == "value_preserving":
        if not outside_equal or obj.get("base_value") != obj.get("source_value"):
            raise bad("a value_preserving pair must differ only inside the bracket, with base_value == source_value")
        if predicted != sides["base"]["result"]:
            raise bad(f"predicted {predicted} of a value_preserving pair must be the base's result {sides['base']['result']}")
    if control in ("interchange", "random") and predicted == sides["base"]["result"]:
        raise bad(f"predicted {predicted} equals the base's result: the {control} control needs a different answer")
    longest = max(len(answer_text(v, answer_format)) for v in (predicted, sides["base"]["result"], sides["source"]["result"]))
    need = 1 + len(base) + len(ANSWER_SEPARATOR) + longest + 1
    if need > max_seq_len + 1:
        raise bad(f"{base!r} with an answer of {longest} characters needs {need} tokens, more than max_seq_len "
                  f"{max_seq_len} + 1")
    positions = {"inside": tuple(c + 1 for c in inside), "open": (i_open + 1,), "close": (i_close + 1,),
                 "operator": () if op is None else (op + 1,), "equals": (len(base) + 2,),
                 "bracket": tuple(range(i_open + 1, i_close + 2))}
    return Pair(line, control, class_key(tc), base, sides["base"]["result"], source, sides["source"]["result"],
                predicted, positions)


def load_pairs(path: Path, variable: str, max_seq_len: int, answer_format: str = "plain",
               limit: int | None = None) -> list[Pair]:
    """The pairs of one file (the first `limit` lines with --limit), read and checked line by line by the pair
    files' reader (src.data.counterfactual.load_pairs), then each against this analysis's format and the run's
    max_seq_len (`parse_pair`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; the {variable} pairs are made with `{PAIRS_COMMAND}` (or pass --pairs-dir)")
    rows = counterfactual.load_pairs(path, variable, limit)
    return [parse_pair(obj, variable, line_no, f"{path}:{line_no}", max_seq_len, answer_format)
            for line_no, obj in enumerate(rows, start=1)]


# ---------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    name: str             # the activation's name (src.model activation_names)
    kind: str             # "embed", "resid" or "head"
    layer: int | None
    head: int | None
    relative_depth: float  # 0 = the embedding, 1 = after the last block; a head of block l sits at (l + 0.5) / L

    @property
    def label(self) -> str:
        if self.kind == "embed":
            return "embed"
        return f"resid L{self.layer}" if self.kind == "resid" else head_label(self.layer, self.head)


def sites_of(cfg) -> tuple[list[Site], list[dict]]:
    """(the sites patched, the sites excluded by construction with the reason)."""
    L, H = cfg.num_layers, cfg.num_heads
    sites = [Site("hook_embed", "embed", None, None, 0.0)]
    for layer in range(L - 1):
        sites.append(Site(f"blocks.{layer}.hook_resid_post", "resid", layer, None, (layer + 1) / L))
    for layer in range(L - 1):
        sites += [Site(f"blocks.{layer}.attn.hook_z", "head", layer, h, (layer + 0.5) / L) for h in range(H)]
    why = ("the last block's output at a prompt position feeds only that position's own logits, and no position class "
           "holds the last prompt position: it cannot change the answer")
    excluded = [{"name": f"blocks.{L - 1}.hook_resid_post", "reason": why},
                {"name": f"blocks.{L - 1}.attn.hook_z", "heads": [head_label(L - 1, h) for h in range(H)], "reason": why}]
    return sites, excluded


# ---------------------------------------------------------------------------- tensors and decoding


@dataclass
class PairTensors:
    """Pairs as tensors of one width: base and source prompts (<PAD> after), the answers to compare with."""

    base: torch.Tensor        # [N, W] <BOS>expr = , <PAD> after
    source: torch.Tensor      # [N, W]
    prompt_len: torch.Tensor  # [N]
    targets: dict             # "predicted" | "base" | "source" -> [N, S] answer ids then <EOS>, -1 after
    masks: dict               # position class -> [N, W] bool; "prompt" -> every prompt position
    steps: int                # decoding steps: the longest answer compared, and its <EOS>


def answer_ids(result: int, answer_format: str) -> list[int]:
    return encode(answer_text(result, answer_format)) + [EOS_ID]


def pair_tensors(pairs: list[Pair], max_seq_len: int, answer_format: str = "plain",
                 classes=tuple(POSITION_CLASSES)) -> PairTensors:
    n = len(pairs)
    answers = {"predicted": [answer_ids(p.predicted, answer_format) for p in pairs],
               "base": [answer_ids(p.base_result, answer_format) for p in pairs],
               "source": [answer_ids(p.source_result, answer_format) for p in pairs]}
    steps = max(len(a) for v in answers.values() for a in v)
    width = min(max_seq_len, max(p.prompt_len for p in pairs) + steps - 1)
    base = torch.full((n, width), PAD_ID, dtype=torch.long)
    source = torch.full((n, width), PAD_ID, dtype=torch.long)
    masks = {c: torch.zeros(n, width, dtype=torch.bool) for c in (*classes, "prompt")}
    for i, p in enumerate(pairs):
        for row, expr in ((base, p.base), (source, p.source)):
            ids = [BOS_ID] + encode(expr + ANSWER_SEPARATOR)
            row[i, :len(ids)] = torch.tensor(ids)
        for cls in classes:
            masks[cls][i, list(p.positions[cls])] = True
        masks["prompt"][i, :p.prompt_len] = True
    targets = {}
    for k, rows in answers.items():
        t = torch.full((n, steps), -1, dtype=torch.long)
        for i, ids in enumerate(rows):
            t[i, :len(ids)] = torch.tensor(ids)
        targets[k] = t
    prompt_len = torch.tensor([p.prompt_len for p in pairs], dtype=torch.long)
    return PairTensors(base, source, prompt_len, targets, masks, steps)


@torch.no_grad()
def decode(model: CompactTransformer, prompts: torch.Tensor, prompt_len: torch.Tensor, steps: int,
           hooks: Hooks | None = None, precision: str = "fp32") -> torch.Tensor:
    """Greedy decoding of every row at once, `hooks` (the patch) held at every step: [R, steps] generated ids,
    <PAD> after a row's <EOS>. The buffer keeps its width, so a patch of that width applies at every step.
    The battery reads its answers with `answer_hits`, which decides the same in fewer passes; this is the
    step-by-step rule it is tested against."""
    device = prompts.device
    tokens = prompts.clone()
    n, width = tokens.shape
    rows = torch.arange(n, device=device)
    frontier = prompt_len.to(device).clone()
    done = torch.zeros(n, dtype=torch.bool, device=device)
    generated = torch.full((n, steps), PAD_ID, dtype=torch.long, device=device)
    for step in range(steps):
        with autocast(device, precision):
            logits = model(tokens, hooks=hooks).logits
        next_id = logits[rows, (frontier - 1).clamp(max=width - 1)].argmax(-1)
        next_id = torch.where(done, torch.full_like(next_id, PAD_ID), next_id)
        generated[:, step] = next_id
        done |= next_id == EOS_ID
        if step + 1 < steps:
            write = frontier < width
            tokens[rows[write], frontier[write]] = next_id[write]
            frontier = frontier + 1
        if bool(done.all()):
            break
    return generated


@torch.no_grad()
def answer_hits(model: CompactTransformer, prompts: torch.Tensor, prompt_len: torch.Tensor, targets: dict,
                hooks: Hooks | None = None, precision: str = "fp32") -> dict:
    """{key: [R] bool}: would greedy decoding, `hooks` held at every step, give exactly targets[key] ([R, S]
    answer ids then <EOS>, -1 after)? The same answer as `matches(decode(...), target)`, in one teacher-forced
    forward pass per distinct target instead of one pass per decoding step.

    Greedy decoding gives a target iff at each of the target's positions the argmax of the logits, given the
    prompt and the target's tokens before that position, is the target's token: while the target is right so
    far, the decoded prefix is the target's prefix. In a causal decoder a position's logits depend only on the
    tokens up to it, so the teacher-forced pass computes, at every position it reads, what the decoding step
    there computes; the buffer has the same width, so a patch of that width applies as it does there, and the
    passes have the same shape, so not even a near-tie can fall differently. The rule is exact_match's
    "teacher_forced" method (src.metrics.EXACT_MATCH_METHODS, used by the ablation scan); it is written on
    the pair tensors here, not on a Batch, because the patch is laid out on the decoding buffer's width."""
    device = prompts.device
    n, width = prompts.shape
    rows = torch.arange(n, device=device)[:, None]
    start = prompt_len.to(device)[:, None]
    out: dict = {}
    done: list[tuple[str, torch.Tensor]] = []
    for key, target in targets.items():
        target = target.to(device)
        same = next((k for k, t in done if torch.equal(t, target)), None)
        if same is not None:
            out[key] = out[same]
            continue
        steps = target.shape[1]
        read = (start - 1 + torch.arange(steps, device=device)[None, :]).clamp(max=width - 1)  # [R, S]
        tokens = prompts.clone()
        write = (start + torch.arange(steps, device=device)[None, :]).clamp(max=width - 1)
        keep = (target >= 0) & (start + torch.arange(steps, device=device)[None, :] < width)
        tokens[rows.expand_as(write)[keep], write[keep]] = target[keep]
        with autocast(device, precision):
            logits = model(tokens, hooks=hooks).logits
        predicted = logits[rows, read].argmax(-1)  # [R, S]
        out[key] = ((predicted == target) | (target < 0)).all(1)
        done.append((key, target))
    return out


def matches(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[R] bool: the generated ids are exactly the target's (answer then <EOS>; -1 marks the target's end)."""
    return ((generated == target) | (target < 0)).all(1)


def hits_of(model, prompts, prompt_len, targets: dict, hooks: Hooks | None, precision: str,
            step_by_step: bool = False) -> dict:
    """`answer_hits`, or with step_by_step=True the same answers read from `decode` (one pass per decoding
    step: the reference, kept for the benchmark that times the two)."""
    if not step_by_step:
        return answer_hits(model, prompts, prompt_len, targets, hooks, precision)
    steps = max(t.shape[1] for t in targets.values())
    generated = decode(model, prompts, prompt_len, steps, hooks, precision)
    return {k: matches(generated[:, :t.shape[1]], t.to(prompts.device)) for k, t in targets.items()}


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


@torch.no_grad()
def record_sources(model, tensors: PairTensors, names: list[str], precision: str, chunk: int) -> dict:
    """The source prompts' activations at `names` ([N, W, ...] each, on the model's device)."""
    device = next(model.parameters()).device
    parts = {name: [] for name in names}
    for idx in _chunks(len(tensors.source), chunk):
        with autocast(device, precision):
            out = model(tensors.source[idx].to(device), hooks=Hooks(record=names))
        for name in names:
            parts[name].append(out.activations[name])
    return {name: torch.cat(v) for name, v in parts.items()}


@torch.no_grad()
def unpatched(model, tensors: PairTensors, precision: str, chunk: int, step_by_step: bool = False) -> dict:
    """Greedy answers of the bases and the sources, unpatched: {base_correct, source_correct} [N] bool."""
    device = next(model.parameters()).device
    out = {"base_correct": [], "source_correct": []}
    for idx in _chunks(len(tensors.base), chunk):
        for side in ("base", "source"):
            prompts = getattr(tensors, side)[idx].to(device)
            hit = hits_of(model, prompts, tensors.prompt_len[idx], {side: tensors.targets[side][idx]}, None,
                          precision, step_by_step)
            out[f"{side}_correct"].append(hit[side].cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def patched_runs(model, tensors: PairTensors, jobs: list[tuple], source_acts: dict, precision: str, chunk: int,
                 progress=None, step_by_step: bool = False) -> dict:
    """Every job (site, position class) on every pair that has the class, batched by activation name.

    Returns {(site.label, cls): {"rows": pair indices, "predicted": [R] bool, "base": [R] bool, "source": [R] bool}}."""
    device = next(model.parameters()).device
    num_heads = model.cfg.num_heads
    by_name: dict[str, list[tuple]] = {}
    for site, cls in jobs:
        by_name.setdefault(site.name, []).append((site, cls))
    results = {}
    for name, group in by_name.items():
        job_of, pair_of = [], []
        for j, (site, cls) in enumerate(group):
            have = tensors.masks[cls].any(1).nonzero().squeeze(1)
            job_of.append(torch.full((len(have),), j, dtype=torch.long))
            pair_of.append(have)
        job_of, pair_of = torch.cat(job_of), torch.cat(pair_of)
        classes = sorted({cls for _, cls in group})
        class_masks = torch.stack([tensors.masks[c] for c in classes])  # [C, N, W]
        class_of_job = torch.tensor([classes.index(cls) for _, cls in group])
        head_of_job = torch.tensor([site.head if site.head is not None else -1 for site, _ in group])
        hits = {k: torch.zeros(len(pair_of), dtype=torch.bool) for k in ("predicted", "base", "source")}
        for idx in _chunks(len(pair_of), chunk):
            pairs, jobs_here = pair_of[idx], job_of[idx]
            pos = class_masks[class_of_job[jobs_here], pairs].to(device)  # [R, W]
            values = source_acts[name][pairs.to(device)]
            if values.dim() == 4:  # hook_z [R, W, H, d]: one head per row
                heads = head_of_job[jobs_here].to(device)
                head_mask = torch.arange(num_heads, device=device)[None, :] == heads[:, None]  # [R, H]
                mask = pos[:, :, None, None] & head_mask[:, None, :, None]
            else:
                mask = pos[:, :, None]
            hooks = Hooks(patch={name: Patch(values, mask)})
            here = hits_of(model, tensors.base[pairs].to(device), tensors.prompt_len[pairs],
                           {k: tensors.targets[k][pairs] for k in hits}, hooks, precision, step_by_step)
            for k, hit in hits.items():
                hit[idx] = here[k].cpu()
        for j, (site, cls) in enumerate(group):
            sel = job_of == j
            results[(site.label, cls)] = {"rows": pair_of[sel], **{k: v[sel] for k, v in hits.items()}}
        if progress is not None:
            progress(name, len(pair_of))
    return results


# ---------------------------------------------------------------------------- summaries


def proportion(hits: int, n: int) -> dict:
    return {"n": n, "hits": hits, "value": hits / n if n else None,
            "ci95": list(stats.wilson_interval(hits, n)) if n else None}


@dataclass(frozen=True)
class PairFacts:
    """What a cell's summary reads of each pair, worked out once for all the cells of a group of pairs."""
    differs: torch.Tensor      # [N] bool: the pair's predicted answer differs from the base's (counted by IIA)
    class_id: torch.Tensor     # [N] long: the pair's template class, an index into `classes`
    classes: tuple[str, ...]   # the template classes, sorted


def pair_facts(pairs: list[Pair]) -> PairFacts:
    classes = tuple(sorted({p.template_class for p in pairs}))
    index = {c: i for i, c in enumerate(classes)}
    return PairFacts(torch.tensor([p.predicted != p.base_result for p in pairs], dtype=torch.bool),
                     torch.tensor([index[p.template_class] for p in pairs], dtype=torch.long), classes)


def cell_summary(run: dict, facts: PairFacts, scored: torch.Tensor) -> dict:
    """IIA and kept_base of one cell, overall and per template class (the classes the cell's pairs have, in
    sorted order). `scored`: [N] bool, the pairs counted."""
    rows = run["rows"]
    keep = scored[rows]
    rows = rows[keep]
    pred, base = run["predicted"][keep], run["base"][keep]
    differs, class_id = facts.differs[rows], facts.class_id[rows]
    out = {"n": len(rows), "iia": proportion(int((pred & differs).sum()), int(differs.sum())),
           "kept_base": proportion(int(base.sum()), len(rows)), "by_class": {}}
    per_class = lambda mask: torch.bincount(class_id[mask], minlength=len(facts.classes)).tolist()  # noqa: E731
    pairs_in, iia_hits, iia_n, kept = (per_class(m) for m in (torch.ones_like(base), pred & differs, differs, base))
    for i, cls in enumerate(facts.classes):
        if pairs_in[i]:
            out["by_class"][cls] = {"iia": proportion(iia_hits[i], iia_n[i]),
                                    "kept_base": proportion(kept[i], pairs_in[i])}
    return out


def class_counts(pairs: list[Pair], correct: torch.Tensor) -> dict:
    out = {}
    for i, p in enumerate(pairs):
        c = out.setdefault(p.template_class, {"pairs": 0, "both_correct": 0})
        c["pairs"] += 1
        c["both_correct"] += int(correct[i])
    return dict(sorted(out.items()))


def first_reach(cells: list[dict], cls: str, level: float = IIA_REACH) -> dict | None:
    """The shallowest residual-stream site (embedding or a block's output) whose IIA at `cls` is >= level."""
    reached = [c for c in cells if c["kind"] in ("embed", "resid") and c["position_class"] == cls
               and c["iia"]["value"] is not None and c["iia"]["value"] >= level]
    if not reached:
        return None
    best = min(reached, key=lambda c: c["relative_depth"])
    return {"site": best["site"], "relative_depth": best["relative_depth"], "iia": best["iia"]["value"]}


def interchange_variable(model, pairs: list[Pair], cfg, precision: str, chunk: int, log=print,
                         classes=tuple(POSITION_CLASSES)) -> dict:
    """Every control of one variable's pairs: counts, the ceiling (interchange pairs) and every cell of the
    position classes `classes`."""
    answer_format = cfg.data.answer_format
    sites, _ = sites_of(cfg.model)
    out = {"controls": {}}
    for control in CONTROLS:
        group = [p for p in pairs if p.control == control]
        if not group:
            continue
        tensors = pair_tensors(group, cfg.model.max_seq_len, answer_format)
        clean = unpatched(model, tensors, precision, chunk)
        correct = clean["base_correct"] & clean["source_correct"]
        entry = {"n_pairs": len(group), "base_correct": int(clean["base_correct"].sum()),
                 "source_correct": int(clean["source_correct"].sum()), "both_correct": int(correct.sum()),
                 "by_class": class_counts(group, correct), "cells": []}
        log(f"  {control}: {len(group)} pairs, {int(correct.sum())} with base and source answered right")
        out["controls"][control] = entry
        kept = correct.nonzero().squeeze(1)
        if len(kept) == 0:
            continue
        group = [group[i] for i in kept.tolist()]
        tensors = pair_tensors(group, cfg.model.max_seq_len, answer_format, classes)
        names = sorted({s.name for s in sites})
        acts = record_sources(model, tensors, names, precision, chunk)
        jobs = [(s, cls) for s in sites for cls in classes]
        embed = sites[0]
        ceiling_site = Site(embed.name, "embed", None, None, 0.0)
        tic = time.perf_counter()
        runs = patched_runs(model, tensors, jobs + [(ceiling_site, "prompt")], acts, precision, chunk,
                            progress=lambda name, rows, tic=tic: log(f"    {name}: {rows} patched decodings "
                                                                     f"({time.perf_counter() - tic:.1f} s)"))
        scored = torch.ones(len(group), dtype=torch.bool)
        facts = pair_facts(group)
        for site, cls in jobs:
            cell = {"site": site.label, "name": site.name, "kind": site.kind, "layer": site.layer,
                    "head": site.head, "relative_depth": site.relative_depth, "position_class": cls}
            cell.update(cell_summary(runs[(site.label, cls)], facts, scored))
            entry["cells"].append(cell)
        ceiling = runs[(ceiling_site.label, "prompt")]
        source_share = proportion(int(ceiling["source"].sum()), len(ceiling["source"]))
        entry["ceiling"] = {"what": CEILING, "source_answer": source_share,
                            "check": "passed" if source_share["hits"] == source_share["n"] else "FAILED"}
        if control == "interchange":
            entry["ceiling"]["iia"] = cell_summary(ceiling, facts, scored)["iia"]
        if entry["ceiling"]["check"] != "passed":
            print(f"warning: {control}: the all-position embedding patch gave the source's answer on "
                  f"{source_share['hits']} of {source_share['n']} pairs, not all: the patch or the decoding is not "
                  "what it should be", file=sys.stderr)
        entry["first_reach"] = {cls: first_reach(entry["cells"], cls) for cls in classes}
    return out


# ---------------------------------------------------------------------------- output


def cell_classes(cells: list[dict]) -> list[str]:
    """The position classes of a variable's cells, in the order they were run."""
    return list(dict.fromkeys(c["position_class"] for c in cells))


def format_table(variable: str, entry: dict) -> str:
    cells = [c for c in entry["cells"] if c["kind"] != "head"]
    classes = cell_classes(cells)
    lines = [f"{variable}, interchange: IIA by residual site (rows) and position class (columns), n in brackets",
             f"{'site':<10} {'depth':>5}  " + "  ".join(f"{c:>14}" for c in classes)]
    for label in dict.fromkeys(c["site"] for c in cells):
        row = {c["position_class"]: c for c in cells if c["site"] == label}
        any_cell = next(iter(row.values()))
        texts = []
        for cls in classes:
            iia = row[cls]["iia"]
            texts.append("n/a" if iia["value"] is None else f"{iia['value']:.3f} ({iia['n']})")
        lines.append(f"{label:<10} {any_cell['relative_depth']:>5.2f}  " + "  ".join(f"{t:>14}" for t in texts))
    return "\n".join(lines)


@plain_text()  # names drawn as written: no mathtext
def render_figure(result: dict, title: str) -> bytes | None:
    """IIA (interchange control) against relative depth on the residual stream, one line per position class."""
    title = shown(title)  # a run directory's name may hold bytes that are not UTF-8
    variables = [v for v, e in result["variables"].items() if e["controls"].get("interchange", {}).get("cells")]
    if not variables:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(variables), figsize=(4.2 * len(variables), 3.4), dpi=100, squeeze=False)
    for ax, variable in zip(axes[0], variables):
        cells = [c for c in result["variables"][variable]["controls"]["interchange"]["cells"] if c["kind"] != "head"]
        for cls in cell_classes(cells):
            pts = [(c["relative_depth"], c["iia"]["value"]) for c in cells
                   if c["position_class"] == cls and c["iia"]["value"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=cls)
        ax.axhline(IIA_REACH, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(-0.03, 1.0)
        ax.set_xlabel("relative depth (0 = embedding, 1 = after the last block; excluded)", fontsize=7)
        ax.set_ylabel("IIA (share giving the predicted answer)", fontsize=7)
        ax.set_title(f"{variable}: {VARIABLES[variable][:48]}", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m src.analysis.interchange", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--variables", type=comma_list(VARIABLES, what="variables from " + ", ".join(VARIABLES)),
                        default=list(VARIABLES), help="causal variables to test (default: value,operator); each needs "
                        "its pair file counterfactual_<variable>.jsonl.gz")
    parser.add_argument("--pairs-dir", type=Path, default=None,
                        help="directory of the pair files (default: the directory of the run's test_flat file, data/)")
    parser.add_argument("--classes", type=comma_list(ALL_CLASSES, what="position classes from " + ", ".join(ALL_CLASSES)),
                        default=list(POSITION_CLASSES), metavar="CLASS,...",
                        help="position classes to patch (default: the battery's " + ", ".join(POSITION_CLASSES)
                        + "); 'bracket' (the whole bracket pair) is exploratory, and without --out a run that asks "
                        "for other classes than the default writes interchange.<classes>.json, never the battery's file")
    parser.add_argument("--chunk", type=int_in(1, 1_000_000), default=DEFAULT_CHUNK,
                        help="rows per forward pass (pairs x position classes x heads; default: %(default)s)")
    parser.add_argument("--compress", action="store_true",
                        help="write the JSON gzip-compressed (interchange.json.gz; read transparently by the project's "
                        "reader), for committing a large result")
    parser.add_argument("--out", type=path_arg, default=None,
                        help="JSON path (default: RUN/interchange.json, or RUN/interchange.limit<N>.json with --limit); "
                        "the figure goes beside it (.png)")
    return parser


def interchange_run(run: Run, data: RunData, args) -> dict:
    """interchange.json of an opened run (RUN/interchange.limitN.json under --limit), the figure beside it;
    returns what it wrote. src.analysis.run_all calls it with the run it opened once."""
    model, ckpt, cfg, device = run.model, run.ckpt, run.cfg, run.device
    classes = [c for c in ALL_CLASSES if c in args.classes]
    name = "interchange.json" if classes == list(POSITION_CLASSES) else f"interchange.{'+'.join(classes)}.json"
    out_path = check_output_file(run.output(name, args.out), "--out" if args.out else "output", name)
    png = check_output_file(out_path.with_suffix(".png"), "figure")
    pairs_dir = args.pairs_dir or cfg.data.path("test_flat").parent
    variables = [v for v in VARIABLES if v in args.variables]
    pairs = {v: load_pairs(pairs_path(pairs_dir, v), v, cfg.model.max_seq_len, cfg.data.answer_format, run.limit)
             for v in variables}  # every input checked before any computation
    sites, excluded = sites_of(cfg.model)
    tic = time.perf_counter()
    result = {
        "run": str(run.path), "checkpoint": run.checkpoint, "epoch": ckpt["epoch"], "step": ckpt.get("step"),
        "config": cfg.name, "seed": run.seed, "device": str(device), "precision": run.precision,
        "limit": run.limit, "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "metric": "iia", "metric_definitions": METRIC, "controls": {**CONTROLS, "ceiling": CEILING},
        "position_classes": {c: ALL_CLASSES[c] for c in classes}, "sites": {"patched": [s.label for s in sites], "excluded": excluded},
        "relative_depth": "0 = the embedding, (l + 1) / L = after block l; a head of block l at (l + 0.5) / L",
        "decoding": "greedy, the patch held at every step (the patched positions are prompt positions)",
        "restriction": "every figure is read on the pairs whose base and source the model answers right unpatched",
        "iia_reach": IIA_REACH, "variables": {},
    }
    for variable in variables:
        path = pairs_path(pairs_dir, variable)
        print(f"{variable}: {len(pairs[variable])} pairs from {shown(path)} ...")
        entry = interchange_variable(model, pairs[variable], cfg, run.precision, args.chunk, classes=classes)
        result["variables"][variable] = {"what": VARIABLES[variable], "file": str(path),
                                         "lines_read": len(pairs[variable]), **entry}
        if entry["controls"].get("interchange", {}).get("cells"):
            print(format_table(variable, entry["controls"]["interchange"]))
    result["elapsed_s"] = time.perf_counter() - tic
    print(f"{result['elapsed_s']:.1f} s of interchange interventions")
    figure = render_figure(result, run.titled(f"{cfg.name} ({run.path.name}): interchange intervention accuracy, "
                                              "residual stream, interchange pairs answered right unpatched"))
    out = stamp("interchange", result)
    write_result(out_path, out, (png, figure), compress=args.compress)
    return out


def main(argv=None) -> int:
    return analysis_main(build_parser, interchange_run, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
