"""Comparisons for the report: per config, the numbers each section states, from the collected runs.

Nothing here tests anything: every test, interval and correction was made by the analysis that
wrote the piece (src.analysis.evaluate, src.analysis.ablate, src.analysis.probe) under src.stats; this module selects, counts
and averages across seeds, and says which verdict each entry supports.
"""

from __future__ import annotations

import math
import statistics

from src.metrics import METRICS, TEST_SPLITS, VERDICT_METRICS
from src.analysis.roles import ROLES, match_roles

SPLITS = ("val", *TEST_SPLITS)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def spread(values) -> dict:
    """Mean, sample standard deviation and range of the finite values (the seeds of a config)."""
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "values": []}
    return {"n": len(vals), "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals), "values": vals}


def dig(obj, *keys):
    for k in keys:
        if obj is None:
            return None
        if isinstance(obj, dict):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def test_entry(e: dict | None) -> dict | None:
    """The keys a verdict needs, from a test entry of an analysis JSON."""
    if not e:
        return None
    keep = ("test", "estimate", "ci95", "p_value", "p_floor", "p_adjusted", "significant", "family", "lost", "gained",
            "baseline", "ablated", "flat", "bracketed")
    return {k: e[k] for k in keep if k in e}


# ---------------------------------------------------------------------------- training, like with like


def step_at_epoch(run: dict, epoch) -> int | None:
    return next((r.get("step") for r in run["metrics"] if r["epoch"] == epoch), None)


def training(runs: list[dict]) -> dict | None:
    summaries = [(r, r["summary"]) for r in runs if r["summary"]]
    if not summaries:
        return None
    per_run = [{"seed": r["seed"], "best_epoch": s.get("best_epoch"), "best_step": step_at_epoch(r, s.get("best_epoch")),
                "epochs": s.get("epochs"), "steps": s.get("steps"), "selection": "lowest validation loss"}
               for r, s in summaries]
    s_only = [s for _, s in summaries]
    return {
        "gpu_names": sorted({str(s.get("gpu_name") or s.get("device")) for s in s_only}),
        "precision": sorted({str(s.get("precision")) for s in s_only}),
        "device_fallback": any(s.get("device_fallback") for s in s_only),
        "wall_time_s": spread([s.get("wall_time_s") for s in s_only]),
        "train_steps_per_s": spread([s.get("train_steps_per_s") for s in s_only]),
        "peak_gpu_memory_mb": spread([s.get("peak_gpu_memory_mb") for s in s_only]),
        "skipped_steps": spread([s.get("skipped_steps") for s in s_only]),
        "best_epoch": spread([p["best_epoch"] for p in per_run]),
        "best_step": spread([p["best_step"] for p in per_run]),
        "best_val_loss": spread([dig(s, "best_val_metrics", "loss") for s in s_only]),
        "final_train_loss": spread([r["metrics"][-1].get("train_loss") for r in runs if r["metrics"]]),
        "per_run": per_run,
    }


def equal_steps(runs: list[dict]) -> dict | None:
    """Each run evaluated at the periodic checkpoint nearest a common step count (eval_equal_steps.json)."""
    rows = []
    for r in runs:
        e = r["eval_equal_steps"]
        if not e:
            continue
        rows.append({"seed": r["seed"], "epoch": e.get("epoch"), "step": e.get("step"),
                     "metrics": {s: {m: dig(e, "metrics", s, m) for m in METRICS} for s in SPLITS},
                     "bracket_cost": {m: test_entry(dig(e, "bracket_cost", "metrics", m)) for m in VERDICT_METRICS}})
    if not rows:
        return None
    return {"per_run": rows, "step": spread([r["step"] for r in rows]),
            "metrics": {s: {m: spread([r["metrics"][s][m] for r in rows]) for m in METRICS} for s in SPLITS}}


# ---------------------------------------------------------------------------- baseline and the cost of brackets


def baseline(runs: list[dict]) -> dict | None:
    evals = [r for r in runs if r["eval"]]
    if not evals:
        return None
    out = {}
    for split in SPLITS:
        for metric in METRICS:
            per_run = [{"seed": r["seed"], "value": dig(r["eval"], "metrics", split, metric),
                        "ci95": dig(r["eval"], "metrics", split, f"{metric}_ci95"),
                        "n_examples": dig(r["eval"], "metrics", split, "n_examples")} for r in evals]
            per_run = [p for p in per_run if p["value"] is not None]
            if per_run:
                out.setdefault(split, {})[metric] = {**spread([p["value"] for p in per_run]), "per_run": per_run}
    return out


def bracket_cost(runs: list[dict]) -> dict | None:
    per_run = []
    for r in runs:
        if not r["eval"] or "bracket_cost" not in r["eval"]:
            continue
        per_run.append({"seed": r["seed"],
                        "bracket_cost": {m: test_entry(dig(r["eval"], "bracket_cost", "metrics", m)) for m in METRICS},
                        "family": dig(r["eval"], "bracket_cost", "family"),
                        "content_and_bracket_gap": {m: dig(r["eval"], "content_and_bracket_gap", "metrics", m)
                                                    for m in METRICS}})
    if not per_run:
        return None
    return {"per_run": per_run,
            "cost": {m: spread([dig(p, "bracket_cost", m, "estimate") for p in per_run]) for m in METRICS},
            "gap": {m: spread([dig(p, "content_and_bracket_gap", m, "estimate") for p in per_run]) for m in METRICS},
            "significant": {m: [p["seed"] for p in per_run if dig(p, "bracket_cost", m, "significant")]
                            for m in VERDICT_METRICS}}


# ---------------------------------------------------------------------------- heads


def role_of(run: dict, head: str) -> dict:
    row = next((h for h in dig(run, "roles", "heads") or [] if h["head"] == head), None)
    if row is None:
        return {"primary_role": None, "combined": {}}
    return {"primary_role": row["primary_role"], "roles": row.get("roles", []), "combined": row["combined"]}


def heads(runs: list[dict]) -> dict | None:
    """Per run: the declared families, how many heads pass each verdict test under each mode, and
    the heads whose ablation is bracket-specific (matched pairs), with their attention roles."""
    per_run = []
    for r in runs:
        a = r["ablation"]
        if not a or "scan" not in a:
            continue
        modes = list(a["scan"]["modes"])
        counts = {}
        for finding in a["head_findings"]:
            for test, t in finding["tests"].items():
                c = counts.setdefault(test, {"zero": 0, "mean": 0, "both": 0, "either": 0})
                for mode in t["significant_under"]:
                    c[mode] += 1
                c["both"] += len(t["significant_under"]) == len(modes)
                c["either"] += bool(t["significant_under"])
        bracket_heads = []
        for finding in a["head_findings"]:
            tests = {m: finding["tests"][f"bracket/{m}"] for m in VERDICT_METRICS}
            if not any(t["significant_under"] for t in tests.values()):
                continue
            rows = {mode: next(x for x in a["scan"]["modes"][mode] if x["head"] == finding["head"]) for mode in modes}
            bracket_heads.append({
                "head": finding["head"], "relative_layer": finding["relative_layer"], **role_of(r, finding["head"]),
                "holds_under": {m: t["holds_under"] for m, t in tests.items()},
                "bracket_specificity": {mode: {m: test_entry(rows[mode]["bracket_specificity"][m]) for m in VERDICT_METRICS}
                                        for mode in modes},
                "effect_matched": {mode: {m: test_entry(rows[mode]["effects"]["test_paren_matched"][m])
                                          for m in VERDICT_METRICS} for mode in modes}})
        per_run.append({"seed": r["seed"], "heads_tested": a["scan"]["heads_tested"], "modes": modes,
                        "families": {k: {kk: v[kk] for kk in ("size", "correction", "p_floor_max")}
                                     for k, v in a["families"].items()},
                        "counts": counts, "bracket_heads": bracket_heads,
                        "max_abs_bracket_specificity": {
                            mode: {m: max((abs(x["bracket_specificity"][m].get("estimate", 0.0) or 0.0)
                                           for x in a["scan"]["modes"][mode]), default=None) for m in VERDICT_METRICS}
                            for mode in modes}})
    return {"per_run": per_run} if per_run else None


def targeted(runs: list[dict]) -> dict | None:
    per_run = []
    for r in runs:
        t = dig(r["ablation"], "targeted")
        if not t:
            continue
        for mode, tm in t.items():
            key = "answer_loss_bracket_specificity"
            best = min(tm["steps"], key=lambda s: s[key]["p_adjusted"])
            chosen = next((s for s in tm["steps"] if s["size"] == tm.get("size")), None)
            per_run.append({"seed": r["seed"], "mode": mode, "found": tm["found"], "heads": tm.get("heads"),
                            "roles": [role_of(r, h)["primary_role"] for h in tm.get("heads") or []],
                            "sets_tried": tm["sets_tried"], "family_size": tm["family"]["size"],
                            "chosen": test_entry(chosen[key]) if chosen else None,
                            "smallest_p": {"size": best["size"], **test_entry(best[key])},
                            "effects_on_test_half": {s: {m: test_entry(dig(tm, "effects_on_test_half", s, m))
                                                         for m in VERDICT_METRICS}
                                                     for s in TEST_SPLITS} if tm["found"] else None})
    if not per_run:
        return None
    return {"per_run": per_run, "found": {m: sum(p["found"] for p in per_run if p["mode"] == m) for m in ("zero", "mean")},
            "of": {m: sum(1 for p in per_run if p["mode"] == m) for m in ("zero", "mean")}}


def roles(runs: list[dict]) -> dict | None:
    """match_roles over the runs, with each matched head's ablation effect on the bracketed twins."""
    with_roles = [r for r in runs if r["roles"]]
    if not with_roles:
        return None
    matched = match_roles([r["roles"] for r in with_roles])
    for entry in matched:
        for e, r in zip(entry["runs"], with_roles):
            e["ablation"] = None
            if e["head"] is None or not dig(r["ablation"], "scan", "modes"):
                continue
            e["ablation"] = {mode: {
                "bracket_specificity": {m: test_entry(x["bracket_specificity"][m]) for m in VERDICT_METRICS},
                "effect_matched": {m: test_entry(x["effects"]["test_paren_matched"][m]) for m in VERDICT_METRICS}}
                for mode, rows in r["ablation"]["scan"]["modes"].items()
                for x in rows if x["head"] == e["head"]}
    primary = {role: [sum(1 for h in r["roles"]["heads"] if h["primary_role"] == role) for r in with_roles]
               for role in (*ROLES, "none")}
    return {"matched": matched, "primary_role_counts": primary, "seeds": [r["seed"] for r in with_roles],
            "threshold": with_roles[0]["roles"].get("threshold")}


# ---------------------------------------------------------------------------- probes


def probes(runs: list[dict]) -> dict | None:
    per_run = [{"seed": r["seed"], "summary": r["probe"]["summary"], "majority": r["probe"]["majority"]}
               for r in runs if r["probe"]]
    if not per_run:
        return None
    return {"per_run": per_run, "curves": probe_curves([r["probe"] for r in runs if r["probe"]])}


def probe_curves(probes_: list[dict]) -> dict:
    """Residual-stream accuracy against relative depth, trained and control, across seeds."""
    out = {}
    for task in ("binary", "exact"):
        for split in ("test_paren", "test_depth3"):
            resid = [[s for s in p["sites"] if s["kind"] != "head"] for p in probes_]
            if any(split not in s[0][task]["trained"]["splits"] for s in resid):
                continue
            n = len(resid[0])
            out.setdefault(task, {})[split] = {
                "relative_depth": [s["relative_depth"] for s in resid[0]],
                **{model: [spread([r[i][task][model]["splits"][split]["accuracy"] for r in resid]) for i in range(n)]
                   for model in ("trained", "control")},
                "majority": spread([p["majority"][task]["splits"][split]["accuracy"] for p in probes_])}
    return out


def aggregate(name: str, runs: list[dict]) -> dict:
    return {
        "config": name, "runs": [r["path"] for r in runs], "seeds": [r["seed"] for r in runs],
        "parameters": next((r["summary"].get("parameters") for r in runs if r["summary"]), None),
        "num_layers": next((r[k]["num_layers"] for r in runs for k in ("ablation", "probe") if r[k]), None),
        "training": training(runs), "equal_steps": equal_steps(runs), "baseline": baseline(runs),
        "bracket_cost": bracket_cost(runs), "heads": heads(runs), "targeted": targeted(runs), "roles": roles(runs),
        "probe": probes(runs),
    }
