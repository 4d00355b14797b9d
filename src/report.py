"""The pilot vs 10M report: every analysed run, grouped by config, as markdown, JSON and figures.

    python -m src.report runs/pilot_s42 runs/pilot_s123 runs/scale_10m_s42 ... --out results/REPORT.md

Each run directory contributes what it holds: summary.json and metrics.jsonl (src.train),
eval.json (src.evaluate), ablation.json and ablation_mean.json (src.ablate), probe.json
(src.probe); a missing piece is skipped with a note saying how to make it. Runs are grouped by
config name (summary.json's `config`); several seeds of one config give mean, sample standard
deviation and range across seeds. Written beside --out: report.json (every aggregated number),
probe_relative_depth.png (probe accuracy against relative depth, configs compared) and
head_specialization.png (each head's answer_loss specialization against its relative layer).
Relative positions: a head of layer l sits at l / (num_layers - 1); a probe site at 0 for the
embedding and (l + 1) / num_layers for the residual stream after block l.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml

from src import stats
from src.checkpoint import atomic_write_text
from src.errors import UserError, run_main
from src.evaluate import EVAL_SPLITS

SPLITS = EVAL_SPLITS
BASELINE_METRICS = ("exact_match", "end_of_answer_acc", "answer_token_acc", "answer_loss", "loss")
TOP_K = 5
PIECES = {
    "summary": ("summary.json", "python -m src.train --config CONFIG --output-dir {run} ..."),
    "eval": ("eval.json", "python -m src.evaluate --run {run}"),
    "ablation": ("ablation.json", "python -m src.ablate --run {run}"),
    "ablation_mean": ("ablation_mean.json", "python -m src.ablate --run {run} --mode mean"),
    "probe": ("probe.json", "python -m src.probe --run {run}"),
}
METRIC_DEFINITIONS = {
    "exact_match": "greedy decoding from `<BOS>expr = ` gives exactly the answer then `<EOS>`: the task's accuracy",
    "end_of_answer_acc": "teacher-forced accuracy at the `<EOS>` position only (is `<EOS>` predicted after the "
                         "true answer?): the figure the original study called \"accuracy\"",
    "answer_token_acc": "teacher-forced accuracy over the answer tokens and `<EOS>`",
    "answer_loss": "mean cross-entropy over the answer tokens and `<EOS>` (the ablation's ranking measure)",
    "loss": "mean cross-entropy over every supervised position",
}
ORIGINAL = {
    "scale_10m": {"flat_accuracy": 0.96, "paren_accuracy": 0.92, "specialized_heads": ["L0-H2", "L0-H3"]},
    "pilot_rerun": {"flat_end_of_answer_acc": 0.99, "paren_end_of_answer_acc": 0.92, "exact_match_test": 0.00,
                    "exact_match_val": 0.01, "specialized_head": "L2-H2", "claimed_effect_points": "4-5",
                    "test_examples": 100},
}


# ---------------------------------------------------------------------------- reading runs


def read_json(path: Path, notes: list, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        notes.append(f"{path}: unreadable {what} ({err}); skipped")
        return None


def load_run(path: Path) -> dict:
    """Every piece a run directory holds; `notes` says what is missing and how to make it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run directory")
    run = {"path": str(path), "name": path.name, "notes": []}
    for key, (filename, command) in PIECES.items():
        run[key] = read_json(path / filename, run["notes"], filename)
        if run[key] is None and key != "ablation_mean":
            run["notes"].append(f"{path}: no {filename} (make it with `{command.format(run=path)}`)")
    for key in ("ablation", "ablation_mean", "probe"):
        if run[key] and run[key].get("limit"):
            run["notes"].append(f"{path}: {PIECES[key][0]} was made with --limit {run[key]['limit']} (a subset of "
                                "every split: not the study's figures)")
    run["metrics"] = []
    if (path / "metrics.jsonl").is_file():
        try:
            run["metrics"] = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
        except ValueError as err:
            run["notes"].append(f"{path}/metrics.jsonl: unreadable ({err}); skipped")
    config = None
    for piece in ("summary", "eval", "ablation", "probe"):
        config = config or (run[piece] or {}).get("config")
    if config is None and (path / "config.yaml").is_file():
        try:
            config = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("name")
        except yaml.YAMLError:
            pass
    run["config"] = config or "unknown"
    seed = None
    for piece in ("summary", "ablation", "probe"):
        seed = seed if seed is not None else (run[piece] or {}).get("seed")
    run["seed"] = seed
    return run


# ---------------------------------------------------------------------------- aggregation


def rounded(obj, digits: int = 5):
    """Floats to `digits` significant digits: report.json stays small and diffs stay readable."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj


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
        obj = obj.get(k) if isinstance(obj, dict) else (obj[k] if isinstance(obj, list) and isinstance(k, int) and k < len(obj) else None)
    return obj


def condense_head(row: dict) -> dict:
    keep = ("estimate", "ci95", "p_value", "p_bonferroni", "significant", "significant_bonferroni")
    return {
        "head": row["head"], "layer": row["layer"], "head_index": row["head_index"],
        "relative_layer": row["relative_layer"], "rank": row["rank"],
        "specialization": {m: {k: v[k] for k in keep if k in v} for m, v in row["specialization"].items()},
        "delta": {s: {m: {k: e.get(k) for k in ("delta", "ci95", "p_value")} for m, e in per.items()}
                  for s, per in row["splits"].items()},
    }


def aggregate_heads(runs: list[dict], key: str = "ablation") -> dict | None:
    per_seed, labels = [], {}
    for run in runs:
        rows = dig(run[key], "scan", "heads")
        if not rows:
            continue
        spec = lambda r: r["specialization"]["answer_loss"]  # noqa: E731
        sig = [r for r in rows if spec(r)["significant"]]
        sig_b = [r for r in rows if spec(r)["significant_bonferroni"]]
        per_seed.append({"run": run["path"], "seed": run["seed"], "mode": run[key].get("mode"),
                         "heads_tested": run[key]["scan"]["heads_tested"],
                         "n_significant": len(sig), "n_significant_bonferroni": len(sig_b),
                         # answer_loss specialization > 0: the head matters more for paren; < 0: for flat
                         "paren_leaning_bonferroni": [r["head"] for r in sig_b if spec(r)["estimate"] > 0],
                         "flat_leaning_bonferroni": [r["head"] for r in sig_b if spec(r)["estimate"] < 0],
                         "top": [condense_head(r) for r in rows[:TOP_K]],
                         # every head's specialization; per-split deltas stay in the run's ablation.json
                         "all": {r["head"]: {k: v for k, v in condense_head(r).items() if k != "delta"}
                                 for r in rows}})
        for r in rows[:3]:
            labels.setdefault(r["head"], []).append(run["seed"])
    if not per_seed:
        return None
    return {
        "per_seed": per_seed,
        "top3_recurring": sorted(({"head": h, "seeds": s, "count": len(s)} for h, s in labels.items()),
                                 key=lambda d: (-d["count"], d["head"])),
        "top_head_relative_layer": spread([s["top"][0]["relative_layer"] for s in per_seed]),
        "top_head_specialization": spread([s["top"][0]["specialization"]["answer_loss"]["estimate"] for s in per_seed]),
    }


def aggregate_targeted(runs: list[dict]) -> dict | None:
    per_seed = []
    for run in runs:
        t = dig(run["ablation"], "targeted")
        if t is None:
            continue
        num_layers = run["ablation"]["num_layers"]
        entry = {"run": run["path"], "seed": run["seed"], "found": t["found"], "heads": t.get("heads"),
                 "size": t.get("size"), "heads_ranked": t.get("heads_ranked"), "sets_tested": t.get("sets_tested")}
        if t["found"]:
            entry["relative_layers"] = [int(h.split("-")[0][1:]) / max(num_layers - 1, 1) for h in t["heads"]]
            entry["effects"] = {s: {m: {k: e.get(k) for k in ("baseline", "ablated", "delta", "ci95", "p_value")}
                                    for m, e in per.items()} for s, per in t["effects"].items()}
            entry["specialization"] = t["specialization"]
        else:
            entry["message"] = t.get("message")
        per_seed.append(entry)
    if not per_seed:
        return None
    return {"per_seed": per_seed, "found_in": sum(e["found"] for e in per_seed), "of": len(per_seed),
            "size": spread([e["size"] for e in per_seed if e["found"]])}


def aggregate_probe(runs: list[dict]) -> dict | None:
    probes = [r["probe"] for r in runs if r["probe"]]
    if not probes:
        return None
    out = {"n": len(probes), "curves": {}, "heads": {}, "majority": {}}
    for task in ("binary", "exact"):
        for split in SPLITS:
            if any(split not in p["majority"][task]["splits"] for p in probes):
                continue
            out["majority"].setdefault(task, {})[split] = spread(
                [p["majority"][task]["splits"][split]["accuracy"] for p in probes])
            resid = [[s for s in p["sites"] if s["kind"] != "head"] for p in probes]
            curve = {"sites": [s["site"] for s in resid[0]], "relative_depth": [s["relative_depth"] for s in resid[0]]}
            for model in ("trained", "control"):
                curve[model] = [spread([r[i][task][model]["splits"][split]["accuracy"] for r in resid])
                                for i in range(len(resid[0]))]
            curve["selectivity"] = [spread([r[i][task]["selectivity"][split] for r in resid]) for i in range(len(resid[0]))]
            if task == "exact" and split == "test_depth3":
                curve["trained_seen_classes"] = [
                    spread([r[i][task]["trained"]["splits"][split].get("accuracy_seen_classes") for r in resid])
                    for i in range(len(resid[0]))]
            out["curves"].setdefault(task, {})[split] = curve
            heads = [[s for s in p["sites"] if s["kind"] == "head"] for p in probes]
            best = [max(h, key=lambda s: s[task]["trained"]["splits"][split]["accuracy"]) for h in heads]
            out["heads"].setdefault(task, {})[split] = {
                "best_head_per_seed": [{"site": b["site"], "relative_layer": b["relative_layer"],
                                        "accuracy": b[task]["trained"]["splits"][split]["accuracy"],
                                        "selectivity": b[task]["selectivity"][split]} for b in best]}
    return out


def aggregate_config(name: str, runs: list[dict]) -> dict:
    summaries = [r["summary"] for r in runs if r["summary"]]
    agg = {
        "config": name, "runs": [r["path"] for r in runs], "seeds": [r["seed"] for r in runs],
        "parameters": next((s.get("parameters") for s in summaries), None),
        "num_layers": next((r[k]["num_layers"] for r in runs for k in ("ablation", "probe") if r[k]), None),
    }
    agg["training"] = None if not summaries else {
        "gpu_names": sorted({str(s.get("gpu_name") or s.get("device")) for s in summaries}),
        "precision": sorted({str(s.get("precision")) for s in summaries}),
        "device_fallback": any(s.get("device_fallback") for s in summaries),
        "wall_time_s": spread([s.get("wall_time_s") for s in summaries]),
        "train_steps_per_s": spread([s.get("train_steps_per_s") for s in summaries]),
        "peak_gpu_memory_mb": spread([s.get("peak_gpu_memory_mb") for s in summaries]),
        "best_epoch": spread([s.get("best_epoch") for s in summaries]),
        "best_val_loss": spread([dig(s, "best_val_metrics", "loss") for s in summaries]),
        "epochs": spread([s.get("epochs") for s in summaries]),
        "final_train_loss": spread([r["metrics"][-1].get("train_loss") for r in runs if r["metrics"]]),
    }
    evals = [r for r in runs if r["eval"]]
    baseline = {}
    for split in SPLITS:
        for metric in BASELINE_METRICS:
            per_seed = [{"run": r["path"], "seed": r["seed"], "value": dig(r["eval"], "metrics", split, metric),
                         "ci95": dig(r["eval"], "metrics", split, f"{metric}_ci95"),
                         "n_examples": dig(r["eval"], "metrics", split, "n_examples")} for r in evals]
            per_seed = [p for p in per_seed if p["value"] is not None]
            if per_seed:
                baseline.setdefault(split, {})[metric] = {**spread([p["value"] for p in per_seed]), "per_seed": per_seed}
    agg["baseline"] = baseline or None
    gaps = {}
    for metric in ("exact_match", "end_of_answer_acc", "answer_token_acc", "answer_loss"):
        vals = [dig(r["eval"], "metrics", "test_paren", metric) - dig(r["eval"], "metrics", "test_flat", metric)
                for r in evals if finite(dig(r["eval"], "metrics", "test_paren", metric))
                and finite(dig(r["eval"], "metrics", "test_flat", metric))]
        if vals:
            gaps[metric] = spread(vals)
    agg["paren_minus_flat"] = gaps or None
    agg["heads"] = aggregate_heads(runs)
    agg["heads_mean_ablation"] = aggregate_heads(runs, "ablation_mean")
    agg["targeted"] = aggregate_targeted(runs)
    agg["probe"] = aggregate_probe(runs)
    return agg


# ---------------------------------------------------------------------------- formatting


def num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if finite(x) else "—"


def with_ci(value, ci, digits: int = 3) -> str:
    if not finite(value):
        return "—"
    if not ci or not all(finite(c) for c in ci):
        return num(value, digits)
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def signed_ci(entry: dict | None, digits: int = 4) -> str:
    if not entry:
        return "—"
    value = entry.get("estimate", entry.get("delta"))
    ci = entry.get("ci95")
    if not finite(value):
        return "—"
    if not ci:
        return f"{value:+.{digits}f}"
    return f"{value:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def fmt_spread(sp: dict | None, digits: int = 3, ci=None) -> str:
    """One seed: the value (with its 95% interval when given); several: mean ± sd (range)."""
    if not sp or not sp["n"]:
        return "—"
    if sp["n"] == 1:
        return with_ci(sp["mean"], ci, digits)
    return f"{sp['mean']:.{digits}f} ± {sp['std']:.{digits}f} (range {sp['min']:.{digits}f} to {sp['max']:.{digits}f})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def seeds_text(agg: dict) -> str:
    return ", ".join(str(s) for s in agg["seeds"])


def find_config(aggs: dict, *needles: str) -> dict | None:
    for name, agg in aggs.items():
        if any(n in name.lower() for n in needles):
            return agg
    return None


def baseline_cell(agg: dict, split: str, metric: str, digits: int = 3) -> str:
    entry = dig(agg, "baseline", split, metric)
    if entry is None:
        return "—"
    ci = entry["per_seed"][0]["ci95"] if entry["n"] == 1 else None
    return fmt_spread(entry, digits, ci)


# ---------------------------------------------------------------------------- sections


def section_findings(aggs: dict) -> list[str]:
    lines = ["## Findings in brief", "",
             "Generated from the numbers below; each figure names its metric and is the mean over the seeds that "
             "have the piece it comes from.", ""]
    for name, agg in aggs.items():
        bits = []
        em_p, eoa_p = dig(agg, "baseline", "test_paren", "exact_match"), dig(agg, "baseline", "test_paren", "end_of_answer_acc")
        em_f, eoa_f = dig(agg, "baseline", "test_flat", "exact_match"), dig(agg, "baseline", "test_flat", "end_of_answer_acc")
        if em_f and em_p:
            bits.append(f"exact_match (the task's accuracy) is {num(em_f['mean'])} on flat and {num(em_p['mean'])} on "
                        f"parenthesized test expressions")
        if eoa_f and eoa_p:
            bits.append(f"end_of_answer_acc (the original study's \"accuracy\": is `<EOS>` predicted after the true "
                        f"answer) is {num(eoa_f['mean'])} and {num(eoa_p['mean'])}")
        em_3 = dig(agg, "baseline", "test_depth3", "exact_match")
        if em_3:
            bits.append(f"at nesting depth 3 (out of distribution) exact_match is {num(em_3['mean'])}")
        heads = agg["heads"]
        if heads:
            tested = heads["per_seed"][0]["heads_tested"]
            counts = ", ".join(f"{len(s['paren_leaning_bonferroni'])} / {len(s['flat_leaning_bonferroni'])}"
                               for s in heads["per_seed"])
            bits.append(f"of {tested} heads, those whose answer_loss specialization survives Bonferroni, leaning "
                        f"paren / flat, per seed: {counts}")
        if agg["targeted"]:
            t = agg["targeted"]
            bits.append(f"a significant paren-specific head set was found in {t['found_in']} of {t['of']} seeds"
                        + (f" (size {fmt_spread(t['size'], 1)})" if t["found_in"] else ""))
        curve = dig(agg, "probe", "curves", "binary", "test_paren")
        if curve:
            i = max(range(len(curve["trained"])), key=lambda k: curve["trained"][k]["mean"] or 0)
            maj = dig(agg, "probe", "majority", "binary", "test_paren")
            bits.append(f"depth>0 is linearly decodable from the residual stream at up to {num(curve['trained'][i]['mean'])} "
                        f"on test_paren (at relative depth {curve['relative_depth'][i]:.2f}; untrained control "
                        f"{num(curve['control'][i]['mean'])}, majority class {num(maj and maj['mean'])})")
        lines.append(f"- **{name}** (seeds {seeds_text(agg)}): " + ("; ".join(bits) if bits else "no analyses found") + ".")
    return lines + [""]


def section_training(aggs: dict) -> list[str]:
    rows = []
    for name, agg in aggs.items():
        t = agg["training"]
        if t is None:
            rows.append([name, seeds_text(agg)] + ["—"] * 8)
            continue
        rows.append([name, seeds_text(agg), f"{agg['parameters']:,}" if agg["parameters"] else "—",
                     ", ".join(t["gpu_names"]) + (" (FALLBACK to CPU)" if t["device_fallback"] else ""),
                     ", ".join(t["precision"]), fmt_spread(t["wall_time_s"], 0), fmt_spread(t["train_steps_per_s"], 1),
                     fmt_spread(t["peak_gpu_memory_mb"], 0), fmt_spread(t["best_epoch"], 1), fmt_spread(t["best_val_loss"], 4)])
    return ["## 1. Training", ""] + table(
        ["config", "seeds", "parameters", "device", "precision", "wall time (s)", "train steps/s", "peak GPU memory (MB)",
         "best epoch", "best val loss"], rows)


def section_baseline(aggs: dict) -> list[str]:
    lines = ["## 2. Baseline metrics", "",
             "One seed: value [95% interval] (Wilson for exact_match and end_of_answer_acc, a bootstrap over examples "
             "for the others). Several seeds: mean ± sd (range) across seeds; each seed's intervals are in report.json.",
             ""]
    lines += [f"- `{m}`: {d}" for m, d in METRIC_DEFINITIONS.items()] + [""]
    for name, agg in aggs.items():
        if not agg["baseline"]:
            lines += [f"**{name}**: no eval.json in any run.", ""]
            continue
        with_eval = sorted({str(p["seed"]) for per in agg["baseline"].values() for p in per["exact_match"]["per_seed"]})
        lines += [f"**{name}** (eval.json of seeds {', '.join(with_eval)})", ""]
        rows = [[split, str(dig(agg, "baseline", split, "exact_match", "per_seed", 0, "n_examples") or "—")]
                + [baseline_cell(agg, split, m, 4 if m.endswith("loss") else 3) for m in BASELINE_METRICS[:4]]
                for split in SPLITS if split in agg["baseline"]]
        lines += table(["split", "n", *BASELINE_METRICS[:4]], rows)
        if agg["paren_minus_flat"]:
            gap = agg["paren_minus_flat"]
            lines += ["test_paren − test_flat: " + "; ".join(f"{m} {fmt_spread(s, 4)}" for m, s in gap.items()), ""]
    return lines


def section_heads(aggs: dict) -> list[str]:
    lines = ["## 3. Heads by specialization", "",
             "Each head ablated alone (output set to zero). delta = ablated − baseline on the same examples; "
             "specialization = delta(test_paren) − delta(test_flat), > 0 for answer_loss when the head matters more "
             "for parenthesized expressions. Intervals: paired bootstrap 95%; p_bonf = p × heads tested. "
             "Relative layer = layer / (num_layers − 1).", ""]
    for name, agg in aggs.items():
        heads = agg["heads"]
        if heads is None:
            lines += [f"**{name}**: no ablation.json in any run.", ""]
            continue
        lines += [f"**{name}**", ""]
        rows = []
        for s in heads["per_seed"]:
            for h in s["top"]:
                sp = h["specialization"]
                d = h["delta"]
                rows.append([str(s["seed"]), str(h["rank"]), h["head"], f"{h['relative_layer']:.2f}",
                             signed_ci(sp["answer_loss"]), num(sp["answer_loss"]["p_value"], 4),
                             num(sp["answer_loss"]["p_bonferroni"], 4),
                             signed_ci(d["test_flat"]["answer_loss"]), signed_ci(d["test_paren"]["answer_loss"]),
                             signed_ci(sp.get("end_of_answer_acc"), 3), signed_ci(sp.get("exact_match"), 3)])
        lines += table(["seed", "rank", "head", "rel. layer", "answer_loss specialization", "p", "p_bonf",
                        "Δ answer_loss flat", "Δ answer_loss paren", "end_of_answer_acc specialization",
                        "exact_match specialization"], rows)
        lines.append("Specialization significant after Bonferroni, paren-leaning (> 0) | flat-leaning (< 0): " + "; ".join(
            f"seed {s['seed']}: {', '.join(s['paren_leaning_bonferroni']) or 'none'} | "
            f"{', '.join(s['flat_leaning_bonferroni']) or 'none'} (of {s['heads_tested']})"
            for s in heads["per_seed"]) + ".")
        recurring = [r for r in heads["top3_recurring"] if r["count"] > 1]
        if len(heads["per_seed"]) > 1:
            lines.append("In the top 3 of more than one seed: " + (", ".join(
                f"{r['head']} ({r['count']} seeds)" for r in recurring) or "no head") + ".")
        mean_abl = agg["heads_mean_ablation"]
        if mean_abl:
            lines.append("Mean ablation (ablation_mean.json), top head per seed: " + "; ".join(
                f"seed {s['seed']}: {s['top'][0]['head']} {signed_ci(s['top'][0]['specialization']['answer_loss'])}"
                for s in mean_abl["per_seed"]) + ".")
        lines.append("")
    if any(a["heads"] for a in aggs.values()):
        lines += ["![answer_loss specialization of every head against relative layer](head_specialization.png)", ""]
    return lines


def section_targeted(aggs: dict) -> list[str]:
    lines = ["## 4. Targeted minimal ablation", "",
             "Heads added in ranking order until the joint ablation raises answer_loss on test_paren (interval above "
             "0) and more than on test_flat (specialization interval above 0, p < 0.05). The ranking was made on the "
             "same examples, so these p-values are optimistic.", ""]
    for name, agg in aggs.items():
        t = agg["targeted"]
        if t is None:
            lines += [f"**{name}**: no targeted ablation in any run.", ""]
            continue
        lines += [f"**{name}**: a set was found in {t['found_in']} of {t['of']} seeds.", ""]
        rows = []
        for s in t["per_seed"]:
            if not s["found"]:
                rows.append([str(s["seed"]), "none", "—", s.get("message") or "", "", "", "", ""])
                continue
            e = s["effects"]
            rows.append([str(s["seed"]), ", ".join(s["heads"]), ", ".join(f"{r:.2f}" for r in s["relative_layers"]),
                         signed_ci(s["specialization"]["answer_loss"])]
                        + [signed_ci(dig(e, split, "answer_loss")) for split in ("test_flat", "test_paren", "test_depth3")]
                        + [" / ".join(signed_ci(dig(e, split, "exact_match"), 3) for split in ("test_flat", "test_paren"))])
        lines += table(["seed", "heads", "rel. layers", "answer_loss specialization", "Δ answer_loss flat",
                        "Δ answer_loss paren", "Δ answer_loss depth3", "Δ exact_match flat / paren"], rows)
    return lines


def section_probe(aggs: dict) -> list[str]:
    lines = ["## 5. Depth probes", "",
             "Linear (softmax) probes on the activations of training expressions, scored on test_paren. binary: "
             "depth > 0; exact: depth 0/1/2. Control: the same probe on an untrained model of the same architecture "
             "and seed; selectivity = trained − control. Residual-stream sites; relative depth 0 = embedding, "
             "(l + 1) / num_layers = after block l.", ""]
    rows = []
    for name, agg in aggs.items():
        p = agg["probe"]
        if p is None:
            lines += [f"**{name}**: no probe.json in any run.", ""]
            continue
        for task in ("binary", "exact"):
            curve = dig(p, "curves", task, "test_paren")
            if not curve:
                continue
            i = max(range(len(curve["trained"])), key=lambda k: curve["trained"][k]["mean"] or 0)
            best_heads = p["heads"][task]["test_paren"]["best_head_per_seed"]
            rows.append([name, task, fmt_spread(dig(p, "majority", task, "test_paren")), fmt_spread(curve["trained"][0]),
                         f"{curve['relative_depth'][i]:.2f}", fmt_spread(curve["trained"][i]), fmt_spread(curve["control"][i]),
                         fmt_spread(curve["selectivity"][i]), fmt_spread(curve["trained"][-1]),
                         ", ".join(f"{b['site'].replace('blocks.', 'L').replace('.attn.hook_z.', '-H')} {b['accuracy']:.3f}"
                                   for b in best_heads)])
    if rows:
        lines += table(["config", "task", "majority class", "embedding", "best rel. depth", "best trained", "control there",
                        "selectivity there", "last layer", "best head per seed"], rows)
        lines += ["![probe accuracy against relative depth](probe_relative_depth.png)", ""]
    return lines


def section_ood(aggs: dict) -> list[str]:
    lines = ["## 6. Depth 3 (out of distribution)", "",
             "Training stops at nesting depth 2. The probe's exact task cannot predict the unseen class 3; "
             "'seen classes' scores the depth 0-2 positions of the depth-3 expressions only.", ""]
    rows = []
    for name, agg in aggs.items():
        row = [name]
        for metric in ("exact_match", "end_of_answer_acc", "answer_loss"):
            row.append(f"{baseline_cell(agg, 'test_paren', metric)} → {baseline_cell(agg, 'test_depth3', metric)}")
        curve_b = dig(agg, "probe", "curves", "binary", "test_depth3")
        curve_e = dig(agg, "probe", "curves", "exact", "test_depth3")
        row.append(fmt_spread(curve_b["trained"][-1]) if curve_b else "—")
        row.append(fmt_spread(curve_e["trained"][-1]) if curve_e else "—")
        row.append(fmt_spread(curve_e["trained_seen_classes"][-1]) if curve_e else "—")
        targeted = [s for s in (dig(agg, "targeted", "per_seed") or []) if s["found"]]
        row.append("; ".join(f"seed {s['seed']}: {signed_ci(dig(s, 'effects', 'test_depth3', 'answer_loss'))}"
                             for s in targeted) or "—")
        rows.append(row)
    return lines + table(["config", "exact_match paren → depth3", "end_of_answer_acc paren → depth3",
                          "answer_loss paren → depth3", "probe binary (last layer)", "probe exact (last layer)",
                          "probe exact, seen classes", "targeted set: Δ answer_loss depth3"], rows)


def head_in_scan(agg: dict, label: str) -> str:
    heads = agg and agg["heads"]
    if not heads:
        return "no ablation scan"
    cells = []
    for s in heads["per_seed"]:
        h = s["all"].get(label)
        if h is None:
            cells.append(f"seed {s['seed']}: no such head")
            continue
        sp = h["specialization"]
        eoa = sp.get("end_of_answer_acc", {})
        cells.append(f"seed {s['seed']}: rank {h['rank']}/{s['heads_tested']}, answer_loss specialization "
                     f"{signed_ci(sp['answer_loss'])} (p_bonf {num(sp['answer_loss']['p_bonferroni'], 3)}), "
                     f"end_of_answer_acc specialization {signed_ci(eoa, 3)} (p_bonf {num(eoa.get('p_bonferroni'), 3)})")
    return "; ".join(cells)


def section_original(aggs: dict) -> list[str]:
    big, pilot = find_config(aggs, "10m"), find_config(aggs, "pilot")
    lines = ["## 7. Against the original study", "",
             "The original study reported, for the 10M model, flat 96% and parenthesized 92% \"accuracy\" with heads "
             "L0-H2 and L0-H3 as specialized, and for the pilot a 4-5 point differential effect of L2-H2 on 100 "
             "examples. Rerun with its own code, that \"accuracy\" was end_of_answer_acc (pilot: flat 0.99, paren "
             "0.92) while exact_match was 0.00 on both test sets and 0.01 on validation; the per-head effects were "
             "within 3 examples of 100 (SPEC section 6).", ""]

    def pair(agg, metric):
        if agg is None:
            return "config not in this report"
        return f"flat {baseline_cell(agg, 'test_flat', metric)}, paren {baseline_cell(agg, 'test_paren', metric)}"

    rows = [
        ["10M \"accuracy\"", "flat 0.96, paren 0.92", "end_of_answer_acc: " + pair(big, "end_of_answer_acc")],
        ["10M task accuracy", "not reported", "exact_match: " + pair(big, "exact_match")],
        ["10M heads L0-H2, L0-H3 specialized", "ablation on 100 examples, no test",
         "L0-H2: " + head_in_scan(big, "L0-H2") + ". L0-H3: " + head_in_scan(big, "L0-H3")],
        ["10M most specialized heads here", "—", "; ".join(
            f"seed {s['seed']}: " + ", ".join(f"{h['head']} (rel. {h['relative_layer']:.2f})" for h in s["top"][:3])
            for s in (dig(big, "heads", "per_seed") or [])) or "—"],
        ["pilot \"accuracy\" (rerun)", "end_of_answer_acc flat 0.99, paren 0.92", "end_of_answer_acc: " + pair(pilot, "end_of_answer_acc")],
        ["pilot exact_match (rerun)", "0.00 on both test sets (0.01 val)", "exact_match: " + pair(pilot, "exact_match")
         + (f"; val {baseline_cell(pilot, 'val', 'exact_match')}" if pilot else "")],
        ["pilot L2-H2 specialized", "4-5 points on 100 examples (rerun: within noise)", "L2-H2: " + head_in_scan(pilot, "L2-H2")],
    ]
    lines += table(["claim", "original", "this study"], rows)
    lo100, hi100 = stats.wilson_interval(92, 100)
    lo2k, hi2k = stats.wilson_interval(1840, 2000)
    lines += [f"On 100 examples a proportion of 0.92 has a 95% interval [{lo100:.3f}, {hi100:.3f}] "
              f"(±{(hi100 - lo100) / 2 * 100:.1f} points); on the 2000 examples of each test set here, "
              f"[{lo2k:.3f}, {hi2k:.3f}] (±{(hi2k - lo2k) / 2 * 100:.1f} points). A 4-5 point differential "
              "effect on 100 examples is therefore within noise unless a paired test says otherwise.", ""]
    return lines


# ---------------------------------------------------------------------------- figures


def plot_probe(aggs: dict, path: Path) -> bool:
    panels = [("binary", "test_paren"), ("exact", "test_paren"), ("binary", "test_depth3")]
    if not any(dig(a, "probe", "curves", t, s) for a in aggs.values() for t, s in panels):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100, sharey=True)
    for ax, (task, split) in zip(axes, panels):
        for i, (name, agg) in enumerate(aggs.items()):
            curve = dig(agg, "probe", "curves", task, split)
            if not curve:
                continue
            x = curve["relative_depth"]
            for model, style in (("trained", "o-"), ("control", "x--")):
                mean = [c["mean"] for c in curve[model]]
                ax.plot(x, mean, style, color=f"C{i}", label=f"{name} {model} (n={curve[model][0]['n']})")
                if curve[model][0]["n"] > 1:
                    ax.fill_between(x, [c["min"] for c in curve[model]], [c["max"] for c in curve[model]],
                                    color=f"C{i}", alpha=0.15 if model == "trained" else 0.07)
            maj = dig(agg, "probe", "majority", task, split)
            if maj and maj["n"]:
                ax.axhline(maj["mean"], color=f"C{i}", ls=":", lw=1, label=f"{name} majority class")
        ax.set_title(f"{task} on {split}", fontsize=9)
        ax.set_xlabel("relative depth (0 = embedding, 1 = last block)")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("probe accuracy (residual stream)")
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.suptitle("Depth probes: mean over seeds, band = range; dashed = untrained control", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_training_curves(runs: list[tuple[str, list[dict]]], path: Path) -> bool:
    """Loss (train and validation) and validation accuracies against epoch, one colour per run."""
    runs = [(label, [r for r in rows if "val" in r and "train_loss" in r]) for label, rows in runs]
    runs = [(label, rows) for label, rows in runs if rows]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for i, (label, rows) in enumerate(runs):
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", color=f"C{i}", label=f"{label} train")
        ax_loss.plot(epochs, [r["val"]["loss"] for r in rows], "o-", color=f"C{i}", ms=3, label=f"{label} val")
        ax_acc.plot(epochs, [r["val"]["exact_match"] for r in rows], "o-", color=f"C{i}", ms=3,
                    label=f"{label} exact_match")
        ax_acc.plot(epochs, [r["val"]["end_of_answer_acc"] for r in rows], "x:", color=f"C{i}",
                    label=f"{label} end_of_answer_acc")
    ax_loss.set(xlabel="epoch", ylabel="mean token cross-entropy", title="loss (all supervised positions)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", ylim=(-0.02, 1.02),
               title="exact_match (the task) vs end_of_answer_acc")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_heads(aggs: dict, path: Path) -> bool:
    if not any(a["heads"] for a in aggs.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, (name, agg) in enumerate(aggs.items()):
        if not agg["heads"]:
            continue
        first = True
        for s in agg["heads"]["per_seed"]:
            rows = list(s["all"].values())
            n_heads = 1 + max(h["head_index"] for h in rows)
            x = [h["relative_layer"] + 0.012 * (h["head_index"] - (n_heads - 1) / 2) for h in rows]
            y = [h["specialization"]["answer_loss"]["estimate"] for h in rows]
            lo = [h["specialization"]["answer_loss"]["ci95"][0] for h in rows]
            hi = [h["specialization"]["answer_loss"]["ci95"][1] for h in rows]
            ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]], fmt="o",
                        ms=3, lw=0.6, color=f"C{i}", alpha=0.7, label=name if first else None)
            first = False
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("relative layer (layer / (num_layers − 1))")
    ax.set_ylabel("answer_loss specialization\n(paren Δ − flat Δ)")
    ax.set_title("Every head, every seed, with 95% intervals", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- main


def build_report(run_dirs, out: Path) -> dict:
    runs = [load_run(p) for p in run_dirs]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["config"], []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: (r["seed"] is None, r["seed"] if r["seed"] is not None else 0, r["path"]))
    order = sorted(groups, key=lambda n: (next((r["summary"]["parameters"] for r in groups[n] if r["summary"]
                                                and r["summary"].get("parameters")), math.inf), n))
    aggs = {name: aggregate_config(name, groups[name]) for name in order}
    notes = [n for run in runs for n in run["notes"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {}
    if plot_probe(aggs, out.parent / "probe_relative_depth.png"):
        figures["probe_relative_depth"] = str(out.parent / "probe_relative_depth.png")
    curves = [(f"{r['config']} s{r['seed']}", read_metrics(r["path"])) for run_list in groups.values() for r in run_list]
    if plot_training_curves(curves, out.parent / "training_curves.png"):
        figures["training_curves"] = str(out.parent / "training_curves.png")
    if plot_heads(aggs, out.parent / "head_specialization.png"):
        figures["head_specialization"] = str(out.parent / "head_specialization.png")

    md = ["# Pilot vs 10M: arithmetic with and without parentheses", "",
          f"Runs: {', '.join(f'`{r}`' for r in run_dirs)}. Generated by `python -m src.report`; every number is in "
          f"`{out.with_name('report.json').name}`.", ""]
    md += section_findings(aggs)
    md += section_training(aggs)
    md += section_baseline(aggs)
    md += section_heads(aggs)
    md += section_targeted(aggs)
    md += section_probe(aggs)
    md += section_ood(aggs)
    md += section_original(aggs)
    if notes:
        md += ["## Missing pieces", ""] + [f"- {n}" for n in notes] + [""]
    atomic_write_text(out, "\n".join(md))
    report = {"runs": [str(p) for p in run_dirs], "configs": aggs, "original_study": ORIGINAL, "notes": notes,
              "figures": figures, "metric_definitions": METRIC_DEFINITIONS}
    # one line, rounded: the aggregate repeats per-head numbers of every run and would be megabytes indented
    atomic_write_text(out.with_name("report.json"), json.dumps(rounded(report), separators=(",", ":")) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (several seeds of a config are aggregated)")
    parser.add_argument("--out", type=Path, default=Path("results/REPORT.md"),
                        help="markdown report (default: %(default)s); report.json and the figures go beside it")
    parser.add_argument("--curves-only", action="store_true",
                        help="only write each RUN's training_curve.png (from its metrics.jsonl) and stop")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = parser.parse_args(argv)
    if args.curves_only:
        for run in args.runs:
            if not plot_training_curves([(run.name, read_metrics(run))], run / "training_curve.png"):
                raise UserError(f"{run}: no metrics.jsonl to plot; train the run first with python -m src.train")
            print(f"wrote {run / 'training_curve.png'}")
        return 0
    report = build_report(args.runs, args.out)
    print(f"wrote {args.out}, {args.out.with_name('report.json')}"
          + "".join(f", {p}" for p in report["figures"].values()))
    for note in report["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
