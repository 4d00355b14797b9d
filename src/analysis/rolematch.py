"""Pilot heads matched to 10M heads by role: does each role persist, move or vanish at scale?

Heads are interchangeable under permutation (docs/DESIGN.md section 5), so a pilot head is never
compared with the 10M head of the same index. Each run (one seed of one scale) is described by its
roles.json (src.analysis.roles, schema roles/1) and by each head's ablation effect (`HeadEffect`, usually
taken from its ablation.json by `effects_from_ablation`). For every role of src.analysis.roles.ROLES and every
run, the run's head for the role is the one src.analysis.roles.match_roles picks: the head holding the role
(combined share and share_distinct at least the run's threshold, ROLE_THRESHOLD = 0.4) with the
largest share, else the head with the largest share, marked not held.

Effects are relative to each model's own baseline: estimate / baseline and ci95 / baseline, where
baseline is the unablated model's value of the metric on the same examples (by default answer_loss
on test_paren_matched, the bracketed twins: +0.05 means the ablation raises that model's answer
loss by 5%). The baseline is treated as a constant of the model (it is measured on the same
examples as the effect, so its own noise is not carried into the interval). An effect's direction
is +1 when its relative interval lies above 0, -1 when below, 0 when it contains 0.

Verdict per role (`VERDICTS`), from the seeds that hold it:
    not held in the pilot   no pilot seed has a head holding the role
    vanishes                some pilot seed holds it, no 10M seed does
    persists                some pilot seed holds it, every 10M seed holds it, and for every 10M
                            seed: its head's relative layer lies within `depth_tolerance` of the
                            range of the pilot holders' relative layers, and against every pilot
                            holder its effect has no opposite direction (+1 against -1) and the two
                            relative 95% intervals overlap
    moves                   held at 10M by at least one seed, but not persists; `reasons` says
                            which condition failed (held in only some 10M seeds; another relative
                            depth; an opposite direction; intervals that do not overlap)
Relative layer: layer / (num_layers - 1) (src.analysis.common.relative_layer). The default depth
tolerance is half the pilot's layer spacing, 0.5 / (pilot num_layers - 1) = 1/6 for 4 layers: a
6-layer 10M head is at the pilot's depth exactly when its relative layer is nearest to that pilot
layer (0.2 and 0.4 are at pilot layer 1 = 0.33, 0.6 and 0.8 at layer 2 = 0.67). Overlapping
intervals is a descriptive test of compatibility, not a test of equality: it leans toward
"persists" when the intervals are wide, and the table shows them so that a reader can judge.

`match_across_scales` builds the table (role x scale x seed) and the verdicts; `rolematch_markdown`
renders both.

The command reads each run's roles.json and ablation.json (and patching.json where it exists):

    python -m src.analysis.rolematch --pilot P1 P2 P3 --large L1 L2 L3 [--mode zero|mean]
        [--split test_paren_matched|bracket_specificity|...] [--metric answer_loss] --out DIR

and writes DIR/rolematch.json (schema rolematch/1: the table, the verdicts, and per run the layer where
residual patching restores most of the bracketed twin's answer log-probability, by direction and
position class, with its relative layer) and DIR/ROLEMATCH.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from src.rundir.atomic import atomic_write_json, atomic_write_text
from src.cli import ArgumentParser, path_arg
from src.errors import UserError, run_main
from src.analysis.roles import ROLE_THRESHOLD, ROLES, match_roles
from src.rundir.results import read_result, result_file, stamp

PILOT, LARGE = "pilot", "10M"
SCALES = (PILOT, LARGE)
VERDICTS = ("persists", "moves", "vanishes", "not held in the pilot")
MATCHED_SPLIT = "test_paren_matched"
BRACKET_SPECIFICITY = "bracket_specificity"
EPSILON = 1e-9  # relative layers are ratios of small integers: compare them with a margin for rounding


@dataclass(frozen=True)
class HeadEffect:
    """A head's ablation effect (ablated - baseline) with its 95% interval, in the metric's units,
    and the unablated model's value of the metric on the same examples. `source` names what was
    measured (e.g. "zero/test_paren_matched/answer_loss"): every effect of one table must share it."""

    estimate: float
    ci95: tuple[float, float]
    baseline: float
    source: str = "unnamed"

    def relative(self) -> tuple[float, tuple[float, float]]:
        """(estimate / baseline, ci95 / baseline); ValueError when the baseline is not positive."""
        if not self.baseline > 0:
            raise ValueError(f"{self.source}: baseline {self.baseline} is not positive; a relative effect needs one")
        lo, hi = self.ci95
        return self.estimate / self.baseline, (lo / self.baseline, hi / self.baseline)


@dataclass(frozen=True)
class RunEvidence:
    """One seed of one scale: its roles.json dict and its heads' effects by head label ("L1-H2")."""

    roles: dict
    effects: dict[str, HeadEffect]

    @property
    def seed(self):
        return self.roles.get("seed")


def effects_from_ablation(ablation: dict, mode: str = "zero", split: str = MATCHED_SPLIT,
                          metric: str = "answer_loss") -> dict[str, HeadEffect]:
    """Every scanned head's effect from an ablation.json dict (schema ablation/2).

    `split` is one of the scan's splits (effects[split][metric], whose entry carries its baseline),
    or "bracket_specificity" (effect on test_paren_matched minus effect on test_flat, read against the
    test_paren_matched baseline)."""
    if ablation.get("schema") != "ablation/2":
        raise ValueError(f"not an ablation/2 dict (schema {ablation.get('schema')!r})")
    rows = ablation.get("scan", {}).get("modes", {}).get(mode)
    if rows is None:
        raise ValueError(f"ablation.json has no scan under mode {mode!r}")
    source = f"{mode}/{split}/{metric}"
    effects = {}
    for row in rows:
        if split == BRACKET_SPECIFICITY:
            entry = row[BRACKET_SPECIFICITY][metric]
            baseline = ablation["baseline"][MATCHED_SPLIT][metric]
        else:
            entry = row["effects"][split][metric]
            baseline = entry["baseline"]
        effects[row["head"]] = HeadEffect(entry["estimate"], tuple(entry["ci95"]), baseline, source)
    return effects


# ---------------------------------------------------------------------------- the table


def direction(ci95: tuple[float, float] | None) -> int | None:
    """+1 when the interval lies above 0, -1 when below, 0 when it contains 0; None without one."""
    if ci95 is None:
        return None
    lo, hi = ci95
    return 1 if lo > 0 else -1 if hi < 0 else 0


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def default_depth_tolerance(pilot_num_layers: int) -> float:
    """Half the pilot's spacing between relative layers; any depth for a one-layer pilot."""
    return 0.5 / (pilot_num_layers - 1) if pilot_num_layers > 1 else 1.0


def _check_runs(pilot: list[RunEvidence], large: list[RunEvidence]) -> None:
    for scale, runs in ((PILOT, pilot), (LARGE, large)):
        if not runs:
            raise ValueError(f"no {scale} runs")
        seeds = [run.seed for run in runs]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"{scale}: seed given twice ({seeds})")
        layers = {run.roles.get("num_layers") for run in runs}
        if len(layers) > 1:
            raise ValueError(f"{scale}: runs of different depths ({sorted(layers)}) are not one scale")
    sources = {effect.source for run in pilot + large for effect in run.effects.values()}
    if len(sources) > 1:
        raise ValueError(f"effects of different measurements cannot be compared: {sorted(sources)}")


def _cell(role: str, scale: str, run: RunEvidence, matched: dict) -> dict:
    """One row of the table: the run's head for the role and that head's relative effect."""
    cell = {"role": role, "scale": scale, "seed": run.seed, "head": matched["head"], "layer": matched["layer"],
            "relative_layer": matched["relative_layer"], "share": matched["share"], "held": matched["passes"],
            "effect": None, "effect_ci95": None, "effect_direction": None}
    effect = run.effects.get(matched["head"]) if matched["head"] is not None else None
    if effect is None:
        if matched["passes"]:
            raise ValueError(f"{scale} seed {run.seed}: head {matched['head']} holds {role} but has no ablation effect")
        return cell
    estimate, ci95 = effect.relative()
    # the absolute effect (the metric's own units) stands beside the relative one, and first in the output
    return cell | {"effect_absolute": effect.estimate, "effect_absolute_ci95": list(effect.ci95),
                   "effect_baseline": effect.baseline,
                   "effect": estimate, "effect_ci95": list(ci95), "effect_direction": direction(ci95)}


def role_verdict(pilot_cells: list[dict], large_cells: list[dict], depth_tolerance: float) -> dict:
    """The verdict of one role from its pilot and 10M cells (see the module docstring)."""
    pilot_held = [c for c in pilot_cells if c["held"]]
    large_held = [c for c in large_cells if c["held"]]
    counts = {"pilot_seeds_holding": len(pilot_held), "pilot_seeds": len(pilot_cells),
              "large_seeds_holding": len(large_held), "large_seeds": len(large_cells)}
    if not pilot_held:
        return {"verdict": "not held in the pilot", "reasons": ["no pilot seed has a head holding the role"]} | counts
    if not large_held:
        return {"verdict": "vanishes", "reasons": ["no 10M seed has a head holding the role"]} | counts
    reasons, failed = [], []
    if len(large_held) < len(large_cells):
        reasons.append(f"held in {len(large_held)} of {len(large_cells)} 10M seeds")
        failed.append("seeds")
    low = min(c["relative_layer"] for c in pilot_held)
    high = max(c["relative_layer"] for c in pilot_held)
    for q in large_held:
        if not low - depth_tolerance - EPSILON <= q["relative_layer"] <= high + depth_tolerance + EPSILON:
            reasons.append(f"10M seed {q['seed']}: {q['head']} at relative layer {q['relative_layer']:.2f}, "
                           f"outside the pilot's {low:.2f}-{high:.2f} +/- {depth_tolerance:.2f}")
            failed.append("depth")
        for p in pilot_held:
            if p["effect_direction"] * q["effect_direction"] == -1:
                reasons.append(f"10M seed {q['seed']} against pilot seed {p['seed']}: opposite effect directions")
                failed.append("direction")
            elif not intervals_overlap(p["effect_ci95"], q["effect_ci95"]):
                reasons.append(f"10M seed {q['seed']} against pilot seed {p['seed']}: effect intervals do not overlap")
                failed.append("effect size")
    # which conditions of `persists` failed, in a fixed order: "moves" at the same depth with a different
    # effect size is another finding than "moves" to another depth
    return {"verdict": "moves" if reasons else "persists", "reasons": reasons,
            "failed": [c for c in ("depth", "direction", "effect size", "seeds") if c in failed]} | counts


def match_across_scales(pilot: list[RunEvidence], large: list[RunEvidence],
                        depth_tolerance: float | None = None) -> dict:
    """The role x scale x seed table and a verdict per role.

    Returns {definitions, depth_tolerance, thresholds, effect_source, cells, verdicts}: `cells` one
    dict per (role, scale, seed), roles in src.analysis.roles.ROLES order, pilot before 10M, seeds in the
    order given (role, scale, seed, head, layer, relative_layer, share, held, effect, effect_ci95,
    effect_direction; effect relative to the model's baseline, None where the head has none);
    `verdicts` {role: {verdict, reasons, pilot_seeds_holding, pilot_seeds, large_seeds_holding,
    large_seeds}}."""
    _check_runs(pilot, large)
    if depth_tolerance is None:
        depth_tolerance = default_depth_tolerance(pilot[0].roles.get("num_layers", 1))
    runs = [(PILOT, run) for run in pilot] + [(LARGE, run) for run in large]
    matched = {entry["role"]: entry["runs"] for entry in match_roles([run.roles for _, run in runs])}
    cells, verdicts = [], {}
    for role in ROLES:
        role_cells = [_cell(role, scale, run, m) for (scale, run), m in zip(runs, matched[role])]
        cells += role_cells
        verdicts[role] = role_verdict([c for c in role_cells if c["scale"] == PILOT],
                                      [c for c in role_cells if c["scale"] == LARGE], depth_tolerance)
    sources = sorted({e.source for _, run in runs for e in run.effects.values()})
    return {
        "definitions": {
            "head": "the run's head holding the role with the largest combined share (src.analysis.roles.match_roles), else "
                    "the head with the largest share, not held; heads are matched by role, never by index",
            "relative_layer": "layer / (num_layers - 1)",
            "effect": "ablation effect (ablated - baseline) / the model's unablated baseline, with its 95% interval "
                      "divided likewise",
            "effect_direction": "+1 interval above 0, -1 below, 0 containing 0",
            "verdicts": {
                "not held in the pilot": "no pilot seed holds the role",
                "vanishes": "some pilot seed holds it, no 10M seed does",
                "persists": "every 10M seed holds it at the pilot holders' relative depth (+/- depth_tolerance), "
                            "with no opposite effect direction and overlapping effect intervals against every "
                            "pilot holder",
                "moves": "held by some 10M seed but not persists: see reasons; `failed` names the conditions that "
                         "failed (depth, direction, effect size, seeds: held in only some 10M seeds)",
            },
        },
        "depth_tolerance": depth_tolerance,
        "thresholds": sorted({run.roles.get("threshold", ROLE_THRESHOLD) for _, run in runs}),
        "effect_source": sources[0] if sources else None,
        "cells": cells,
        "verdicts": verdicts,
    }


# ---------------------------------------------------------------------------- markdown


def _percent(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _effect_text(cell: dict) -> str:
    if cell["effect"] is None:
        return "n/a"
    lo, hi = cell["effect_ci95"]
    return f"{_percent(cell['effect'])} [{_percent(lo)}, {_percent(hi)}]"


def rolematch_markdown(result: dict) -> str:
    """Two Markdown tables: the verdict per role, then role x scale x seed with each matched head."""
    lines = ["| role | verdict | pilot seeds holding | 10M seeds holding | reasons |", "|---|---|---|---|---|"]
    for role, v in result["verdicts"].items():
        reasons = "; ".join(v["reasons"]) if v["verdict"] != "persists" else "-"
        verdict = f"**{v['verdict']}**" + (f" ({', '.join(v['failed'])})" if v.get("failed") else "")
        lines.append(f"| {role} | {verdict} | {v['pilot_seeds_holding']} of {v['pilot_seeds']} | "
                     f"{v['large_seeds_holding']} of {v['large_seeds']} | {reasons} |")
    lines += ["", "| role | scale | seed | head (share) | relative layer | effect / baseline [95%] |",
              "|---|---|---|---|---|---|"]
    for c in result["cells"]:
        if c["head"] is None:
            head, layer = "n/a", "n/a"
        else:
            head = f"{c['head']} ({c['share']:.2f})"
            head = f"**{head}**" if c["held"] else f"{head}, not held"
            layer = f"{c['relative_layer']:.2f}"
        lines.append(f"| {c['role']} | {c['scale']} | {c['seed']} | {head} | {layer} | {_effect_text(c)} |")
    thresholds = ", ".join(str(t) for t in result["thresholds"])
    lines += ["", f"Heads are matched by role, never by index: each cell is the seed's head holding the role (bold: "
              f"share and share_distinct at least {thresholds}) with the largest share, else its largest share, not "
              f"held. Effect: {result['effect_source']}, ablated - baseline as a share of the model's own baseline. "
              f"Relative layer: layer / (num_layers - 1); same depth within {result['depth_tolerance']:.2f}. "
              "persists: every 10M seed holds the role at the pilot's depth, with no opposite effect direction and "
              "overlapping intervals; moves: held at 10M but not so (in brackets: what differs); vanishes: no 10M seed holds it."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the command


def patching_peaks(patching: dict) -> dict:
    """{direction: {class: the residual layer with the largest restored_share, its relative layer,
    share and interval}} of one patching.json."""
    out = {}
    for direction_name, classes in patching.get("resid", {}).items():
        for cls, layers in classes.items():
            scored = [e for e in layers if e.get("restored_share") is not None]
            if scored:
                best = max(scored, key=lambda e: e["restored_share"])
                out.setdefault(direction_name, {})[cls] = {k: best.get(k) for k in
                                                            ("layer", "relative_layer", "restored_share", "ci95")}
    return out


def run_evidence(run: Path, mode: str, split: str, metric: str) -> tuple[RunEvidence, dict | None]:
    roles = read_result(run / "roles.json", "roles")
    ablation = read_result(run / "ablation.json", "ablation")
    try:
        effects = effects_from_ablation(ablation, mode, split, metric)
    except (KeyError, ValueError) as err:
        raise UserError(f"{run / 'ablation.json'}: no {mode}/{split}/{metric} effects ({err}); rerun "
                        f"`python -m src.analysis.ablate --run {run}`") from None
    patching = read_result(run / "patching.json", "patching") if result_file(run / "patching.json") else None
    return RunEvidence(roles, effects), patching


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m src.analysis.rolematch", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pilot", nargs="+", type=path_arg, required=True, metavar="RUN", help="the pilot's run directories")
    p.add_argument("--large", nargs="+", type=path_arg, required=True, metavar="RUN", help="the 10M model's run directories")
    p.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablation mode of the effects (default: zero)")
    p.add_argument("--split", default=MATCHED_SPLIT, help="the scan's split of the effects, or bracket_specificity "
                   "(default: %(default)s)")
    p.add_argument("--metric", default="answer_loss", help="the effects' metric (default: %(default)s)")
    p.add_argument("--out", type=path_arg, required=True, help="directory for rolematch.json and ROLEMATCH.md")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = p.parse_args(argv)
    evidence = {}
    for scale, runs in ((PILOT, args.pilot), (LARGE, args.large)):
        for run in runs:
            if not run.is_dir():
                raise UserError(f"--{'pilot' if scale == PILOT else 'large'} {run}: not a directory")
        evidence[scale] = [run_evidence(run, args.mode, args.split, args.metric) for run in runs]
    try:
        table = match_across_scales([e for e, _ in evidence[PILOT]], [e for e, _ in evidence[LARGE]])
    except ValueError as err:
        raise UserError(f"the runs cannot be matched: {err}") from None
    peaks = {scale: [{"run": str(run), "seed": e.seed, "peaks": patching_peaks(pt) if pt else None}
                     for run, (e, pt) in zip(runs, evidence[scale])]
             for scale, runs in ((PILOT, args.pilot), (LARGE, args.large))}
    result = stamp("rolematch", {"pilot_runs": [str(r) for r in args.pilot], "large_runs": [str(r) for r in args.large],
                                 "mode": args.mode, "split": args.split, "metric": args.metric, **table,
                                 "patching_peaks": peaks})
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "rolematch.json", result)
    atomic_write_text(args.out / "ROLEMATCH.md", rolematch_markdown(result) + peaks_markdown(peaks))
    print(rolematch_markdown(result))
    print(f"wrote {args.out / 'rolematch.json'} and {args.out / 'ROLEMATCH.md'}")
    return 0


def peaks_markdown(peaks: dict) -> str:
    lines = ["", "Residual patching: the layer where the restored share of the answer log-probability peaks "
             "(src.analysis.patching; relative layer in brackets). A share is a change divided by the twins' own gap "
             "(bracketed - flat answer log-probability): where that gap is close to 0 the shares run far outside "
             "[0, 1] and mean little; MECHANISMS.md then shows the changes themselves.", "",
             "| scale | seed | direction | class | peak layer (relative) | restored share [95%] |", "|---|---|---|---|---|---|"]
    for scale, runs in peaks.items():
        for r in runs:
            for direction_name, classes in (r["peaks"] or {}).items():
                for cls, e in classes.items():
                    ci = e.get("ci95")
                    share = f"{e['restored_share']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                    lines.append(f"| {scale} | {r['seed']} | {direction_name} | {cls} | {e['layer']} "
                                 f"({e['relative_layer']:.2f}) | {share} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(run_main(main))
