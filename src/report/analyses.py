"""The section "Extension: mechanisms", from the battery's files of each run.

    python -m src.report.analyses RUN [RUN ...] [--rolematch DIR [DIR ...]] --out DIR

Each RUN is a directory holding the files src.analysis.run_all leaves (ablation.json, roles.json, probe.json,
patching.json, value_probe.json, battery.json; a missing one leaves its cells empty, and says so)
and summary.json (config, seed). scripts/extension_mechanisms.sh copies them to
results/extension/mechanisms/<config>/seed<S>/; the replication's runs (results/pilot/seed<S>,
results/scale_10m/seed<S>) hold the same kinds of file.

Written to --out: mechanisms.json (schema mechanisms/1: per run what the tables show),
patching_profile.png (the patching profile of each config, mean over its seeds) and MECHANISMS.md,
whose tables hold only what the files hold, each with the test it comes from:
    heads        per run: heads whose ablation changes answer_loss on the matched pairs significantly
                 (either sign) under both zero and mean ablation (Holm over the head_effect family), heads
                 whose effect differs between the bracketed twins and the flat originals under both modes
                 (head_bracket family), and the targeted set of each
                 mode (chosen on one half, tested on the other: its bracket specificity there, Holm over
                 the sets tried)
    roles        the role matching of src.analysis.rolematch (each --rolematch DIR/rolematch.json), verbatim
    values       per run, kind (close, operator) and task (mod10, sign): the best layer's accuracy on
                 test_paren against the untrained control and the copy baseline, on the non-trivial
                 positions too, and its claim
    depth        per run: the depth probes' best site and claim on test_paren and test_depth3
    patching     per run: the change of the answer log-probability when the residual stream at one class of
                 positions comes from the bracketed twin, per layer, and the last layer that still
                 changes it (reach); the twins' own gap beside it
    values over seeds   per config and value target: the non-trivial selectivity over seeds, t-test, Holm
    time         per run: the battery's wall time and device
No finding is stated here that a table does not show; the README draws the conclusions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from src import stats
from src.rundir.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from src.cli import ArgumentParser, path_arg
from src.errors import UserError, run_main
from src.analysis.rolematch import patching_peaks, rolematch_markdown
from src.rundir.results import read_result, result_file, stamp
from src.text import plain_text

BOTH = "both"
VALUE_SPLIT = "test_paren"
DEPTH_SPLITS = ("test_paren", "test_depth3")
FRESH_SPLITS = ("test_flat", "test_paren", "test_depth3")
KIND_FILES = {"ablation": "ablation.json", "roles": "roles.json", "probe": "probe.json", "patching": "patching.json",
              "value_probe": "value_probe.json", "battery": "battery.json"}


def read_run(run: Path) -> dict:
    """The run's identity and whichever battery files it holds ({kind: dict}); absent kinds listed."""
    if not run.is_dir():
        raise UserError(f"{run}: not a directory; pass run directories holding the battery's files")
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{run / 'summary.json'}: unreadable ({str(err)[:120]}); every run needs its summary.json") from None
    files, missing = {}, []
    for kind, name in KIND_FILES.items():
        if result_file(run / name) is not None:  # X.json, or X.json.gz
            files[kind] = read_result(run / name, kind)
        else:
            missing.append(name)
    evals = {}
    for path in [run / "eval.json", *sorted(run.glob("eval_fresh*.json"))]:
        if path.is_file():
            evals[path.stem] = read_result(path, "eval")
    return {"run": str(run), "config": summary.get("config"), "seed": summary.get("seed"),
            "parameters": summary.get("parameters"), "files": files, "missing": missing, "evals": evals}


def head_summary(ablation: dict) -> dict:
    """Heads significant under both modes on the matched pairs, bracket-specific heads, targeted sets."""
    matters, bracket = [], []
    for finding in ablation.get("head_findings", []):
        test = finding["tests"].get("test_paren_matched/answer_loss", {})
        if test.get("holds_under") == BOTH:
            matters.append(finding["head"])
    modes = ablation.get("scan", {}).get("modes", {})
    specific = {mode: {row["head"] for row in rows if row["bracket_specificity"]["answer_loss"].get("significant")}
                for mode, rows in modes.items()}
    if specific:
        bracket = sorted(set.intersection(*specific.values()))
    targeted = {}
    for mode, t in ablation.get("targeted", {}).items():
        # the chosen set's test on the held-out half, as corrected over the sets tried (its step of the family)
        step = next((s for s in t.get("steps", []) if s.get("heads") == t.get("heads")), {})
        b = step.get("answer_loss_bracket_specificity", {})
        targeted[mode] = {"found": t.get("found"), "heads": t.get("heads"), "estimate": b.get("estimate"),
                          "ci95": b.get("ci95"), "p_adjusted": b.get("p_adjusted"), "family": b.get("family")}
    base = ablation.get("baseline", {})
    return {"heads_scanned": ablation.get("num_layers", 0) * ablation.get("num_heads", 0),
            "matter_under_both": matters, "bracket_specific_under_both": bracket, "targeted": targeted,
            "baseline_exact_match": {s: base.get(s, {}).get("exact_match") for s in ("test_flat", "test_paren_matched")}}


def value_summary(value_probe: dict) -> dict:
    out = {}
    for kind, tasks in value_probe.get("probes", {}).items():
        for task, r in (tasks or {}).items():
            if r is None or VALUE_SPLIT not in r["best_layer"]["splits"]:
                continue
            b = r["best_layer"]
            s = b["splits"][VALUE_SPLIT]
            base = value_probe["baselines"][kind][VALUE_SPLIT]
            out[f"{kind}/{task}"] = {"site": b["site"], "layer": b["layer"], "trained": s["trained"],
                                     "control": s["control"], "trained_nontrivial": s["trained_nontrivial"],
                                     "copy_baseline": base["copy_mod10" if task == "mod10" else "copy_sign"]["accuracy"],
                                     "n_positions": base["n_positions"], "claim": s["claim"],
                                     "selectivity_nontrivial": (s.get("selectivity_nontrivial") or {}).get("estimate")}
    return out


def value_family(runs: list[dict]) -> dict:
    """Per config with two seeds or more and per value target (kind/task): is the selectivity on the
    non-trivial positions (the best layer's, on VALUE_SPLIT) above 0 over seeds? A one-sample t-test of
    the seeds' estimates (the seed is the replicate; analytic, p_floor 0), Holm over every config x
    target tested here (family `value_selectivity_over_seeds`). A target whose control is at its ceiling
    in some seed is left out (it supports no claim). The per-seed bootstrap intervals cannot carry a
    family (their p floor is 2/B)."""
    by_config: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("values"):
            by_config.setdefault(r["config"], []).append(r)
    fam, rows = stats.Family("value_selectivity_over_seeds"), []
    for config, members in by_config.items():
        if len(members) < 2:
            continue
        for key in sorted({k for r in members for k in r["values"]}):
            xs = [r["values"][key]["selectivity_nontrivial"] for r in members if key in r["values"]]
            at_ceiling = any(r["values"][key]["claim"].startswith("at ceiling") for r in members if key in r["values"])
            if len(xs) < 2 or any(x is None for x in xs) or at_ceiling:  # a control at its ceiling supports no claim
                continue
            test = stats.paired_contrast([(1.0, torch.tensor(xs, dtype=torch.float64), torch.ones(len(xs)))])
            test["test"] = "one_sample_t_over_seeds"
            rows.append(({"config": config, "target": key, "seeds": [r["seed"] for r in members if key in r["values"]],
                          "values": xs}, fam.add(f"{config}/{key}", test)))
    declared = fam.close() if rows else None  # writes p_adjusted and significant into each test
    return {"family": declared, "rows": [row | test for row, test in rows]}


REACH_NATS = 0.1  # a patch whose mean change of the answer log-probability is at least this "still reaches" the answer
PROFILE_CLASSES = ("close", "equals", "inside", "prompt")


def patching_profile(patching: dict, direction: str = "bracketed_to_flat") -> dict:
    """Residual patching of one run, read as changes rather than shares: per position class, the mean change
    of the receiver's answer log-probability (nats) when that class's residual stream at layer l comes from
    the twin, for every layer; `reach`: the last layer whose change is at least REACH_NATS in size (None when
    none is), with its relative layer. The twins' own gap (bracketed - flat answer log-probability, paired t
    interval) says how small the restored share's denominator is."""
    clean = patching.get("baseline", {}).get("bracketed_minus_flat", {}).get("logp")
    layers_of = patching.get("resid", {}).get(direction, {})
    present = {cls: layers_of[cls] for cls in PROFILE_CLASSES if layers_of.get(cls)}
    # a patching.json written since each cell carries a paired t-test: Holm over this profile's cells, and a
    # layer reaches the answer only when its change is also significant; an older file is read descriptively
    tested = bool(present) and all("logp_change_test" in e for layers in present.values() for e in layers)
    family = None
    if tested:
        fam = stats.Family(f"patching_profile_{direction}")
        for cls, layers in present.items():
            for e in layers:
                fam.add(f"{cls}/L{e['layer']}", dict(e["logp_change_test"]))
        family = fam.close()
        adjusted = iter(fam.entries)
    out = {"direction": direction, "twin_gap_logp": clean, "reach_nats": REACH_NATS, "tested": tested,
           "family": family, "classes": {}}
    for cls, layers in present.items():
        tests = [next(adjusted) for _ in layers] if tested else [None] * len(layers)
        reaching = [e for e, t in zip(layers, tests)
                    if abs(e["logp_change"]) >= REACH_NATS and (t is None or t["significant"])]
        last = reaching[-1] if reaching else None
        out["classes"][cls] = {"logp_change": [e["logp_change"] for e in layers],
                               "answer_correct": [e["answer_correct"] for e in layers],
                               "p_adjusted": [t["p_adjusted"] for t in tests] if tested else None,
                               "reach_layer": last["layer"] if last else None,
                               "reach_relative_layer": last["relative_layer"] if last else None}
    return out


def depth_summary(probe: dict) -> dict:
    out = {}
    for task, splits in probe.get("summary", {}).get("tasks", {}).items():
        for split in DEPTH_SPLITS:
            if split in splits:
                b = splits[split]["best_site"]
                out[f"{task}/{split}"] = {"site": b["site"], "trained": b["trained_accuracy"],
                                          "control": b["control_accuracy"], "claim": b["claim"]}
    return out


def standardized_to(shipped: dict, fresh: dict) -> dict | None:
    """The shipped set's exact_match reweighted to the fresh set's class mix (direct standardization over
    exact_match_by_class's `by_class` cells: operands x operators x depth), beside the fresh set's own:
    the two then differ by the expressions, not by how many of each class they hold. Classes the fresh set
    holds and the shipped one does not are left out of both (and counted)."""
    a, b = shipped.get("by_class") or {}, fresh.get("by_class") or {}
    common = [c for c in b if c in a and a[c]["n"] and b[c]["n"]]
    n = sum(b[c]["n"] for c in common)
    if not n:
        return None
    return {"fresh": sum(b[c]["correct"] for c in common) / n,
            "shipped_standardized": sum(b[c]["n"] * a[c]["correct"] / a[c]["n"] for c in common) / n,
            "fresh_n": n, "classes": len(common), "fresh_classes_left_out": len(b) - len(common)}


def summarize_run(r: dict) -> dict:
    f = r["files"]
    out = {k: r[k] for k in ("run", "config", "seed", "parameters", "missing")}
    out["exact_match"] = {name: {split: {"exact_match": m["exact_match"], "ci95": m["exact_match_ci95"], "n": m["n_examples"]}
                                 for split, m in ev["metrics"].items() if split in FRESH_SPLITS}
                          for name, ev in r["evals"].items()}
    shipped = r["evals"].get("eval", {}).get("exact_match_by_class", {})
    out["fresh_standardized"] = {name: {split: standardized_to(shipped[split], classes[split])
                                        for split in FRESH_SPLITS if split in shipped and split in classes}
                                 for name, ev in r["evals"].items() if name != "eval"
                                 for classes in [ev.get("exact_match_by_class", {})]}
    if "ablation" in f:
        out["heads"] = head_summary(f["ablation"])
    if "value_probe" in f:
        out["values"] = value_summary(f["value_probe"])
    if "probe" in f:
        out["depth"] = depth_summary(f["probe"])
    if "patching" in f:
        out["patching_peaks"] = patching_peaks(f["patching"])
        out["patching_profile"] = patching_profile(f["patching"])
    if "battery" in f:
        out["battery"] = {"total_s": f["battery"]["total_s"], "device": f["battery"]["device"],
                          "steps": {s["step"]: round(s["wall_s"], 1) for s in f["battery"]["steps"]}}
    return out


def _fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def patching_markdown(runs: list[dict]) -> list[str]:
    profiled = [r for r in runs if r.get("patching_profile", {}).get("classes")]
    if not profiled:
        return []
    md = ["### Activation patching on the matched pairs (src.analysis.patching)", "",
          "The residual stream after layer l at one class of positions is taken from the bracketed twin into the "
          "flat expression's run (bracketed_to_flat); each cell is the mean change of the flat run's answer "
          f"log-probability in nats (teacher-forced, over the pairs). Reach: the last layer whose change is at least "
          f"{REACH_NATS} nats in size, i.e. the last layer at which what sits at those positions is still read on "
          "the way to the answer (relative layer = layer / (layers - 1)). Twin gap: bracketed - flat answer "
          "log-probability of the unpatched twins [paired t 95%], the denominator of patching.json's restored "
          "shares: where it is this close to 0 those shares are a change divided by almost nothing, so the changes "
          "are the figures to read. A run whose patching.json carries a paired t-test per cell has its reach tested too: the change must also be significant after Holm over "
          "that run's cells shown here"
          + ("; the runs marked `descriptive` predate those tests." if any(not r["patching_profile"].get("tested")
                                                                           for r in profiled) else
             " (every run here has them)."), "",
          f"![patching profile per config: class x layer, mean over seeds]({FIGURE})", "",
          "| run | twin gap (nats) | class | change by layer (nats) | reach (relative) |", "|---|---|---|---|---|"]
    for r in profiled:
        p = r["patching_profile"]
        gap = p.get("twin_gap_logp") or {}
        ci = gap.get("ci95") or [None, None]
        gap_text = f"{_fmt(gap.get('estimate'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if gap else "—"
        for cls, c in p["classes"].items():
            changes = ", ".join(f"{x:+.2f}" for x in c["logp_change"])
            reach = "none" if c["reach_layer"] is None else f"{c['reach_layer']} ({c['reach_relative_layer']:.2f})"
            reach += "" if p.get("tested") else ", descriptive"
            md.append(f"| `{r['config']}` seed {r['seed']} | {gap_text} | {cls} | {changes} | {reach} |")
    return md + [""]


FIGURE = "patching_profile.png"


@plain_text()  # config names drawn as written, from the first text on: no mathtext
def profile_figure(runs: list[dict]) -> bytes | None:
    """One heatmap per config with a patching profile: position class x layer, the mean over the config's
    seeds of the change of the answer log-probability (nats, symmetric log colour scale), layers labelled
    with their relative depth, so that the two scales' profiles can be read side by side."""
    import numpy as np

    from src.plotting import pyplot
    from src.text import plain_png

    by_config: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("patching_profile", {}).get("classes"):
            by_config.setdefault(r["config"], []).append(r["patching_profile"])
    if not by_config:
        return None
    plt = pyplot()
    from matplotlib.colors import SymLogNorm

    n = len(by_config)
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.8 * rows + 0.6), squeeze=False, constrained_layout=True)
    norm = SymLogNorm(linthresh=REACH_NATS, vmin=-30, vmax=30, base=10)

    def pilot_left(config: str) -> tuple[str, bool]:  # the two scales of one study side by side, the pilot first
        return ("pilot" if config == "scale_10m" else config.replace("_10m_", "_pilot_")), "10m" in config

    for ax, (config, profiles) in zip(axes.flat, sorted(by_config.items(), key=lambda kv: pilot_left(kv[0]))):
        classes = [c for c in PROFILE_CLASSES if all(c in p["classes"] for p in profiles)]
        grid = np.array([[np.mean([p["classes"][c]["logp_change"][layer] for p in profiles])
                          for layer in range(len(profiles[0]["classes"][c]["logp_change"]))] for c in classes])
        image = ax.imshow(grid, cmap="RdBu", norm=norm, aspect="auto")
        layers = grid.shape[1]
        ax.set_xticks(range(layers), [f"L{layer}\n{layer / max(1, layers - 1):.2f}" for layer in range(layers)], fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:+.1f}" if abs(value) >= 0.05 else "0", ha="center", va="center", fontsize=6)
        ax.set_title(f"{config} ({len(profiles)} seed{'s' if len(profiles) > 1 else ''})", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="answer log-prob change (nats)")
    fig.suptitle("Residual stream from the bracketed twin into the flat run, by position class and layer "
                 "(layer, relative depth)", fontsize=9)
    return plain_png(fig, dpi=110)


def value_family_markdown(fam: dict) -> list[str]:
    if not fam["rows"]:
        return []
    md = ["", "Over seeds: the selectivity on the non-trivial positions (trained - control, best layer, "
          f"{VALUE_SPLIT}) of each seed, its mean [95% t interval over seeds], a one-sample t-test against 0 (the "
          f"seed is the replicate; p_floor 0) and Holm over the family `{fam['family']['name']}` of "
          f"{fam['family']['size']} tests (every row; a target whose control is at its ceiling in some seed is left out).", "",
          "| config | target | seeds | per seed | mean [95% CI] | p | p (Holm) | above 0 |", "|---|---|---|---|---|---|---|---|"]
    for row in fam["rows"]:
        ci = row["ci95"]
        md.append(f"| `{row['config']}` | {row['target']} | {len(row['values'])} | "
                  f"{', '.join(f'{x:+.3f}' for x in row['values'])} | {row['estimate']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
                  f"{row['p_value']:.2g} | {row['p_adjusted']:.2g} | {'yes' if row['significant'] and row['estimate'] > 0 else 'no'} |")
    return md


def markdown(runs: list[dict], rolematches: dict[str, dict], values: dict) -> str:
    """MECHANISMS.md; `values` is value_family(runs)."""
    md = ["## Extension: mechanisms", "",
          "Generated by `python -m src.report.analyses` from the battery's files of each run (`python -m src.analysis.run_all`); "
          "every number is in `mechanisms.json`. Heads are named by index within one run only: across seeds and "
          "scales they are compared by role (below), never by index.", ""]
    label = lambda r: f"`{r['config']}` seed {r['seed']}"  # noqa: E731
    rows = []
    for r in runs:
        for name, splits in r.get("exact_match", {}).items():
            cells = [f"{splits[s]['exact_match']:.3f} [{splits[s]['ci95'][0]:.3f}, {splits[s]['ci95'][1]:.3f}]"
                     if s in splits else "—" for s in FRESH_SPLITS]
            rows.append(f"| {label(r)} | `{name}.json` | " + " | ".join(cells) + " |")
    if rows:
        md += ["### The models taken apart: exact_match on the shipped and on fresh test sets", "",
               "`eval.json`: the shipped test sets; `eval_fresh_<seed>.json`: test sets drawn the same way with "
               "another seed, holding no expression of any shipped file or training set (`python -m src.data "
               "--fresh-test`). 95% Wilson intervals; different expressions, so the two are not a paired comparison. "
               "Nor a like-for-like one: the fresh files leave out every expression of the training set they avoid, "
               "so classes that set exhausts (at 2,000,000 expressions, every 2-operand one) are missing from them "
               "(each eval file's exact_match_by_class holds the counts); their mix, not only their novelty, moves "
               "their scores. The table after this one compares like for like.", "",
               "| run | file | " + " | ".join(FRESH_SPLITS) + " |", "|---|---|" + "---|" * len(FRESH_SPLITS), *rows, ""]
    std_rows = []
    for r in runs:
        for name, splits in r.get("fresh_standardized", {}).items():
            cells = [f"{v['fresh']:.3f} / {v['shipped_standardized']:.3f}" if (v := splits.get(s)) else "—"
                     for s in FRESH_SPLITS]
            std_rows.append(f"| {label(r)} | `{name}.json` | " + " | ".join(cells) + " |")
    if std_rows:
        md += ["Like for like: the fresh set's exact_match against the shipped set's reweighted to the fresh set's "
               "mix of classes (operands × operators × depth; each class's shipped rate weighted by the fresh set's "
               "count of it). Descriptive.", "",
               "| run | fresh file | " + " | ".join(f"{s}: fresh / shipped (fresh mix)" for s in FRESH_SPLITS) + " |",
               "|---|---|" + "---|" * len(FRESH_SPLITS), *std_rows, ""]
    md += ["### Heads that matter, and heads that matter for brackets", "",
           "Matter: ablating the head changes answer_loss on the matched pairs significantly (either sign) under both "
           "zero and mean ablation (paired t, Holm over the head_effect family). Bracket-specific: its effect differs "
           "between the bracketed twins and the flat originals under both modes (head_bracket family). Targeted set: "
           "the smallest set whose effect is significantly larger on the twins, chosen on "
           "the even-indexed pairs, tested on the odd ones (bracket specificity of answer_loss, Holm over the sets "
           "tried).", ""]
    md += ["| run | exact_match flat / matched | heads | matter (both modes) | bracket-specific (both) | targeted set, zero "
           "[95% CI] p (Holm) | targeted set, mean |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        h = r.get("heads")
        if h is None:
            md.append(f"| {label(r)} | — | — | no ablation.json | — | — | — |")
            continue
        em = h["baseline_exact_match"]
        cells = []
        for mode in ("zero", "mean"):
            t = h["targeted"].get(mode)
            if not t:
                cells.append("—")
            elif not t["found"]:
                cells.append("none significant")
            else:
                ci = t["ci95"] or [None, None]
                cells.append(f"{'+'.join(t['heads'])}: {t['estimate']:+.4f} [{_fmt(ci[0], 4)}, {_fmt(ci[1], 4)}] "
                             f"p {t['p_adjusted']:.2g}")
        md.append(f"| {label(r)} | {_fmt(em['test_flat'])} / {_fmt(em['test_paren_matched'])} | {h['heads_scanned']} | "
                  f"{len(h['matter_under_both'])}: {', '.join(h['matter_under_both']) or '—'} | "
                  f"{', '.join(h['bracket_specific_under_both']) or 'none'} | {cells[0]} | {cells[1]} |")
    md += ["", "### Roles matched across scales", ""]
    for name, rolematch in rolematches.items():
        runs_text = ", ".join(f"`{r}`" for r in rolematch["pilot_runs"] + rolematch["large_runs"])
        md += [f"From `{name}` (pilot and 10M runs: {runs_text}):", "", rolematch_markdown(rolematch)]
    if not rolematches:
        md += ["No rolematch.json given (`python -m src.analysis.rolematch`).", ""]
    md += patching_markdown(runs)
    md += ["### Intermediate values (src.analysis.value_probe)", "",
           f"On {VALUE_SPLIT}: the residual layer with the best training accuracy; trained and untrained-control "
           "accuracy, the copy baseline (mod10: the last digit read; sign: always +), the trained probe on the positions "
           "the copy baseline gets wrong (non-trivial), and the claim (selectivity intervals paired over expressions).", ""]
    md += ["| run | target | layer | positions | trained | control | copy baseline | trained, non-trivial | claim |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for key, v in (r.get("values") or {}).items():
            md.append(f"| {label(r)} | {key} | {v['layer']} | {v['n_positions']} | {_fmt(v['trained'])} | "
                      f"{_fmt(v['control'])} | {_fmt(v['copy_baseline'])} | {_fmt(v['trained_nontrivial'])} | {v['claim']} |")
        if not r.get("values"):
            md.append(f"| {label(r)} | — | — | — | — | — | — | — | no value_probe.json |")
    md += value_family_markdown(values)
    md += ["", "### Depth probes (src.analysis.probe)", "", "| run | task / split | best site | trained | control | claim |",
           "|---|---|---|---|---|---|"]
    for r in runs:
        for key, v in (r.get("depth") or {}).items():
            md.append(f"| {label(r)} | {key} | {v['site']} | {_fmt(v['trained'])} | {_fmt(v['control'])} | {v['claim']} |")
    md += ["", "### The battery's time", "", "| run | device | total s | steps (s) |", "|---|---|---|---|"]
    for r in runs:
        b = r.get("battery")
        if b:
            steps = ", ".join(f"{k} {v}" for k, v in b["steps"].items())
            md.append(f"| {label(r)} | {b['device']} | {b['total_s']:.1f} | {steps} |")
    missing = [f"{label(r)}: {', '.join(r['missing'])}" for r in runs if r["missing"]]
    if missing:
        md += ["", "Files not there: " + "; ".join(missing) + "."]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m src.report.analyses", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=path_arg, metavar="RUN", help="directories holding the battery's files")
    p.add_argument("--rolematch", type=path_arg, nargs="+", default=[], metavar="DIR",
                   help="directories of rolematch.json (e.g. one per study), each shown as its own table")
    p.add_argument("--out", type=path_arg, required=True, help="directory for mechanisms.json and MECHANISMS.md")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = p.parse_args(argv)
    runs = [summarize_run(read_run(run)) for run in args.runs]
    rolematches = {str(d / "rolematch.json"): read_result(d / "rolematch.json", "rolematch") for d in args.rolematch}
    values = value_family(runs)
    text = markdown(runs, rolematches, values)
    figure = profile_figure(runs)  # rendered before anything is written
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "mechanisms.json", stamp("mechanisms", {"runs": runs, "rolematch": list(rolematches),
                                                                          "value_family": values}))
    atomic_write_text(args.out / "MECHANISMS.md", text)
    if figure is not None:
        atomic_write_bytes(args.out / FIGURE, figure)
    print(text)
    print(f"wrote {args.out / 'mechanisms.json'} and {args.out / 'MECHANISMS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
