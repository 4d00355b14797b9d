"""The cost of brackets by kind, and exact_match on the items a run has not seen up to near twins.

Called by `python -m src.analysis.evaluate` (its eval.json keys "bracket_cost_by_kind" and
"near_twin_free"); the functions take per-example scores the evaluation has already computed.

bracket_cost_by_kind: paired yes/no outcomes (exact_match) on two kinds of pair, each a flat test
expression against the same expression with one pair of brackets added:
    redundant             pilot_test_paren_matched.jsonl line i against pilot_test_flat.jsonl line i:
                          brackets that change nothing (same parse, same answer)
    precedence_changing   pilot_test_paren_precedence.jsonl against the flat lines it names
                          (`flat_line`): brackets that change the order of evaluation and the answer
For each: the outcomes of every pair (strings of 0/1, flat and bracketed, in the file's order),
exact_match of each side, the difference (bracketed minus flat, absolute), the exact McNemar test,
and the same per expression class (operands x operators of the flat expression, src/data/classes.py).
Every test states its floor: with d discordant pairs the smallest p an exact McNemar test can give
is 2^(1-d) (1 for d = 0). The two kinds' overall tests form one family (Holm, alpha 0.05); a family
none of whose tests can reach its first Holm threshold is reported "cannot decide", never "no effect".
The per-class tests are exploratory: no family, their floors stated.

near_twin_free: for each evaluated file, exact_match on the whole file and on the subset whose
canonical form (src/data/canonical.py) is absent from the run's training set, with Wilson intervals.
The training set's forms are cached beside a large generated set (src.data.canonical.training_forms).
"""

from __future__ import annotations

import math
from pathlib import Path

from src import stats
from src.data import load_jsonl, make_batch
from src.data.canonical import canonical, training_forms
from src.data.classes import classify
from src.data.precedence import PRECEDENCE_SPLIT, load_precedence
from src.errors import UserError
from src.metrics import per_example_scores

ALPHA = 0.05
CLASS_DIMENSIONS = ("operands", "operators")
PRECEDENCE_FILE = f"{PRECEDENCE_SPLIT}.jsonl"


def mcnemar_floor(discordant: int) -> float:
    """The smallest two-sided p an exact McNemar test can give with this many discordant pairs."""
    return 1.0 if discordant <= 0 else min(1.0, 2.0 ** (1 - discordant))


def paired_outcomes(flat: list[bool], bracketed: list[bool]) -> dict:
    """exact_match of each side, their difference and the exact McNemar test with its floor."""
    n = len(flat)
    test = stats.mcnemar_exact(flat, bracketed)
    d = test["only_a"] + test["only_b"]
    return {"n_pairs": n, "flat_exact_match": sum(flat) / n if n else None,
            "bracketed_exact_match": sum(bracketed) / n if n else None,
            "difference": test["estimate"] if n else None,  # bracketed minus flat, in exact_match (absolute)
            "only_flat_correct": test["only_a"], "only_bracketed_correct": test["only_b"], "discordant": d,
            "test": "mcnemar_exact", "p_value": test["p_value"] if n else None, "p_floor": mcnemar_floor(d)}


def _kind(what: str, flat_exprs: list[str], flat: list[bool], bracketed: list[bool]) -> dict:
    out = {"what": what, **paired_outcomes(flat, bracketed),
           "outcomes": {"flat": "".join("01"[x] for x in flat), "bracketed": "".join("01"[x] for x in bracketed)}}
    groups: dict[str, list[int]] = {}
    for i, expr in enumerate(flat_exprs):
        groups.setdefault(classify(expr).key(CLASS_DIMENSIONS), []).append(i)
    out["by_class"] = {key: paired_outcomes([flat[i] for i in idx], [bracketed[i] for i in idx])
                       for key, idx in sorted(groups.items())}
    return out


def _family(kinds: dict) -> dict:
    """Holm over the kinds' overall tests; "cannot decide" when no test's floor reaches the first threshold."""
    tests = {name: k for name, k in kinds.items() if k.get("p_value") is not None}
    m = len(tests)
    if not m:
        return {"tests": [], "verdict": "cannot decide (no test)"}
    adjusted = stats.holm([t["p_value"] for t in tests.values()])
    first_threshold = ALPHA / m
    for (name, t), p in zip(tests.items(), adjusted):
        t["p_adjusted"] = p
        t["significant"] = p < ALPHA
    out = {"name": "bracket_cost_by_kind", "correction": "holm", "alpha": ALPHA, "tests": list(tests),
           "first_holm_threshold": first_threshold}
    if all(t["p_floor"] > first_threshold for t in tests.values()):
        out["verdict"] = f"cannot decide (largest d = {max(t['discordant'] for t in tests.values())})"
    else:
        out["verdict"] = ", ".join(f"{name}: {'significant' if t['significant'] else 'not significant'}"
                                   for name, t in tests.items())
    return out


def _as_bools(values) -> list[bool]:
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise ValueError("exact_match was not scored (NaN): decode the answers")
    return [bool(v) for v in values]


def report(model, cfg, scores: dict, limit: int | None, device, precision: str) -> dict:
    """Both parts of the module docstring, as eval.json's keys "bracket_cost_by_kind" and "near_twin_free"."""
    costs, precedence = bracket_cost_by_kind(model, cfg, scores, limit, device, precision)
    return {"bracket_cost_by_kind": costs, "near_twin_free": near_twin_free(cfg, scores, limit, precedence)}


def bracket_cost_by_kind(model, cfg, scores: dict, limit: int | None, device, precision: str) -> tuple[dict, dict]:
    """The two kinds of bracket cost (module docstring), from the evaluation's per-example scores of test_flat
    and test_paren_matched; the precedence file beside test_flat is scored here. Also returns
    {"test_paren_precedence": (expressions, exact_match)} (empty without the file), for `near_twin_free`."""
    if "test_flat" not in scores:
        return {"unavailable": "test_flat was not evaluated"}, {}
    flat_path = cfg.data.path("test_flat")
    flat_records = load_jsonl(flat_path, cfg.model.max_seq_len)[:limit]
    flat = _as_bools(scores["test_flat"]["exact_match"])
    kinds = {}
    if "test_paren_matched" in scores:
        matched = _as_bools(scores["test_paren_matched"]["exact_match"])
        if len(matched) != len(flat):
            raise UserError(f"{cfg.data.path('test_paren_matched')}: {len(matched)} lines scored against {len(flat)} "
                            f"of {flat_path}; the matched file pairs line i with line i")
        kinds["redundant"] = _kind("test_paren_matched line i against test_flat line i: value-preserving brackets",
                                   [r.expr for r in flat_records], flat, matched)
    precedence_path, scored = Path(flat_path).parent / PRECEDENCE_FILE, {}
    if not precedence_path.is_file():
        kinds["precedence_changing"] = {"unavailable": f"{precedence_path} not found; `python -m src.data --seed 42 "
                                                       f"--out {Path(flat_path).parent}` writes it beside the flat file"}
    else:
        pairs = [p for p in load_precedence(precedence_path, load_jsonl(flat_path, cfg.model.max_seq_len),
                                            cfg.model.max_seq_len) if p.flat_line < len(flat)]
        batch = make_batch([p.record for p in pairs], cfg.model.max_seq_len, cfg.data.answer_format).to(device)
        bracketed = _as_bools(per_example_scores(model, batch, precision=precision)["exact_match"])
        kinds["precedence_changing"] = _kind(
            f"{PRECEDENCE_FILE} against the test_flat lines it names: brackets that change the value",
            [flat_records[p.flat_line].expr for p in pairs], [flat[p.flat_line] for p in pairs], bracketed)
        kinds["precedence_changing"]["flat_lines"] = [p.flat_line for p in pairs]
        scored = {"test_paren_precedence": ([p.record.expr for p in pairs], bracketed)}
    family = _family({k: v for k, v in kinds.items() if "unavailable" not in v})
    return {"metric": "exact_match", "sign": "bracketed minus flat", **kinds, "family": family}, scored


def _subset_cell(correct: list[bool]) -> dict:
    n, k = len(correct), sum(correct)
    if not n:
        return {"n": 0, "exact_match": None, "exact_match_ci95": None}
    return {"n": n, "exact_match": k / n, "exact_match_ci95": list(stats.wilson_interval(k, n))}


def near_twin_free(cfg, scores: dict, limit: int | None, extra: dict | None = None) -> dict:
    """exact_match on each evaluated file, whole and restricted to the items whose canonical form is absent
    from the run's training set. `extra`: more files as name -> (expressions, per-example exact_match)."""
    train = cfg.data.path("train")
    if cfg.data.train_size and not train.is_file():
        from src.data.trainsets import (
            ensure_training_set,  # the very set the run was trained on, remade
        )
        train = ensure_training_set(cfg.data.train_size, kind=cfg.data.train_kind)
    if not train.is_file():
        return {"unavailable": f"training file {train} not found: the near-twin subsets need the run's training set"}
    from src.data.trainsets import default_processes  # 2,000,000 lines: ~40 s in one process, once per machine (then cached)
    seen = training_forms(train, processes=default_processes())
    out = {"metric": "exact_match", "training_set": str(train), "training_forms": len(seen),
           "what": "the whole file, and its items whose canonical form (redundant brackets dropped, + and * chains "
                   "sorted, - in order) is not that of any training expression", "splits": {}}
    files = {split: ([r.expr for r in load_jsonl(cfg.data.path(split), cfg.model.max_seq_len)[:limit]],
                     s["exact_match"]) for split, s in scores.items()}
    files.update(extra or {})
    for name, (exprs, correct) in files.items():
        correct = _as_bools(correct)
        if len(correct) != len(exprs):
            raise ValueError(f"{name}: {len(exprs)} expressions and {len(correct)} outcomes")
        unseen = [ok for expr, ok in zip(exprs, correct) if canonical(expr) not in seen]
        out["splits"][name] = {"whole": _subset_cell(correct), "unseen": _subset_cell(unseen),
                               "near_twins_seen": len(correct) - len(unseen)}
    return out


def summary(report_: dict) -> str:
    """Plain-text lines of `report`: each kind's cost with its test and floor, then the near-twin-free subsets."""
    costs, near = report_["bracket_cost_by_kind"], report_["near_twin_free"]
    lines = []
    for kind in ("redundant", "precedence_changing"):
        k = costs.get(kind)
        if k is None or "unavailable" in k:
            lines.append(f"bracket cost, {kind}: {k['unavailable'] if k else 'not evaluated'}")
            continue
        lines.append(f"bracket cost, {kind} ({k['n_pairs']} pairs), exact_match bracketed - flat: {k['difference']:+.4f}  "
                     f"McNemar p={k['p_value']:.3g} (d={k['discordant']}, floor {k['p_floor']:.3g})")
    if "family" in costs:
        lines.append(f"bracket cost family (Holm, alpha {ALPHA}): {costs['family']['verdict']}")
    if "unavailable" in near:
        lines.append(f"near-twin-free subsets: {near['unavailable']}")
    else:
        for name, s in near["splits"].items():
            unseen = s["unseen"]["exact_match"]
            lines.append(f"{name}: exact_match {s['whole']['exact_match']:.4f} whole ({s['whole']['n']}), "
                         + (f"{unseen:.4f}" if unseen is not None else "n/a")
                         + f" without near twins of the training set ({s['unseen']['n']})")
    return "\n".join(lines)
