"""The learnability extension's results: every finished run, aggregated over seeds.

    python -m src.report.scaling --out DIR [--results results/extension]

A finished run is a directory RESULTS/CONFIG/seedS holding eval.json (src.sweep writes it last), with
summary.json and config.yaml beside it. Per config (scale, N, variant, answer format and loss_on read
from config.yaml) and per split (val and the four test sets), each seed's exact_match with its 95%
Wilson interval, and over seeds the mean with a 95% t interval (n - 1 degrees of freedom, clipped to
[0, 1]); a config with one seed says so (`seeds: 1`) and its interval is that seed's Wilson interval
(`interval: "wilson (one seed)"`). Also: exact_match by expression class at the largest N of each
scale (each class cell averaged over seeds the same way), the bracket cost of each run (src.analysis.evaluate's
paired test of test_paren_matched minus test_flat), the training steps and steps/s of each run, the
differences between configs that findings rest on (larger minus smaller model at each N, each N
against the next, each variant against the plain format), each tested over seeds with Welch's t-test
and Holm over the family `extension_configs` (a side with one seed: listed as untested), and which
config x seed of the grid (--configs x --seeds) is not run yet.

Each run's validation exact_match at every evaluation (its metrics.jsonl) is kept too, and for the
largest N whether it was still rising when training ended (`still_rising`: the last evaluation the
best, and the change over the last interval).

Written to --out: extension.json (every number), learning_curve.png (exact_match against N, plain
answers with answer-only loss; the variants as separate points at their N), val_progress.png
(validation exact_match against steps at the largest N, one line per run), class_curve.png
(exact_match by operands x operators against N, per scale; `class_curve` in extension.json),
class_heatmap_<scale>.png
(exact_match by class at the largest N, plain format) and EXTENSION.md (the section
"## Extension: when the models compute": tables of numbers, no findings). Nothing is written unless
every run was read and every figure drawn.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

from src.rundir.atomic import atomic_write_bytes, atomic_write_text
from src.cli import ArgumentParser, comma_list, path_arg
from src.config import find_configs, load_config
from src.errors import UserError, run_main
from src.metrics import METRIC_DEFINITIONS
from src.rundir.paths import check_output_dir
from src.plotting import pyplot
from src.text import plain_png, plain_text
from src.rundir.results import evaluated, metrics_row_problem, read_metrics, rounded, read_result, regenerate_hint
from src.stats import Family, t_quantile_975, welch_t, wilson_interval
from src.cli import seed_value

SCHEMA = "extension/1"
SPLITS = ("val", "test_flat", "test_paren", "test_paren_matched", "test_depth3")
CURVE_SPLITS = ("test_flat", "test_paren", "test_depth3")
POOLED_SPLITS = ("test_flat", "test_paren", "test_depth3")  # disjoint in depth: 0, 1-2, 3
CLASS_GROUPS = ("by_operands", "by_operators", "by_depth", "by_class")
GRID_SEEDS = (42, 123, 7)
SWEEP_HINT = "python -m src.sweep configs/extension --seeds 42,123,7 --results-dir results/extension"
PLAIN = "plain"  # the variant of the curve: plain answers, loss on the answer only
NAME = re.compile(r"^ext_(?P<scale>.+?)_n(?P<n>\d+)(?:_(?P<suffix>.+))?$")
SEED_DIR = re.compile(r"^seed(\d+)$")
INTERVALS = {
    "wilson": "wilson (one seed)",
    "t": "t over seeds (df = seeds - 1), clipped to [0, 1]",
}


# ---------------------------------------------------------------------------- intervals over seeds


def over_seeds(values: list[float], wilson_one: list[float] | None = None) -> dict:
    """Mean of the seeds' exact_match with its 95% interval: a t interval with len - 1 degrees of
    freedom for two seeds or more; for one seed, that seed's Wilson interval (`wilson_one`)."""
    k = len(values)
    if k == 0:
        return {"seeds": 0, "mean": None, "sd": None, "ci95": None, "interval": None}
    mean = statistics.fmean(values)
    if k == 1:
        return {"seeds": 1, "mean": mean, "sd": None, "ci95": list(wilson_one) if wilson_one else None,
                "interval": INTERVALS["wilson"]}
    sd = statistics.stdev(values)
    half = t_quantile_975(k - 1) * sd / math.sqrt(k)
    return {"seeds": k, "mean": mean, "sd": sd, "ci95": [max(0.0, mean - half), min(1.0, mean + half)],
            "half_width": half, "interval": INTERVALS["t"]}


def cell_over_seeds(cells: list[dict]) -> dict:
    """Class cells of several seeds ({n, correct, exact_match, exact_match_ci95} each) as one: n (per
    seed), the seeds' exact_match, their mean and interval (which interval: `seeds`, as in over_seeds;
    the name is stated once, under "intervals", to keep the file small)."""
    cells = [c for c in cells if c and c.get("exact_match") is not None]
    out = over_seeds([c["exact_match"] for c in cells], cells[0]["exact_match_ci95"] if len(cells) == 1 else None)
    return {"n": cells[0]["n"] if cells else 0, "per_seed": [c["exact_match"] for c in cells],
            **{k: out[k] for k in ("seeds", "mean", "sd", "ci95")}}


# ---------------------------------------------------------------------------- reading the runs


def _need(obj, path: Path, *keys):
    """obj[k0][k1]...; a UserError naming the file and the key when it is not there."""
    for i, key in enumerate(keys):
        if not isinstance(obj, dict) or key not in obj:
            raise UserError(f"{path}: no '{'.'.join(keys[:i + 1])}'; regenerate it with "
                            f"`{regenerate_hint('eval', path.parent)}` (or rerun `{SWEEP_HINT}`)")
        obj = obj[key]
    return obj


def describe(cfg, name: str) -> dict:
    """Scale, N and variant of a config: scale from its name (ext_<scale>_n<N>[_<suffix>]), N from
    data.train_size (else the name), the variant from answer_format and loss_on; a config whose
    settings are plain but whose name has a suffix is the variant its suffix names, never the curve."""
    found = NAME.match(name)
    n = int(getattr(cfg.data, "train_size", 0) or 0) or (int(found["n"]) if found else None)
    fmt, loss_on = cfg.data.answer_format, cfg.training.loss_on
    parts = [p for p in ("reversed" if fmt == "reversed" else "", "lossall" if loss_on == "all" else "") if p]
    variant = "_".join(parts) or (found["suffix"] if found and found["suffix"] else PLAIN)
    return {"scale": found["scale"] if found else name, "N": n, "variant": variant, "answer_format": fmt,
            "loss_on": loss_on}


def load_run(seed_dir: Path, config: str, seed: int, notes: list[str]) -> dict:
    """One finished run: its eval.json, summary.json (a note when missing) and config.yaml."""
    ev = read_result(seed_dir / "eval.json", "eval")
    where = seed_dir / "eval.json"
    if ev.get("config") not in (None, config) or ev.get("seed") not in (None, seed):
        raise UserError(f"{where}: is config {ev.get('config')!r} seed {ev.get('seed')!r}, but lies in {config}/seed{seed}; "
                        "put it where src.sweep would (RESULTS/CONFIG/seedS) or remove it")
    if ev.get("limit"):
        notes.append(f"{where}: made with --limit {ev['limit']} (a subset of every split)")
    for split in SPLITS:
        for key in ("exact_match", "exact_match_ci95", "n_examples"):
            _need(ev, where, "metrics", split, key)
    for split in ev.get("exact_match_by_class", {}):
        for key in _need(ev, where, "exact_match_by_class", split, "by_class"):
            for field in ("n", "correct", "exact_match", "exact_match_ci95"):
                _need(ev, where, "exact_match_by_class", split, "by_class", key, field)
    if not (seed_dir / "config.yaml").is_file():
        raise UserError(f"{seed_dir}: eval.json without config.yaml (src.sweep copies both); copy the run's "
                        f"config.yaml there, or rerun `{SWEEP_HINT}`")
    cfg = load_config(seed_dir / "config.yaml")
    summary = None
    if (seed_dir / "summary.json").is_file():
        summary = read_result(seed_dir / "summary.json", "summary")
    else:
        notes.append(f"{seed_dir}: no summary.json; its training steps are unknown")
    rows, problems = read_metrics(seed_dir / "metrics.jsonl", metrics_row_problem)
    notes.extend(problems)
    val_curve = [{"epoch": r["epoch"], "step": r.get("step"), "exact_match": r["val"]["exact_match"]}
                 for r in evaluated(rows)]
    cost = ev.get("bracket_cost", {}).get("metrics", {})
    keep = ("flat", "bracketed", "test", "estimate", "ci95", "p_value", "p_adjusted", "significant", "lost", "gained")
    return {
        "seed": seed, "path": str(seed_dir), "eval": ev, "cfg": cfg, "describe": describe(cfg, config),
        "parameters": (summary or {}).get("parameters"),
        "training": {"steps": (summary or {}).get("steps"), "train_steps_per_s": (summary or {}).get("train_steps_per_s"),
                     "train_time_s": (summary or {}).get("train_time_s"), "gpu_name": (summary or {}).get("gpu_name"),
                     "status": (summary or {}).get("status"), "checkpoint": ev.get("checkpoint"),
                     "evaluated_step": ev.get("step")},
        "bracket_cost": {m: {k: cost[m][k] for k in keep if k in cost[m]} for m in ("exact_match", "answer_loss")
                         if m in cost},
        "val_curve": val_curve,
    }


def find_runs(results: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """Every finished run under `results`, by config name (seeds in numeric order), and the notes."""
    if not results.is_dir():
        what = "is a file, not a directory" if results.exists() else "no such directory"
        raise UserError(f"--results {results}: {what}; give the directory src.sweep writes results to "
                        f"(make runs with `{SWEEP_HINT}`)")
    notes: list[str] = []
    groups: dict[str, list[dict]] = {}
    for config_dir in sorted(p for p in results.iterdir() if p.is_dir()):
        seeds = sorted((int(m[1]), p) for p in config_dir.iterdir() if p.is_dir() and (m := SEED_DIR.match(p.name)))
        for seed, seed_dir in seeds:
            if (seed_dir / "eval.json").is_file():
                groups.setdefault(config_dir.name, []).append(load_run(seed_dir, config_dir.name, seed, notes))
    if not groups:
        raise UserError(f"--results {results}: no finished runs (no CONFIG/seedS/eval.json); make them with `{SWEEP_HINT}`")
    for name, runs in groups.items():
        first = runs[0]
        for run in runs[1:]:
            keys = [k for k in ("scale", "N", "variant") if run["describe"][k] != first["describe"][k]]
            if run["cfg"].model != first["cfg"].model:
                keys.append("model")
            if keys:
                raise UserError(f"config {name!r}: {first['path']} and {run['path']} differ in {', '.join(keys)}; "
                                "averaging them would mix two experiments: keep one config per directory")
    return groups, notes


# ---------------------------------------------------------------------------- aggregating


def split_entry(runs: list[dict], split: str) -> dict:
    per_seed = []
    for run in runs:
        m = run["eval"]["metrics"][split]
        per_seed.append({"seed": run["seed"], "n": m["n_examples"], "correct": round(m["exact_match"] * m["n_examples"]),
                         "exact_match": m["exact_match"], "ci95": m["exact_match_ci95"]})
    agg = over_seeds([p["exact_match"] for p in per_seed], per_seed[0]["ci95"] if len(per_seed) == 1 else None)
    return {**agg, "per_seed": per_seed}


def pooled_cells(run: dict, splits=POOLED_SPLITS) -> dict[str, dict]:
    """One run's by_class cells of `splits` summed into one cell per class, with its Wilson interval."""
    tally: dict[str, list[int]] = {}
    for split in splits:
        for key, cell in run["eval"].get("exact_match_by_class", {}).get(split, {}).get("by_class", {}).items():
            t = tally.setdefault(key, [0, 0])
            t[0] += cell["n"]
            t[1] += cell["correct"]
    return {key: {"n": n, "correct": k, "exact_match": k / n, "exact_match_ci95": list(wilson_interval(k, n))}
            for key, (n, k) in tally.items() if n}


def class_breakdown(runs: list[dict]) -> dict:
    """exact_match by class, each cell averaged over the seeds: per split and group, and pooled."""
    splits = {}
    for split in SPLITS:
        by = [r["eval"].get("exact_match_by_class", {}).get(split, {}) for r in runs]
        splits[split] = {}
        for group in CLASS_GROUPS:
            keys = list(dict.fromkeys(k for b in by for k in b.get(group, {})))
            splits[split][group] = {k: cell_over_seeds([b.get(group, {}).get(k) for b in by]) for k in keys}
    pooled = [pooled_cells(r) for r in runs]
    keys = list(dict.fromkeys(k for p in pooled for k in p))
    return {"splits": splits, "pooled": {"splits": list(POOLED_SPLITS),
                                         "by_class": {k: cell_over_seeds([p.get(k) for p in pooled]) for k in keys}}}


def class_key(key: str) -> tuple[int, str, int]:
    parts = dict(p.split("=", 1) for p in key.split("|"))
    return int(parts["operands"]), parts["operators"], int(parts["depth"])


def not_run(configs_dir: str, seeds: list[int], results: Path) -> tuple[list[str], list[dict]]:
    """The grid's config names and its config x seed pairs without RESULTS/C/seedS/eval.json."""
    try:
        names = [p.stem for p in find_configs(configs_dir)]
    except UserError as err:
        raise UserError(f"--configs: {err}") from None
    return names, [{"config": c, "seed": s} for c in names for s in seeds
                   if not (results / c / f"seed{s}" / "eval.json").is_file()]


def comparisons(configs: dict[str, dict], scales: list[str]) -> dict:
    """The differences between configs that the findings rest on, each tested over seeds.

    For each test split of the curve: scale (the larger model minus the smaller, plain format, at each
    N), data (the next N minus this N, plain format, within a scale) and variant (the variant minus the
    plain format at the variant's N). Each is mean exact_match of the one config's seeds minus the
    other's, with Welch's t-test over seeds (the seed is the replicate; analytic, p_floor 0), and
    Holm over the whole family of tested comparisons. A comparison with fewer than two seeds on a side
    is listed as untested, never as a finding."""
    plain = {(c["scale"], c["N"]): name for name, c in configs.items() if c["variant"] == PLAIN and c["N"]}
    pairs = []
    for i, small in enumerate(scales):
        for large in scales[i + 1:]:
            for n in sorted({n for s, n in plain if s == small} & {n for s, n in plain if s == large}):
                pairs.append(("scale", f"{large} − {small} at N = {n:,}", plain[(small, n)], plain[(large, n)]))
    for scale in scales:
        ns = sorted(n for s, n in plain if s == scale)
        for lo, hi in zip(ns, ns[1:]):
            pairs.append(("data", f"{scale}: N = {hi:,} − N = {lo:,}", plain[(scale, lo)], plain[(scale, hi)]))
    for name, c in sorted(configs.items()):
        if c["variant"] != PLAIN and (c["scale"], c["N"]) in plain:
            pairs.append(("variant", f"{c['scale']}: {c['variant']} − plain at N = {c['N']:,}",
                          plain[(c["scale"], c["N"])], name))
    family, tested, untested = Family("extension_configs"), [], []
    for kind, label, a, b in pairs:
        for split in CURVE_SPLITS:
            va = [p["exact_match"] for p in configs[a]["splits"][split]["per_seed"]]
            vb = [p["exact_match"] for p in configs[b]["splits"][split]["per_seed"]]
            entry = {"kind": kind, "comparison": label, "split": split, "a": a, "b": b, "seeds_a": len(va),
                     "seeds_b": len(vb), "difference": "mean exact_match of b minus a"}
            if min(len(va), len(vb)) < 2:
                untested.append({**entry, "why": "needs two seeds or more on each side"})
                continue
            tested.append(family.add(f"{label}/{split}", {**entry, **welch_t(va, vb)}))
    declared = family.close() if tested else {"name": family.name, "size": 0, "correction": "holm", "members": []}
    return {"family": declared, "tested": tested, "untested": untested}


def operand_operator_cells(run: dict) -> dict[str, dict]:
    """One run's pooled class cells (test sets pooled) summed over depth: one cell per operands x operators."""
    tally: dict[str, list[int]] = {}
    for key, cell in pooled_cells(run).items():
        operands, operators, _ = class_key(key)
        t = tally.setdefault(f"operands={operands}|operators={operators}", [0, 0])
        t[0] += cell["n"]
        t[1] += cell["correct"]
    return {key: {"n": n, "correct": k, "exact_match": k / n, "exact_match_ci95": list(wilson_interval(k, n))}
            for key, (n, k) in tally.items()}


def class_curve(groups: dict[str, list[dict]], configs: dict[str, dict], scales: list[str]) -> dict:
    """{scale: {operands x operators: [{N, seeds, mean, ci95} per N]}}: exact_match by class against N
    (plain format; test sets pooled, depths summed; mean over seeds as for every cell)."""
    out = {}
    for scale in scales:
        plain = sorted(((c["N"], name) for name, c in configs.items()
                        if c["scale"] == scale and c["variant"] == PLAIN and c["N"]))
        per_n = {n: [operand_operator_cells(run) for run in groups[name]] for n, name in plain}
        keys = sorted({k for cells in per_n.values() for c in cells for k in c},
                      key=lambda k: (int(k.split("|")[0].split("=")[1]), k.split("|")[1] != "operators=+-"))
        out[scale] = {k: [{"N": n, **cell_over_seeds([c.get(k) for c in cells])} for n, cells in per_n.items()]
                      for k in keys}
    return out


def still_rising(curve: list[dict]) -> dict | None:
    """Whether validation exact_match was still going up when training ended: the best evaluation is
    the last one, and the gain over the last evaluation interval. None without two evaluations."""
    if len(curve) < 2:
        return None
    values = [c["exact_match"] for c in curve]
    best = max(range(len(values)), key=lambda i: (values[i], i))  # ties: the later evaluation
    return {"best_is_last": best == len(values) - 1, "last": values[-1], "gain_over_last_interval": values[-1] - values[-2],
            "evaluations": len(values)}


def aggregate(groups: dict[str, list[dict]], grid: list[str], missing: list[dict], args, notes: list[str]) -> dict:
    configs = {}
    for name, runs in groups.items():
        d = runs[0]["describe"]
        configs[name] = {**d, "parameters": runs[0]["parameters"], "seeds": [r["seed"] for r in runs],
                         "splits": {s: split_entry(runs, s) for s in SPLITS},
                         "runs": [{"seed": r["seed"], "path": r["path"], "training": r["training"],
                                   "bracket_cost": r["bracket_cost"], "val_curve": r["val_curve"],
                                   "still_rising": still_rising(r["val_curve"])} for r in runs]}
        if name not in grid:
            notes.append(f"{name}: finished, but not a config of {args.configs} (not in the grid)")
    scales = sorted({c["scale"] for c in configs.values()},
                    key=lambda s: (min((c["parameters"] or math.inf) for c in configs.values() if c["scale"] == s), s))
    largest = {}
    for scale in scales:
        ns = [c["N"] for c in configs.values() if c["scale"] == scale and c["variant"] == PLAIN and c["N"]]
        if ns:
            largest[scale] = max(ns)
    breakdown = {name: {"scale": c["scale"], "N": c["N"], "variant": c["variant"], "seeds": c["seeds"],
                        **class_breakdown(groups[name])}
                 for name, c in configs.items() if c["N"] is not None and c["N"] == largest.get(c["scale"])}
    curve = {scale: {split: [{"N": c["N"], "config": name, "seeds": c["splits"][split]["seeds"],
                              "mean": c["splits"][split]["mean"], "ci95": c["splits"][split]["ci95"]}
                             for name, c in sorted(configs.items(), key=lambda kv: kv[1]["N"] or 0)
                             if c["scale"] == scale and c["variant"] == PLAIN and c["N"]]
                     for split in CURVE_SPLITS} for scale in scales}
    return {
        "schema": SCHEMA,
        "results": str(args.results), "configs_dir": str(args.configs), "grid_seeds": list(args.seeds),
        "metric": {"exact_match": METRIC_DEFINITIONS["exact_match"]},
        "intervals": {"per_seed": "95% Wilson score interval (from eval.json)", "over_seeds": INTERVALS["t"],
                      "one_seed": INTERVALS["wilson"],
                      "class_cells": "the same by `seeds`: one seed, its Wilson interval; more, the t interval"},
        "scales": scales, "largest_n": largest,
        "configs": configs, "curve": curve, "class_breakdown": breakdown,
        "comparisons": comparisons(configs, scales),
        "class_curve": class_curve(groups, configs, scales),
        "grid": {"configs": grid, "seeds": list(args.seeds), "size": len(grid) * len(args.seeds),
                 "finished": len(grid) * len(args.seeds) - len(missing), "not_run": missing},
        "notes": notes,
    }


# ---------------------------------------------------------------------------- figures


def _seeds_text(counts: list[int]) -> str:
    counts = sorted(set(counts))
    if not counts:
        return "no point to draw"
    return f"seeds: {counts[0]}" if len(counts) == 1 else f"seeds: {counts[0]} to {counts[-1]} (number beside each point)"


VARIANT_MARKERS = {"reversed": ("^", 1.18), "lossall": ("s", 1.40)}  # marker, x offset factor on the log axis


@plain_text()  # config names drawn as written, from the first text on: no mathtext
def learning_curve(rep: dict) -> bytes:
    """exact_match against N, one panel per scale, one line per test split; variants as points."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    scales = rep["scales"]
    fig, axes = plt.subplots(1, len(scales), figsize=(4.4 * len(scales) + 1.6, 3.8), sharey=True, squeeze=False)
    counts = [p["seeds"] for scale in scales for split in CURVE_SPLITS for p in rep["curve"][scale][split]]
    counts += [c["splits"][split]["seeds"] for c in rep["configs"].values() if c["variant"] != PLAIN and c["N"]
               for split in CURVE_SPLITS]
    colours = {split: f"C{i}" for i, split in enumerate(CURVE_SPLITS)}
    variants: dict[str, str] = {}
    # the grid's sizes too, so that the axis reads the same while the curve fills in
    ns = sorted({c["N"] for c in rep["configs"].values() if c["N"]}
                | {int(m["n"]) for g in rep["grid"]["configs"] if (m := NAME.match(g))})
    for ax, scale in zip(axes[0], scales):
        for split in CURVE_SPLITS:
            points = [p for p in rep["curve"][scale][split] if p["mean"] is not None]
            if points:
                x, y = [p["N"] for p in points], [p["mean"] for p in points]
                err = [[p["mean"] - p["ci95"][0] for p in points], [p["ci95"][1] - p["mean"] for p in points]]
                ax.errorbar(x, y, yerr=err, fmt="o-", color=colours[split], ms=4, capsize=3)
            for name, c in rep["configs"].items():
                if c["scale"] != scale or c["variant"] == PLAIN or not c["N"]:
                    continue
                e = c["splits"][split]
                marker, shift = VARIANT_MARKERS.get(c["variant"], ("D", 1.6))
                ax.errorbar([c["N"] * shift], [e["mean"]], yerr=[[e["mean"] - e["ci95"][0]], [e["ci95"][1] - e["mean"]]],
                            fmt=marker, color=colours[split], mfc="white", ms=5, capsize=2)
                variants.setdefault(c["variant"], marker)
                if len(set(counts)) > 1:
                    ax.annotate(str(e["seeds"]), (c["N"] * shift, e["mean"]), textcoords="offset points", xytext=(4, 3),
                                fontsize=6)
        if len(set(counts)) > 1:
            for split in CURVE_SPLITS:
                for p in rep["curve"][scale][split]:
                    ax.annotate(str(p["seeds"]), (p["N"], p["mean"]), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax.set_xscale("log")
        if ns:
            ax.set_xticks(ns, [f"{n:,}" for n in ns], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(min(ns) / 2, max(ns) * 2.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training expressions N (log scale)")
        params = min((c["parameters"] for c in rep["configs"].values() if c["scale"] == scale and c["parameters"]),
                     default=None)
        ax.set_title(f"{scale}" + (f" ({params / 1e6:.2f}M parameters)" if params else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact_match (greedy decoding)")
    handles = [Line2D([], [], color=colours[split], marker="o", ms=4, label=split) for split in CURVE_SPLITS]
    handles += [Line2D([], [], color="0.3", marker=marker, mfc="white", ls="", label=f"variant: {variant}")
                for variant, marker in variants.items()]
    fig.legend(handles=handles, fontsize=7, loc="center right")
    fig.suptitle("exact_match on the shipped test sets against training-set size; plain answers, answer-only loss "
                 f"(variants: open markers, right of their N)\nmean over seeds, bars = 95% interval (t over seeds; "
                 f"one seed: Wilson); {_seeds_text(counts)}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    return plain_png(fig, dpi=90)


OPERATOR_LABEL = {"+-": "+ − only", "*": "with *"}


@plain_text()  # config names drawn as written, from the first text on: no mathtext
def class_heatmap(scale: str, name: str, entry: dict) -> bytes:
    """exact_match by class (rows: operands x operators, columns: depth 0-3), pooled test sets."""
    plt = pyplot()
    import numpy as np

    cells = entry["pooled"]["by_class"]
    rows = [(o, op) for o in (2, 3, 4) for op in ("+-", "*")]
    depths = [0, 1, 2, 3]
    grid = np.full((len(rows), len(depths)), np.nan)
    for key, cell in cells.items():
        o, op, d = class_key(key)
        if (o, op) in rows and d in depths and cell["mean"] is not None:
            grid[rows.index((o, op)), depths.index(d)] = cell["mean"]
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for key, cell in cells.items():
        o, op, d = class_key(key)
        if (o, op) in rows and d in depths and cell["mean"] is not None:
            i, j = rows.index((o, op)), depths.index(d)
            ax.text(j, i, f"{cell['mean']:.2f}\nn={cell['n']}", ha="center", va="center", fontsize=7,
                    color="black" if cell["mean"] > 0.6 else "white")
    ax.set_xticks(range(len(depths)), [f"depth {d}" for d in depths], fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{o} operands, {OPERATOR_LABEL[op]}" for o, op in rows], fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.05, label="exact_match")
    seeds = len(entry["seeds"])
    ax.set_title(f"{scale} ({name}, N = {entry['N']:,}): exact_match by class\ntest_flat + test_paren + test_depth3 "
                 f"pooled per seed, mean over {seeds} seed{'s' if seeds != 1 else ''}\n(blank: no such expressions "
                 "in these test sets)", fontsize=8)
    fig.tight_layout()
    return plain_png(fig, dpi=90)


# ---------------------------------------------------------------------------- Markdown


def ci_text(entry: dict | None, digits: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "—"
    ci = entry.get("ci95")
    text = f"{entry['mean']:.{digits}f}"
    return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _order(rep: dict):
    """Configs by scale (smallest model first), then N, plain before variants."""
    return sorted(rep["configs"].items(), key=lambda kv: (rep["scales"].index(kv[1]["scale"]), kv[1]["N"] or 0,
                                                          kv[1]["variant"] != PLAIN, kv[1]["variant"]))


def markdown(rep: dict) -> str:
    md = ["## Extension: when the models compute", "",
          f"Generated by `python -m src.report.scaling` from the finished runs in `{rep['results']}`; every number is in "
          "`extension.json`. exact_match: greedy decoding from `<BOS>expr = ` gives exactly the answer then `<EOS>` "
          "(the answer written in the run's answer format). Cells: mean over seeds [95% interval]; with two seeds or "
          "more a t interval (df = seeds − 1, clipped to [0, 1]), with one seed that seed's Wilson interval.", ""]
    splits_header = [f"{s} (n={_n(rep, s)})" for s in SPLITS]
    rows = [[c["scale"], f"{c['N']:,}" if c["N"] else "—", len(c["seeds"]), *[ci_text(c["splits"][s]) for s in SPLITS]]
            for name, c in _order(rep) if c["variant"] == PLAIN]
    md += ["### exact_match by scale and training-set size (plain answers, answer-only loss)", ""]
    md += table(["scale", "N", "seeds", *splits_header], rows) if rows else ["No plain-format run is finished.", ""]
    md += ["![exact_match against N](learning_curve.png)", ""]
    variants = [(name, c) for name, c in _order(rep) if c["variant"] != PLAIN]
    md += ["### Variants", ""]
    if variants:
        ref = {(c["scale"], c["N"]): (name, c) for name, c in rep["configs"].items() if c["variant"] == PLAIN}
        rows = []
        for name, c in variants:
            if (c["scale"], c["N"]) in ref:
                pname, p = ref[(c["scale"], c["N"])]
                rows.append([f"`{pname}`", PLAIN, p["answer_format"], p["loss_on"], len(p["seeds"]),
                             *[ci_text(p["splits"][s]) for s in SPLITS]])
            rows.append([f"`{name}`", c["variant"], c["answer_format"], c["loss_on"], len(c["seeds"]),
                         *[ci_text(c["splits"][s]) for s in SPLITS]])
        rows = [r for i, r in enumerate(rows) if r not in rows[:i]]
        md += table(["config", "variant", "answer format", "loss_on", "seeds", *SPLITS], rows)
    else:
        md += ["No variant run is finished.", ""]
    md += ["### By expression class at the largest N (plain answers)", "",
           "test_flat + test_paren + test_depth3 pooled per seed (each class's counts summed over the three sets), "
           "then mean over seeds [95% interval]; n = expressions per seed.", ""]
    plain = {c["scale"]: (name, c) for name, c in rep["class_breakdown"].items() if c["variant"] == PLAIN}
    if plain:
        scales = [s for s in rep["scales"] if s in plain]
        keys = sorted({k for _, c in plain.values() for k in c["pooled"]["by_class"]},
                      key=lambda k: (class_key(k)[0], class_key(k)[1] != "+-", class_key(k)[2]))
        header = ["operands", "operators", "depth", "n"]
        header += [f"{s} (`{plain[s][0]}`, N = {plain[s][1]['N']:,}, seeds: {len(plain[s][1]['seeds'])})" for s in scales]
        rows = []
        for k in keys:
            o, op, d = class_key(k)
            cells = [plain[s][1]["pooled"]["by_class"].get(k) for s in scales]
            n = next((c["n"] for c in cells if c), "—")
            rows.append([o, OPERATOR_LABEL[op], d, n, *[ci_text(c) for c in cells]])
        md += table(header, rows)
        md += [" ".join(f"![{s} by class](class_heatmap_{s}.png)" for s in scales), ""]
    else:
        md += ["No plain-format run is finished.", ""]
    md += comparisons_markdown(rep["comparisons"])
    md += progress_markdown(rep)
    md += class_curve_markdown(rep)
    md += ["### Per run: training and the bracket cost", "",
           "Bracket cost: exact_match on test_paren_matched minus test_flat (the same expressions with "
           "value-preserving brackets), exact McNemar test, Holm over src.analysis.evaluate's bracket_cost family.", ""]
    rows = []
    for name, c in _order(rep):
        for run in c["runs"]:
            t, b = run["training"], run["bracket_cost"].get("exact_match", {})
            rate = f"{t['train_steps_per_s']:.0f}" if t.get("train_steps_per_s") else "—"
            ci = b.get("ci95")
            cost = f"{b['estimate']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if b.get("estimate") is not None and ci else "—"
            p = b.get("p_adjusted")
            rows.append([f"`{name}`", run["seed"], f"{t['steps']:,}" if t.get("steps") else "—", rate,
                         t.get("gpu_name") or "—", cost, f"{b.get('lost', '—')} / {b.get('gained', '—')}",
                         f"{p:.2g}" if p is not None else "—"])
    md += table(["config", "seed", "steps", "steps/s", "GPU", "bracket cost (exact_match) [95% CI]", "lost / gained",
                 "p (Holm)"], rows)
    grid = rep["grid"]
    missing: dict[str, list[int]] = {}
    for m in grid["not_run"]:
        missing.setdefault(m["config"], []).append(m["seed"])
    seeds = ",".join(map(str, grid["seeds"]))
    listed = "; ".join(f"`{c}` seeds {', '.join(map(str, s))}" for c, s in missing.items()) or "none"
    md += [f"Not run yet ({len(grid['not_run'])} of {grid['size']} config × seed of `{rep['configs_dir']}/*.yaml` × "
           f"seeds {seeds}): {listed}.", ""]
    if rep["notes"]:
        md += ["Notes:", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    return "\n".join(md)


def class_curve_markdown(rep: dict) -> list[str]:
    """exact_match by operands x operators against N, per scale (plain format, test sets pooled)."""
    md = []
    for scale, classes in rep.get("class_curve", {}).items():
        ns = sorted({p["N"] for points in classes.values() for p in points})
        if not ns:
            continue
        if not md:
            md = ["### By class against N: which classes are still rising (plain answers)", "",
                  "Test sets pooled and depths summed per class, mean over seeds [95% interval] (one seed: Wilson); "
                  "`seeds` as in the tables above. Figure: `class_curve.png`.", ""]
        rows = []
        for key, points in classes.items():
            operands, operators = (part.split("=")[1] for part in key.split("|"))
            by_n = {p["N"]: p for p in points}
            rows.append([operands, OPERATOR_LABEL[operators], *[ci_text(by_n.get(n)) for n in ns]])
        md += [f"{scale}:", ""] + table(["operands", "operators", *[f"N = {n:,}" for n in ns]], rows)
    if md:
        md += ["![exact_match by class against N](class_curve.png)", ""]
    return md


@plain_text()  # config names drawn as written, from the first text on: no mathtext
def class_curve_figure(rep: dict) -> bytes | None:
    panels = [(scale, classes) for scale, classes in rep.get("class_curve", {}).items() if classes]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 1.4, 3.6), sharey=True, squeeze=False)
    for ax, (scale, classes) in zip(axes[0], panels):
        for i, (key, points) in enumerate(classes.items()):
            operands, operators = (part.split("=")[1] for part in key.split("|"))
            points = [p for p in points if p["mean"] is not None]
            x, y = [p["N"] for p in points], [p["mean"] for p in points]
            err = [[p["mean"] - p["ci95"][0] for p in points], [p["ci95"][1] - p["mean"] for p in points]]
            ax.errorbar(x, y, yerr=err, fmt="o-" if operators == "+-" else "s--", color=f"C{int(operands) - 2}",
                        ms=4, capsize=2, label=f"{operands} operands, {OPERATOR_LABEL[operators]}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training expressions N (log scale)")
        ax.set_title(scale, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact_match (test sets pooled)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle("exact_match by class against N (plain answers); mean over seeds, bars = 95% interval", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    return plain_png(fig, dpi=90)


def progress_markdown(rep: dict) -> list[str]:
    """Validation exact_match at the end of training, for the largest N of each scale (every variant)."""
    rows = []
    for name, c in _order(rep):
        if c["N"] is None or c["N"] != rep["largest_n"].get(c["scale"]):
            continue
        for run in c["runs"]:
            r = run.get("still_rising")
            if r is None:
                continue
            last3 = ", ".join(f"{v['exact_match']:.3f}" for v in run["val_curve"][-3:])
            rows.append([f"`{name}`", run["seed"], r["evaluations"], last3, f"{r['gain_over_last_interval']:+.3f}",
                         "yes" if r["best_is_last"] else "no"])
    if not rows:
        return []
    return ["### Still rising when training ended? (largest N)", "",
            "Validation exact_match (n = 200) at the last three evaluations, its change over the last interval, and "
            "whether the last evaluation was the best (the selected checkpoint is then the last one). The last "
            "interval is also where the learning rate decays to zero, so a late rise is suggestive of more steps "
            "helping, not proof. Figure: `val_progress.png`.", "",
            *table(["config", "seed", "evaluations", "last three", "last change", "last is best"], rows),
            "![validation exact_match over training](val_progress.png)", ""]


@plain_text()  # config names drawn as written, from the first text on: no mathtext
def val_progress(rep: dict) -> bytes | None:
    """Validation exact_match against optimizer steps for every run at the largest N of each scale."""
    panels = [(scale, [(name, c) for name, c in _order(rep) if c["scale"] == scale and c["N"]
                       and c["N"] == rep["largest_n"].get(scale)]) for scale in rep["scales"]]
    panels = [(scale, configs) for scale, configs in panels
              if any(run["val_curve"] for _, c in configs for run in c["runs"])]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), sharey=True, squeeze=False)
    for ax, (scale, configs) in zip(axes[0], panels):
        for i, (name, c) in enumerate(configs):
            for j, run in enumerate(c["runs"]):
                curve = [v for v in run["val_curve"] if v["step"] is not None]
                if curve:
                    ax.plot([v["step"] for v in curve], [v["exact_match"] for v in curve], color=f"C{i}", lw=1,
                            marker=".", ms=3, label=f"{c['variant']}" if j == 0 else None)
        ax.set_title(f"{scale}, N = {rep['largest_n'][scale]:,}", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="variant (one line per seed)", title_fontsize=7)
    axes[0][0].set_ylabel("validation exact_match (n = 200)")
    fig.tight_layout()
    return plain_png(fig, dpi=90)


def comparisons_markdown(comp: dict) -> list[str]:
    fam = comp["family"]
    md = ["### Differences between configs, tested over seeds", "",
          "b − a: mean exact_match of b's seeds minus a's, 95% Welch interval, Welch's t-test over seeds (the seed "
          f"is the replicate), Holm over the family `{fam['name']}` of {fam['size']} tests (every row below). "
          "With three seeds a side the test has few degrees of freedom: a large p is no evidence of no difference.", ""]
    rows = [[t["comparison"], t["split"], f"{t['seeds_a']} / {t['seeds_b']}",
             f"{t['estimate']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}]", f"{t['p_value']:.2g}",
             f"{t['p_adjusted']:.2g}", "yes" if t["significant"] else "no"] for t in comp["tested"]]
    md += table(["comparison (b − a)", "split", "seeds a / b", "difference [95% CI]", "p", "p (Holm)",
                 "significant"], rows) if rows else ["No comparison has two seeds or more on each side yet.", ""]
    untested = list(dict.fromkeys(f"{u['comparison']} ({u['seeds_a']} / {u['seeds_b']} seeds)" for u in comp["untested"]))
    if untested:
        md += ["Untested (fewer than two seeds on a side): " + "; ".join(untested) + ".", ""]
    return md


def _n(rep: dict, split: str):
    ns = {p["n"] for c in rep["configs"].values() for p in c["splits"][split]["per_seed"]}
    return next(iter(ns)) if len(ns) == 1 else "/".join(map(str, sorted(ns)))


# ---------------------------------------------------------------------------- the command


def build(args) -> dict:
    """Read every finished run, aggregate, draw; then write the figures, EXTENSION.md, extension.json."""
    out = check_output_dir(str(args.out), "--out")
    grid, missing = not_run(args.configs, args.seeds, args.results)
    groups, notes = find_runs(args.results)
    rep = aggregate(groups, grid, missing, args, notes)
    pngs = {"learning_curve.png": learning_curve(rep)}
    for filename, png in (("val_progress.png", val_progress(rep)), ("class_curve.png", class_curve_figure(rep))):
        if png is not None:
            pngs[filename] = png
    for name, entry in rep["class_breakdown"].items():
        if entry["variant"] == PLAIN:
            pngs[f"class_heatmap_{entry['scale']}.png"] = class_heatmap(entry["scale"], name, entry)
    rep["figures"] = sorted(pngs)
    text = markdown(rep)
    out.mkdir(parents=True, exist_ok=True)
    for filename, png in pngs.items():
        atomic_write_bytes(out / filename, png)
    atomic_write_text(out / "EXTENSION.md", text)
    atomic_write_text(out / "extension.json", json.dumps(rounded(rep, 6), indent=1) + "\n")
    return rep


def parse_args(argv):
    doc = __doc__.split("\n\n")
    p = ArgumentParser(prog="python -m src.report.scaling", description=doc[0],
                       epilog="\n\n".join(doc[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=path_arg, default=Path("results/extension"),
                   help="where src.sweep put the runs: RESULTS/CONFIG/seedS/eval.json (default: %(default)s)")
    p.add_argument("--out", type=path_arg, required=True,
                   help="directory for extension.json, EXTENSION.md and the figures, e.g. runs/extension_report "
                   "(the committed ones are in results/extension)")
    p.add_argument("--configs", default="configs/extension",
                   help="the grid's configs (*.yaml), for the list of config x seed not run yet (default: %(default)s)")
    p.add_argument("--seeds", type=comma_list(item=seed_value, what="distinct seeds separated by commas, e.g. 42,123,7"),
                   default=list(GRID_SEEDS), metavar="S1,S2,...",
                   help=f"the grid's seeds, for the same list (default: {','.join(map(str, GRID_SEEDS))})")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rep = build(args)
    runs = sum(len(c["seeds"]) for c in rep["configs"].values())
    print(f"{runs} finished run(s) of {len(rep['configs'])} config(s); {len(rep['grid']['not_run'])} of "
          f"{rep['grid']['size']} config x seed not run yet; wrote "
          + ", ".join(str(args.out / f) for f in ("extension.json", "EXTENSION.md", *rep["figures"])))
    for note in rep["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
