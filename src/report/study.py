"""The study's preregistered tests (docs/PREREGISTRATION.md), computed from its committed runs.

    python -m src.report.study [--results results/study] [--out results/study] [--partial]

Reads every seed of study_pilot and study_10m under --results: RESULTS/<config>/seed<S>/ with eval.json,
interchange.json, summary.json (each may be X.json.gz) and metrics.jsonl (scripts/study.sh copies them there),
through the project's readers (src.rundir.results). A missing or damaged file, a seed directory that is not one of the
registered seeds (42, 123, 7, 1, 2, 3, 4, 5), a --limit result or an eval.json and interchange.json of two
different checkpoints is a one-line error. A scale with fewer than its 8 seeds is incomplete: an error naming
the seeds missing, unless --partial, which computes every test on the seeds there and says "partial: n seeds"
in the title of every table and figure.

The five primary tests, one family (preregistered_primary: Holm, alpha 0.05), each exactly as registered:
    H1-flat, H1-paren   per seed exact_match on test_flat / test_paren; Welch's t, 10M against the pilot;
                        effect named 0.05
    H2                  per seed the relative depth at which IIA for V first reaches 0.9 at the `)` (interchange
                        first_reach.close; a seed where no site reaches it counts as 1); the exact permutation
                        test over every split of the seeds; effect named 0.25
    H3-pilot, H3-10M    per seed exact_match on test_flat minus on the precedence-changing twins of the same
                        lines (eval.json bracket_cost_by_kind.precedence_changing); one-sample t that it is 0;
                        effect named 0.05
Each is reported with its estimate and 95% interval, p, Holm-adjusted p, its floor and floor x 5, its power at
the effect named (the registration's method, scripts/power.py: normal seeds with the measured seed spreads,
Holm's first threshold 0.01, the seeds there; for H2 at a scale whose seeds all lie at one value, the
registration's assumed seed sd 0.125 instead) and its verdict in the registration's words.

The checks that must hold: the all-position embedding patch (interchange.json ceiling.check) passed on every
control of every run, else nothing is written and the command fails naming the runs; a seed with fewer than
100 value interchange pairs answered right unpatched is shown at the top of PRIMARY.md and left out of H2,
whose floor is then that of the seeds left.

Written to --out, once everything is read, tested and drawn: PRIMARY.md, primary.json (schema study_primary/1,
every number of PRIMARY.md) and the figures iia_depth.png (IIA for V against relative depth at the `)` and
inside the bracket, seeds thin, mean thick), class_exact_match.png (exact_match by class, both scales) and
bracket_cost.png (the cost of value-preserving and of precedence-changing brackets, seeds and mean; beside it
each seed's precedence-changing cost against its test_flat), and
training_curves.png (training loss and validation exact_match per epoch, every seed; metrics.jsonl). The
registration's commit comes from git (the last commit of docs/PREREGISTRATION.md) or --preregistration-commit;
RESULTS/DEVIATIONS.md, where present, is included verbatim as the deviations from the registration.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import textwrap
from pathlib import Path

from src import stats
from src.cli import ArgumentParser, int_in, path_arg
from src.errors import UserError, run_main
from src.plotting import pyplot
from src.report.curves import curves_figure, summary as curve_summary, training_curve
from src.report.scaling import class_key, pooled_cells
from src.rundir.atomic import atomic_write_bytes, atomic_write_text
from src.rundir.paths import check_output_dir
from src.rundir.results import SCHEMAS, read_result, regenerate_hint, result_file
from src.text import plain_png, plain_text, shown

SCHEMA = SCHEMAS["study_primary"]
REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRATION = "docs/PREREGISTRATION.md"
SCALES = {"pilot": "study_pilot", "10M": "study_10m"}  # label -> config (configs/study/<config>.yaml)
REGISTERED_SEEDS = (42, 123, 7, 1, 2, 3, 4, 5)
FAMILY, ALPHA = "preregistered_primary", 0.05
FAMILY_SIZE = 5
FIRST_THRESHOLD = ALPHA / FAMILY_SIZE  # the power is computed here: a lower bound on the power under Holm
MIN_VALUE_PAIRS = 100  # value interchange pairs answered right unpatched, per seed, for H2
IIA_REACH = 0.9        # H2's level (src.analysis.interchange IIA_REACH, first_reach)
NO_REACH = 1.0         # H2: a seed at which no site reaches 0.9
SIMULATIONS = 20_000   # t-tests' power; the permutation test's uses a tenth, as scripts/power.py
# H2's power where a scale's seeds all lie at one value (every seed at d = 1 when none reaches 0.9): a spread of
# 0 is then the censoring's, not the depth's, and would make any shift certain to be found; the registration's
# power analysis assumed this seed sd of the first-reach depth instead (docs/PREREGISTRATION.md, Power)
H2_ASSUMED_SD = 0.125
STUDY_HINT = "SEEDS=... SCALES=... bash scripts/study.sh (results/study/PLAN.md gives the groups)"
SEED_DIR = re.compile(r"^seed(\d+)$")
RESIDUAL = ("embed", "resid")
IIA_TABLE_CLASSES = ("close", "inside", "operator")  # PRIMARY.md's IIA table; primary.json holds every class
NEAR_TWIN_SPLITS = ("test_flat", "test_paren", "test_paren_matched", "test_paren_precedence", "test_depth3")
# what the 10M model's schedule was chosen to reach (mean over seeds, exact_match; configs/study/study_10m.yaml)
TARGETS = {"10M": {"test_flat": 0.95, "test_paren": 0.95, "test_depth3": 0.70}}
TESTS = {
    "H1-flat": {"hypothesis": "H1", "statistic": "exact_match on test_flat, per seed", "method": "welch_t",
                "effect_named": 0.05, "effect_units": "exact_match (absolute)"},
    "H1-paren": {"hypothesis": "H1", "statistic": "exact_match on test_paren, per seed", "method": "welch_t",
                 "effect_named": 0.05, "effect_units": "exact_match (absolute)"},
    "H2": {"hypothesis": "H2", "statistic": "relative depth at which IIA for V first reaches 0.9 at the `)`, per seed "
                                            "(interchange first_reach.close; 1 where no site reaches it)",
           "method": "permutation_exact", "effect_named": 0.25, "effect_units": "relative depth"},
    "H3-pilot": {"hypothesis": "H3", "statistic": "exact_match on test_flat minus on the precedence-changing twins, "
                                                  "per seed (the same lines)", "method": "one_sample_t",
                 "effect_named": 0.05, "effect_units": "exact_match (absolute)", "scale": "pilot"},
    "H3-10M": {"hypothesis": "H3", "statistic": "exact_match on test_flat minus on the precedence-changing twins, "
                                                "per seed (the same lines)", "method": "one_sample_t",
               "effect_named": 0.05, "effect_units": "exact_match (absolute)", "scale": "10M"},
}
METHODS = {"welch_t": "Welch's t-test, 10M against the pilot (analytic)",
           "permutation_exact": "exact two-sided permutation test of the difference in means, every split of the seeds",
           "one_sample_t": "one-sample t-test that the mean is 0 (analytic)"}


# ---------------------------------------------------------------------------- reading the runs


def _need(obj, path: Path, kind: str, keys: tuple, check=None, what: str = "", prefix: tuple = ()):
    """obj[k0][k1]...; a one-line UserError naming the file and the key (`prefix` + keys, as the file nests them) when
    it is missing or, with `check`, when `check(value)` is false (`what` says what it must be)."""
    for i, key in enumerate(keys):
        if not isinstance(obj, dict) or key not in obj:
            raise UserError(f"{shown(path)}: no '{'.'.join(map(str, prefix + keys[:i + 1]))}'; regenerate it with "
                            f"`{regenerate_hint(kind, path.parent)}`")
        obj = obj[key]
    if check is not None and not check(obj):
        raise UserError(f"{shown(path)}: '{'.'.join(map(str, prefix + keys))}' must be {what}, got {str(obj)[:40]!r}; "
                        f"regenerate it with `{regenerate_hint(kind, path.parent)}`")
    return obj


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_share(v) -> bool:
    return _is_number(v) and 0.0 <= v <= 1.0


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


SHARE, COUNT = (_is_share, "a number from 0 to 1"), (_is_count, "a whole number")


def find_seeds(results: Path) -> dict[str, dict[int, Path]]:
    """{scale: {seed: directory}} of the seed directories under RESULTS/<config>/; an unregistered one is an error."""
    if not results.is_dir():
        what = "is a file, not a directory" if results.exists() else "no such directory"
        raise UserError(f"--results {shown(results)}: {what}; give the directory scripts/study.sh copies the study's "
                        "runs to (results/study)")
    found = {}
    for scale, config in SCALES.items():
        found[scale] = {}
        base = results / config
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            m = SEED_DIR.match(entry.name)
            if not entry.is_dir() or not m:
                continue
            seed = int(m[1])
            if seed not in REGISTERED_SEEDS:
                raise UserError(f"{shown(entry)}: seed {seed} is not one of the registered seeds "
                                f"({', '.join(map(str, REGISTERED_SEEDS))}; {REGISTRATION}); move it out of {shown(base)}")
            found[scale][seed] = entry
    return found


def _curve(cells: list[dict], cls: str, figure: str = "iia") -> list[tuple[float, float]]:
    """[(relative depth, value)] of the residual-stream cells of a position class, by depth."""
    pts = [(c["relative_depth"], c[figure]["value"]) for c in cells
           if c["kind"] in RESIDUAL and c["position_class"] == cls and c[figure]["value"] is not None]
    return sorted(pts)


def _interchange_summary(ic: dict, path: Path) -> dict:
    """What the study reads of interchange.json, every value checked: ceilings, the value pairs read, H2's depth,
    the residual curves and, per variable x control x position class, the figures of the exploratory summary."""
    variables = _need(ic, path, "interchange", ("variables",), lambda v: isinstance(v, dict), "a mapping")
    _need(ic, path, "interchange", ("variables", "value", "controls", "interchange"))
    ceilings, summary = [], {}
    for variable, entry in variables.items():
        controls = _need(entry, path, "interchange", ("controls",), lambda v: isinstance(v, dict), "a mapping")
        for control, c in controls.items():
            keys = ("variables", variable, "controls", control)
            right = _need(ic, path, "interchange", keys + ("both_correct",), *COUNT)
            cells = _need(ic, path, "interchange", keys + ("cells",), lambda v: isinstance(v, list), "a list")
            for i, cell in enumerate(cells):
                where = keys + ("cells", i)
                _need(cell, path, "interchange", ("kind",), lambda v: v in ("embed", "resid", "head"),
                      "embed, resid or head", where)
                _need(cell, path, "interchange", ("position_class",), lambda v: isinstance(v, str), "a string", where)
                _need(cell, path, "interchange", ("relative_depth",), *SHARE, where)
                for figure in ("iia", "kept_base"):
                    _need(cell, path, "interchange", (figure, "value"), lambda v: v is None or _is_share(v),
                          "a number from 0 to 1 or null", where)
            if right == 0:
                ceilings.append({"variable": variable, "control": control, "check": "no pair answered right"})
            else:
                check = _need(ic, path, "interchange", keys + ("ceiling", "check"), lambda v: isinstance(v, str), "a string")
                ceilings.append({"variable": variable, "control": control, "check": check})
            figure = "kept_base" if control == "value_preserving" else "iia"
            classes = sorted({cell["position_class"] for cell in cells})
            reach = c.get("first_reach") or {}
            for cls in classes:
                curve = _curve(cells, cls, figure)
                values = [v for _, v in curve]
                first = reach.get(cls)
                if first is not None:
                    _need(first, path, "interchange", ("relative_depth",), *SHARE, keys + ("first_reach", cls))
                summary[f"{variable}/{control}/{cls}"] = {
                    "variable": variable, "control": control, "position_class": cls, "figure": figure,
                    "pairs_read": right, "peak": max(values) if values else None, "lowest": min(values) if values else None,
                    "first_reach": first["relative_depth"] if first else None}
    value = variables["value"]["controls"]["interchange"]
    value_right = value["both_correct"]
    first_close = None
    if value_right:
        first = _need(ic, path, "interchange", ("variables", "value", "controls", "interchange", "first_reach", "close"))
        if first is not None:
            first_close = _need(first, path, "interchange", ("relative_depth",), *SHARE,
                                ("variables", "value", "controls", "interchange", "first_reach", "close"))
    return {"ceilings": ceilings, "value_pairs_right": value_right, "first_reach_close": first_close,
            "h2_depth": NO_REACH if first_close is None else first_close,
            "curves": {cls: _curve(value["cells"], cls) for cls in ("close", "inside")},
            "num_layers": ic.get("num_layers"), "summary": summary}


def _cost_kind(ev: dict, path: Path, kind: str) -> dict:
    keys = ("bracket_cost_by_kind", kind)
    entry = _need(ev, path, "eval", keys)
    if isinstance(entry, dict) and "unavailable" in entry:
        raise UserError(f"{shown(path)}: '{'.'.join(keys)}' is unavailable ({str(entry['unavailable'])[:160]}); "
                        f"regenerate it with `{regenerate_hint('eval', path.parent)}`")
    flat = _need(ev, path, "eval", keys + ("flat_exact_match",), *SHARE)
    bracketed = _need(ev, path, "eval", keys + ("bracketed_exact_match",), *SHARE)
    return {"n_pairs": _need(ev, path, "eval", keys + ("n_pairs",), *COUNT), "flat_exact_match": flat,
            "bracketed_exact_match": bracketed, "cost": flat - bracketed,
            "discordant": _need(ev, path, "eval", keys + ("discordant",), *COUNT),
            "p_value": _need(ev, path, "eval", keys + ("p_value",), *SHARE),
            "p_floor": _need(ev, path, "eval", keys + ("p_floor",), *SHARE)}


def _eval_summary(ev: dict, path: Path) -> dict:
    out = {}
    for split in ("test_flat", "test_paren"):
        out[split] = _need(ev, path, "eval", ("metrics", split, "exact_match"), *SHARE)
        out[f"{split}_n"] = _need(ev, path, "eval", ("metrics", split, "n_examples"), *COUNT)
    out["precedence_changing"] = _cost_kind(ev, path, "precedence_changing")
    out["redundant"] = _cost_kind(ev, path, "redundant")
    near = {}
    for split in NEAR_TWIN_SPLITS:
        keys = ("near_twin_free", "splits", split)
        near[split] = {part: {"exact_match": _need(ev, path, "eval", keys + (part, "exact_match"),
                                                   lambda v: v is None or _is_share(v), "a number from 0 to 1 or null"),
                              "n": _need(ev, path, "eval", keys + (part, "n"), *COUNT)} for part in ("whole", "unseen")}
    out["near_twin_free"] = near
    for split in ("test_flat", "test_paren", "test_depth3"):
        for key, cell in _need(ev, path, "eval", ("exact_match_by_class", split, "by_class"),
                               lambda v: isinstance(v, dict), "a mapping").items():
            for field in ("n", "correct"):
                _need(cell, path, "eval", (field,), *COUNT, ("exact_match_by_class", split, "by_class", key))
            try:
                class_key(key)
            except (ValueError, KeyError):
                raise UserError(f"{shown(path)}: class {key[:60]!r} of exact_match_by_class.{split} is not "
                                f"operands=N|operators=X|depth=D; regenerate it with "
                                f"`{regenerate_hint('eval', path.parent)}`") from None
    out["classes"] = pooled_cells({"eval": ev})
    return out


def read_seed_files(seed_dir: Path, config: str, seed: int, kinds: tuple[str, ...]) -> dict[str, dict]:
    """{kind: the seed's KIND.json}, each read and checked: it belongs to this config and seed, was made on the whole
    files (no --limit), and summary.json, where read, says the run completed."""
    files = {}
    for kind in kinds:
        files[kind] = read_result(seed_dir / f"{kind}.json", kind)
        path = result_file(seed_dir / f"{kind}.json")
        obj = files[kind]
        if obj.get("config") not in (None, config) or obj.get("seed") not in (None, seed):
            raise UserError(f"{shown(path)}: is config {str(obj.get('config'))[:40]!r} seed {obj.get('seed')!r}, but lies "
                            f"in {config}/seed{seed}; put each seed's files in RESULTS/<config>/seed<S>")
        if obj.get("limit") is not None:
            raise UserError(f"{shown(path)}: made with --limit {obj['limit']}; the study's figures need the whole files "
                            f"(`{regenerate_hint(kind, seed_dir)}`)")
    summary = files.get("summary")
    if summary is not None and summary.get("status") != "completed":
        raise UserError(f"{shown(result_file(seed_dir / 'summary.json'))}: status {str(summary.get('status'))[:40]!r}, "
                        f"not 'completed': the run is not finished; finish it with `{STUDY_HINT}`")
    return files


def read_seed(seed_dir: Path, config: str, seed: int) -> dict:
    """One seed's eval.json, interchange.json, summary.json and metrics.jsonl, read and checked, as the figures the
    study uses."""
    files = read_seed_files(seed_dir, config, seed, ("summary", "eval", "interchange"))
    summary = files["summary"]
    ev, ic = files["eval"], files["interchange"]
    if (ev.get("epoch"), ev.get("step")) != (ic.get("epoch"), ic.get("step")):
        raise UserError(f"{shown(seed_dir)}: eval.json is of epoch {ev.get('epoch')} step {ev.get('step')}, interchange.json "
                        f"of epoch {ic.get('epoch')} step {ic.get('step')}: two checkpoints; rerun the battery "
                        f"(`{regenerate_hint('interchange', seed_dir)}`)")
    return {"seed": seed, "path": str(seed_dir), "epoch": ev.get("epoch"), "step": ev.get("step"),
            "gpu_name": summary.get("gpu_name"), "steps": summary.get("steps"),
            "curve": training_curve(seed_dir, STUDY_HINT),
            **_eval_summary(ev, result_file(seed_dir / "eval.json")),
            "interchange": _interchange_summary(ic, result_file(seed_dir / "interchange.json"))}


def read_study(results: Path, partial: bool) -> tuple[dict, dict]:
    """({scale: [seed records in the registered order]}, {scale: {found, missing}}); the incomplete-study error."""
    found = find_seeds(results)
    seeds = {scale: {"config": SCALES[scale], "found": [s for s in REGISTERED_SEEDS if s in found[scale]],
                     "missing": [s for s in REGISTERED_SEEDS if s not in found[scale]]} for scale in SCALES}
    listing = "; ".join(f"{v['config']}: {len(v['found'])} of {len(REGISTERED_SEEDS)} seeds ("
                        + (", ".join(map(str, v["found"])) or "none") + ")"
                        + (f", missing {', '.join(map(str, v['missing']))}" if v["missing"] else "")
                        for v in seeds.values())
    print(f"seeds found: {listing}")
    if not any(v["found"] for v in seeds.values()):
        raise UserError(f"--results {shown(results)}: no seed of {' or '.join(SCALES.values())} (no <config>/seed<S>/); "
                        f"make them with `{STUDY_HINT}`")
    if any(v["missing"] for v in seeds.values()) and not partial:
        raise UserError(f"the study is incomplete: {listing}; make the missing seeds with `{STUDY_HINT}`, or pass "
                        "--partial to test on the seeds there")
    runs = {scale: [read_seed(found[scale][s], SCALES[scale], s) for s in seeds[scale]["found"]] for scale in SCALES}
    return runs, seeds


# ---------------------------------------------------------------------------- checks and tests


def checks(runs: dict) -> dict:
    """The checks that must hold (docs/PREREGISTRATION.md): the ceiling on every run, the value pairs for H2."""
    ceiling, pairs = [], []
    for scale, rs in runs.items():
        for r in rs:
            controls = r["interchange"]["ceilings"]
            failed = [c for c in controls if c["check"] not in ("passed", "no pair answered right")]
            ceiling.append({"scale": scale, "seed": r["seed"], "passed": not failed, "controls": controls,
                            "failed": [f"{c['variable']}/{c['control']}: {c['check']}" for c in failed]})
            right = r["interchange"]["value_pairs_right"]
            pairs.append({"scale": scale, "seed": r["seed"], "value_pairs_right": right,
                          "kept_for_h2": right >= MIN_VALUE_PAIRS})
    return {"ceiling": ceiling, "ceiling_passed": all(c["passed"] for c in ceiling), "value_pairs": pairs,
            "min_value_pairs": MIN_VALUE_PAIRS, "left_out_of_h2": [p for p in pairs if not p["kept_for_h2"]]}


def _power(test_id: str, values: dict, simulations: int) -> tuple[float | None, str | None]:
    """(power at the effect named, the registration's method (scripts/power.py) with the measured seed spreads;
    None, or a note where H2's spread at a scale is not measured but the registration's assumed one)."""
    import numpy as np

    effect = TESTS[test_id]["effect_named"]
    rng = np.random.default_rng(0)
    if TESTS[test_id]["method"] == "one_sample_t":
        v = values[TESTS[test_id]["scale"]]
        sd = stats.mean_interval(v)["sd"]
        return (None if sd is None else stats.power_one_sample(effect, sd, rng, len(v), simulations, FIRST_THRESHOLD)), None
    a, b = values["pilot"], values["10M"]
    sd_a, sd_b = stats.mean_interval(a)["sd"], stats.mean_interval(b)["sd"]
    if TESTS[test_id]["method"] == "welch_t":
        if sd_a is None or sd_b is None:
            return None, None
        return stats.power_welch(effect, sd_a, sd_b, rng, len(a), len(b), simulations, FIRST_THRESHOLD), None
    if not a or not b:
        return None, None
    tied = [s for s, v in (("pilot", a), ("10M", b)) if len(set(v)) == 1]
    if tied:
        sd_a, sd_b = (H2_ASSUMED_SD if "pilot" in tied else sd_a), (H2_ASSUMED_SD if "10M" in tied else sd_b)
    note = (f"at the registration's assumed seed sd {H2_ASSUMED_SD:g} for the {' and the '.join(tied)}, whose seeds all "
            "lie at one value (a spread of 0 measures nothing)") if tied else None
    return stats.power_permutation(effect, sd_a or 0.0, sd_b or 0.0, rng, len(a), len(b), max(1, simulations // 10),
                                   FIRST_THRESHOLD)[0], note


def _signed(x: float) -> str:
    """+0.1234; a value that rounds to 0 is +0.0000 whatever its sign (a bisection's -1e-12 says no direction)."""
    return f"{0.0 if abs(x) < 5e-5 else x:+.4f}"


def _ci(ci) -> str:
    lo = "-inf" if not ci or ci[0] is None else _signed(ci[0])
    hi = "+inf" if not ci or ci[1] is None else _signed(ci[1])
    return f"[{lo}, {hi}]"


def verdict(test: dict, reach: dict | None = None) -> str:
    """The registration's words for a test's outcome; never "no difference"."""
    if not test["computed"]:
        return f"not computed: {test['why']}"
    est = f"{test['estimate']:+.4f} {_ci(test['ci95'])}"
    power = "" if test["power"] is None else (f"; power {test['power']:.2f} at the effect named {test['effect_named']:g}"
                                              + (f", {test['power_basis']}" if test.get("power_basis") else ""))
    if test["p_floor"] * FAMILY_SIZE >= ALPHA:
        return (f"cannot decide: its floor {test['p_floor']:.3g} x {FAMILY_SIZE} = {test['p_floor'] * FAMILY_SIZE:.3g} is "
                f"not below {ALPHA:g} with these seeds (estimate {est})")
    hyp, sig = test["hypothesis"], test["significant"]
    if hyp == "H1":
        if sig:
            return (f"significant, 10M above the pilot: scale matters once data suffice (10M - pilot = {est})"
                    if test["estimate"] > 0 else f"significant, 10M below the pilot: scale hurts (10M - pilot = {est})")
        return f"not significant: the difference is not shown at this power (10M - pilot = {est}{power})"
    if hyp == "H2":
        text = (f"significant: the bracket's value settles at the `)` at a different relative depth at 10M (moves; "
                f"10M - pilot = {est})" if sig else
                f"not significant: a difference in relative depth is not shown at this power (10M - pilot = {est}{power})")
        reaching = {s: r for s, r in (reach or {}).items()}
        if not sig and reaching and all(r["reached"] for r in reaching.values()):
            text += "; both scales reach 0.9: it persists at a depth these seeds do not tell apart"
        for scale, r in reaching.items():
            if not r["reached"]:
                text += f"; no seed of the {scale} reaches 0.9: the {scale} does not carry V at the `)` (vanishes there)"
        return text
    scale = TESTS[test["id"]]["scale"]
    if sig:
        if test["estimate"] > 0:
            return (f"significant positive cost: brackets that change the order of evaluation cost the {scale} accuracy "
                    f"(cost = {est})")
        return f"significant negative cost: the {scale} is more accurate on the precedence-changing twins (cost = {est})"
    return f"not significant: no cost shown at this power (cost = {est}{power})"


def primary_tests(runs: dict, check: dict, simulations: int) -> tuple[list[dict], dict]:
    """The five tests, Holm over the family of five (a test that cannot be computed counts as p = 1 there)."""
    kept = {(p["scale"], p["seed"]) for p in check["value_pairs"] if p["kept_for_h2"]}
    values = {
        "H1-flat": {s: [r["test_flat"] for r in rs] for s, rs in runs.items()},
        "H1-paren": {s: [r["test_paren"] for r in rs] for s, rs in runs.items()},
        "H2": {s: [r["interchange"]["h2_depth"] for r in rs if (s, r["seed"]) in kept] for s, rs in runs.items()},
        "H3-pilot": {s: [r["precedence_changing"]["cost"] for r in rs] for s, rs in runs.items()},
        "H3-10M": {s: [r["precedence_changing"]["cost"] for r in rs] for s, rs in runs.items()},
    }
    seeds_used = {"H2": {s: [r["seed"] for r in rs if (s, r["seed"]) in kept] for s, rs in runs.items()}}
    tests = []
    for test_id, spec in TESTS.items():
        v = values[test_id]
        used = seeds_used.get(test_id, {s: [r["seed"] for r in rs] for s, rs in runs.items()})
        entry = {"id": test_id, **spec, "method_text": METHODS[spec["method"]], "family": FAMILY,
                 "seeds": used if "scale" not in spec else {spec["scale"]: used[spec["scale"]]},
                 "values": v if "scale" not in spec else {spec["scale"]: v[spec["scale"]]}, "computed": False}
        try:
            if spec["method"] == "welch_t":
                result = stats.welch_t(v["pilot"], v["10M"])
            elif spec["method"] == "permutation_exact":
                if not v["pilot"] or not v["10M"]:
                    raise ValueError("needs a seed or more at each scale")
                result = stats.permutation_test(v["pilot"], v["10M"])
            else:
                result = stats.one_sample_t(v[spec["scale"]])
        except ValueError as err:
            entry["why"] = str(err)
        else:
            entry.update({k: result[k] for k in ("estimate", "ci95", "p_value", "p_floor") if k in result},
                         computed=True, details={k: w for k, w in result.items() if k not in ("estimate", "ci95", "p_value")})
        entry["spread"] = {s: stats.mean_interval(x) for s, x in entry["values"].items()}
        tests.append(entry)
    adjusted = stats.holm([t["p_value"] if t["computed"] else 1.0 for t in tests])
    reach = {s: {"reached": any(d < NO_REACH for d in values["H2"][s]), "seeds": len(values["H2"][s]),
                 "seeds_reaching": sum(d < NO_REACH for d in values["H2"][s])} for s in runs}
    for t, adj in zip(tests, adjusted):
        t["p_adjusted"] = adj if t["computed"] else None
        t["significant"] = bool(t["computed"] and adj < ALPHA)
        t["p_floor_x_family"] = t["p_floor"] * FAMILY_SIZE if t["computed"] else None
        t["power"], t["power_basis"] = _power(t["id"], values[t["id"]], simulations) if t["computed"] else (None, None)
        t["verdict"] = verdict(t, reach if t["id"] == "H2" else None)
    family = {"name": FAMILY, "size": FAMILY_SIZE, "correction": "holm", "alpha": ALPHA, "members": list(TESTS),
              "first_threshold": FIRST_THRESHOLD, "significant": sum(t["significant"] for t in tests),
              "not_computed": [t["id"] for t in tests if not t["computed"]], "h2_reach": reach,
              "power_method": (f"normal seeds with the measured seed sd at each scale (H2 at a scale whose seeds all lie "
                               f"at one value: the registration's assumed sd {H2_ASSUMED_SD:g}), the seeds there, the effect named; "
                               f"share of {SIMULATIONS:,} simulated studies (the permutation test: a tenth) with p below "
                               f"Holm's first threshold {FIRST_THRESHOLD:g} (a lower bound under Holm); scripts/power.py")}
    return tests, family


# ---------------------------------------------------------------------------- exploratory


def _over(values) -> dict:
    return stats.mean_interval([v for v in values if v is not None])


def exploratory(runs: dict) -> dict:
    near = {s: {split: {part: _over(r["near_twin_free"][split][part]["exact_match"] for r in rs)
                        for part in ("whole", "unseen")}
                | {"near_twins_seen": _over(r["near_twin_free"][split]["whole"]["n"] - r["near_twin_free"][split]["unseen"]["n"]
                                            for r in rs)}
                for split in NEAR_TWIN_SPLITS} for s, rs in runs.items()}
    cost = {s: {"redundant": _over(r["redundant"]["cost"] for r in rs),
                "precedence_changing": _over(r["precedence_changing"]["cost"] for r in rs),
                "precedence_minus_redundant": _over(r["precedence_changing"]["cost"] - r["redundant"]["cost"] for r in rs)}
            for s, rs in runs.items()}
    iia = {}
    for s, rs in runs.items():
        keys = list(dict.fromkeys(k for r in rs for k in r["interchange"]["summary"]))
        iia[s] = {}
        for k in keys:
            rows = [r["interchange"]["summary"][k] for r in rs if k in r["interchange"]["summary"]]
            first = [row["first_reach"] for row in rows]
            iia[s][k] = {"variable": rows[0]["variable"], "control": rows[0]["control"],
                         "position_class": rows[0]["position_class"], "figure": rows[0]["figure"], "seeds": len(rows),
                         "seeds_reaching": sum(f is not None for f in first), "first_reach": _over(first),
                         "peak": _over(row["peak"] for row in rows), "lowest": _over(row["lowest"] for row in rows)}
    classes = {s: class_cells(rs) for s, rs in runs.items()}
    targets = {s: {split: {"target": target, **{part: near[s][split][part] for part in ("whole", "unseen")},
                           "met": {part: near[s][split][part]["mean"] is not None
                                   and near[s][split][part]["mean"] >= target for part in ("whole", "unseen")}}
                   for split, target in TARGETS[s].items()} for s in runs if s in TARGETS}
    curves = {s: [{"seed": r["seed"], "gpu_name": r["gpu_name"], **curve_summary(r["curve"])} for r in rs]
              for s, rs in runs.items()}
    return {"near_twin_free": near, "targets": targets, "bracket_cost": cost, "iia": iia,
            "exact_match_by_class": classes, "training_curves": curves, "h1_permutation": h1_permutation(runs)}


def h1_permutation(runs: dict) -> dict:
    """H1's statistics under the exact permutation test H2 uses, which assumes no normal spread of the seeds
    (a scale whose seeds learn at very different times is far from normal); outside the family. {} without both scales."""
    if not all(runs.get(s) for s in SCALES):
        return {}
    return {split: {k: v for k, v in stats.permutation_test([r[split] for r in runs["pilot"]],
                                                            [r[split] for r in runs["10M"]]).items()
                    if k in ("estimate", "ci95", "p_value", "p_floor", "p_floor_data", "splits")}
            for split in ("test_flat", "test_paren")}


def class_cells(rs: list[dict]) -> dict:
    """exact_match by class (test_flat, test_paren and test_depth3 pooled per seed), mean over seeds [95% interval]."""
    keys = sorted({k for r in rs for k in r["classes"]}, key=lambda k: (class_key(k)[0], class_key(k)[1] != "+-",
                                                                       class_key(k)[2]))
    return {k: {"n": next(r["classes"][k]["n"] for r in rs if k in r["classes"]),
                **_over(r["classes"][k]["exact_match"] for r in rs if k in r["classes"])} for k in keys}


# ---------------------------------------------------------------------------- figures


def _title(text: str, label: str) -> str:
    return f"{text} ({label})" if label else text


def _figure_title(text: str, label: str, width: int) -> str:
    """_title in lines of at most `width` characters, so that a figure's title is never cut at its edges."""
    return "\n".join(textwrap.wrap(_title(text, label), width))


@plain_text()
def iia_figure(runs: dict, check: dict, label: str) -> bytes:
    plt = pyplot()
    kept = {(p["scale"], p["seed"]) for p in check["value_pairs"] if p["kept_for_h2"]}
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), sharey=True)
    for ax, cls, name in zip(axes, ("close", "inside"), ("at the `)`", "inside the bracket")):
        for i, (scale, rs) in enumerate(runs.items()):
            colour = f"C{i}"
            means: dict[float, list[float]] = {}
            for r in rs:
                pts = r["interchange"]["curves"][cls]
                if not pts:
                    continue
                used = (scale, r["seed"]) in kept
                ax.plot(*zip(*pts), color=colour, lw=0.7, alpha=0.45, ls="-" if used else ":")
                for x, y in pts if used else ():
                    means.setdefault(x, []).append(y)
            if means:
                xs = sorted(means)
                n = max(len(v) for v in means.values())
                ax.plot(xs, [sum(means[x]) / len(means[x]) for x in xs], color=colour, lw=2.6, marker="o", ms=4,
                        label=f"{scale}: mean of {n} seed{'s' if n > 1 else ''}")
        ax.axhline(IIA_REACH, color="grey", ls="--", lw=0.8)
        ax.set_xlim(-0.03, 1.0)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("relative depth (0 = embedding, (l + 1) / L = after block l)", fontsize=8)
        ax.set_title(f"V {name}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("IIA, value interchange pairs answered right")
    fig.suptitle(_figure_title("IIA for V against relative depth, residual stream: seeds thin (dotted: fewer than "
                               f"{MIN_VALUE_PAIRS} pairs, left out of the mean), mean thick; dashed: 0.9", label, 120),
                 fontsize=8)
    fig.tight_layout()
    return plain_png(fig, dpi=100)


@plain_text()
def class_figure(classes: dict, label: str) -> bytes:
    plt = pyplot()
    keys = sorted({k for cells in classes.values() for k in cells},
                  key=lambda k: (class_key(k)[0], class_key(k)[1] != "+-", class_key(k)[2]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(keys) + 2), 4.0))
    width = 0.8 / max(1, len(classes))
    for i, (scale, cells) in enumerate(classes.items()):
        xs, ys, err = [], [], [[], []]
        for j, k in enumerate(keys):
            c = cells.get(k)
            if not c or c["mean"] is None:
                continue
            xs.append(j + (i - (len(classes) - 1) / 2) * width)
            ys.append(c["mean"])
            lo, hi = c["ci95"] if c["ci95"] else (c["mean"], c["mean"])
            err[0].append(c["mean"] - lo)
            err[1].append(hi - c["mean"])
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, capsize=2, color=f"C{i}", label=scale)
    labels = [f"{o} {'+-' if op == '+-' else '*'} d{d}" for o, op, d in (class_key(k) for k in keys)]
    ax.set_xticks(range(len(keys)), labels, rotation=60, fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("exact_match (greedy)")
    ax.set_xlabel("class: operands, operators (+- only, or with *), depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_figure_title("exact_match by class, test_flat + test_paren + test_depth3 pooled per seed; mean over "
                               "seeds, bars = 95% t interval", label, 160), fontsize=8)
    fig.tight_layout()
    return plain_png(fig, dpi=100)


@plain_text()
def cost_figure(runs: dict, cost: dict, label: str) -> bytes:
    plt = pyplot()
    fig, (ax, by_skill) = plt.subplots(1, 2, figsize=(10.0, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    kinds = (("redundant", "value-preserving"), ("precedence_changing", "precedence-changing"))
    ticks, names = [], []
    for i, scale in enumerate(runs):
        for j, (kind, name) in enumerate(kinds):
            x = i * 3 + j
            ticks.append(x)
            names.append(f"{scale}\n{name}")
            pts = [r[kind]["cost"] for r in runs[scale]]
            jitter = [x - 0.15 + 0.3 * k / max(1, len(pts) - 1) for k in range(len(pts))]
            ax.plot(jitter, pts, "o", ms=3, color=f"C{j}", alpha=0.6)
            m = cost[scale][kind]
            if m["mean"] is not None:
                lo, hi = m["ci95"] if m["ci95"] else (m["mean"], m["mean"])
                ax.errorbar([x + 0.3], [m["mean"]], yerr=[[m["mean"] - lo], [hi - m["mean"]]], fmt="s", ms=6,
                            capsize=4, color="black")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(ticks, names, fontsize=7)
    ax.set_ylabel("cost: exact_match flat minus bracketed")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(_figure_title("the cost of brackets, per seed (points) and mean with 95% t interval (squares)", label, 80),
                 fontsize=8)
    # beside it, each seed's precedence-changing cost against how well it does without brackets: a seed that has
    # not learnt the flat expressions yet has little accuracy for brackets to cost (a description, not a test)
    for i, scale in enumerate(runs):
        by_skill.plot([r["test_flat"] for r in runs[scale]], [r["precedence_changing"]["cost"] for r in runs[scale]],
                      "o^"[i % 2], ms=5, color=f"C{i + 2}", label=scale)
    by_skill.axhline(0.0, color="grey", lw=0.8)
    by_skill.set_xlabel("test_flat exact_match")
    by_skill.set_ylabel("precedence-changing cost")
    by_skill.grid(alpha=0.3)
    by_skill.legend(fontsize=7)
    by_skill.set_title(_figure_title("per seed, against test_flat (exploratory)", label, 60), fontsize=8)
    fig.tight_layout()
    return plain_png(fig, dpi=100)


# ---------------------------------------------------------------------------- Markdown


def _num(v, fmt: str = ".4f") -> str:
    return "—" if v is None else format(v, fmt)


def _mean_ci(m: dict, fmt: str = ".4f") -> str:
    if not m or m.get("mean") is None:
        return "—"
    ci = m.get("ci95")
    return format(m["mean"], fmt) + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else " (one seed)")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""])


def markdown(rep: dict) -> str:
    label = rep["label"]

    def head(text: str) -> str:
        return f"### {_title(text, label)}"

    reg = rep["registration"]
    md = [f"# {_title('The preregistered primary tests', label)}", "",
          f"Generated by `python -m src.report.study` from `{rep['results']}`; every number is in `primary.json` "
          f"(schema `{SCHEMA}`). The tests are those of [{REGISTRATION}]({reg['link']}) as committed in "
          f"`{reg['commit']}` (`git show {reg['commit'][:12]}:{REGISTRATION}`)."
          + (f" {reg['note']}" if reg.get("note") else ""), ""]
    chk = rep["checks"]
    for p in chk["left_out_of_h2"]:
        md += [(f"> **Check: {SCALES[p['scale']]} seed {p['seed']} answered {p['value_pairs_right']} value interchange pairs "
               f"right unpatched, fewer than {MIN_VALUE_PAIRS}: left out of H2** (its floor recomputed below)."), ""]
    if label:
        md += [f"> **Partial: {rep['n_seeds']} seeds of {len(REGISTERED_SEEDS) * len(SCALES)}.** Seeds missing: "
               + "; ".join(f"{v['config']} {', '.join(map(str, v['missing']))}" for v in rep["seeds"].values() if v["missing"])
               + ". No verdict below is the study's until every seed is in.", ""]
    md += [head("Seeds read"), ""]
    md += _table(["scale", "config", "seeds read", "missing"],
                 [[s, f"`{v['config']}`", f"{len(v['found'])}: " + (", ".join(map(str, v["found"])) or "none"),
                   ", ".join(map(str, v["missing"])) or "none"] for s, v in rep["seeds"].items()])
    md += [head("Primary tests (family preregistered_primary: 5 tests, Holm, alpha 0.05)"), "",
           ("Estimates in absolute units: H1 10M minus pilot (exact_match), H2 10M minus pilot (relative depth), "
           "H3 the scale's mean cost (exact_match on test_flat minus on the precedence-changing twins). Power: at the "
           "effect named, from the measured seed spreads, at Holm's first threshold 0.01 (a lower bound); for H2 at a "
           "scale whose seeds all lie at one value (all at d = 1 where none reaches 0.9), the registration's assumed "
           f"seed sd {H2_ASSUMED_SD:g} of the depth instead (\"sd assumed\"), since a spread of 0 there comes from the "
           "censoring, not from the depth."), ""]
    rows = []
    for t in rep["tests"]:
        seeds = " / ".join(f"{s} {len(v)}" for s, v in t["seeds"].items())
        rows.append([t["id"], METHODS[t["method"]], seeds,
                     f"{t['estimate']:+.4f} {_ci(t['ci95'])}" if t["computed"] else "—",
                     _num(t.get("p_value"), ".3g"), _num(t["p_adjusted"], ".3g"), _num(t.get("p_floor"), ".3g"),
                     _num(t["p_floor_x_family"], ".3g"), f"{t['effect_named']:g}", _num(t["power"], ".2f") + (" (sd assumed)" if t.get("power_basis") else ""),
                     "yes" if t["significant"] else "no"])
    md += _table(["test", "method", "seeds", "estimate [95% CI]", "p", "p (Holm)", "floor", "floor x 5", "effect named",
                  "power", "significant"], rows)
    md += ["Verdicts:", ""] + [f"- **{t['id']}**: {t['verdict']}." for t in rep["tests"]] + [""]
    h2 = next(t for t in rep["tests"] if t["id"] == "H2")
    if h2["computed"]:
        d = h2["details"]
        md += [(f"H2's permutation test runs over {d['splits']:,} splits of its {d['n_a'] + d['n_b']} seeds; floor "
               f"{d['p_floor']:.3g} on values without ties, {d['p_floor_data']:.3g} with these values' ties; its interval "
               "inverts the test."), ""]
    md += [head("Per seed: the statistics of the tests"), ""]
    rows = []
    left_out = {(p["scale"], p["seed"]) for p in chk["left_out_of_h2"]}
    for scale, rs in rep["runs"].items():
        for r in rs:
            ic = r["interchange"]
            depth = _num(ic["first_reach_close"], ".3f") if ic["first_reach_close"] is not None else "none (1)"
            rows.append([scale, r["seed"], f"{r['test_flat']:.4f}", f"{r['test_paren']:.4f}",
                         depth + (" (left out of H2)" if (scale, r["seed"]) in left_out else ""),
                         ic["value_pairs_right"], f"{r['precedence_changing']['cost']:+.4f}",
                         (f"{r['precedence_changing']['p_value']:.3g} (d = {r['precedence_changing']['discordant']}, floor "
                         f"{r['precedence_changing']['p_floor']:.3g})")])
    md += _table(["scale", "seed", "test_flat", "test_paren", "H2 depth (first reach at `)`)", "value pairs right",
                  "H3 cost", "its McNemar p (descriptive, outside the family)"], rows)
    md += [head("Checks that must hold"), ""]
    rows = [[c["scale"], c["seed"], "passed" if c["passed"] else "**FAILED: " + "; ".join(c["failed"]) + "**",
             p["value_pairs_right"], "yes" if p["kept_for_h2"] else f"**no (< {MIN_VALUE_PAIRS})**"]
            for c, p in zip(chk["ceiling"], chk["value_pairs"])]
    md += _table(["scale", "seed", "ceiling (every control)", "value pairs right", "in H2"], rows)
    md += ["## Deviations from the registration", ""]
    md += ([rep["deviations"]["text"].rstrip(), ""] if rep["deviations"]["text"] else ["none recorded", ""])
    md += ["## Exploratory (not part of the preregistered family)", "",
           "Means over seeds with 95% t intervals; no test here enters the family or states a finding on its own.", ""]
    ex = rep["exploratory"]
    md += [head("exact_match on the near-twin-free subsets"), ""]
    rows = [[s, split, _mean_ci(e["whole"]), _mean_ci(e["unseen"]), _num(e["near_twins_seen"]["mean"], ".1f")]
            for s, splits in ex["near_twin_free"].items() for split, e in splits.items()]
    md += _table(["scale", "split", "whole file", "without near twins of the training set", "near twins set apart"], rows)
    md += [head("The schedule's targets (exact_match, mean over seeds)"), ""]
    rows = [[s, split, f"{e['target']:.2f}", _mean_ci(e["whole"]), _num(None if e["whole"]["mean"] is None
                                                                       else e["whole"]["mean"] - e["target"], "+.4f"),
             _mean_ci(e["unseen"]), _num(None if e["unseen"]["mean"] is None else e["unseen"]["mean"] - e["target"], "+.4f"),
             "yes" if e["met"]["whole"] and e["met"]["unseen"] else "no"]
            for s, splits in ex["targets"].items() for split, e in splits.items()]
    md += _table(["scale", "split", "target", "whole file", "minus target", "without near twins", "minus target",
                  "mean reaches it (both)"], rows)
    md += [head("The cost of brackets by kind (exact_match flat minus bracketed)"), ""]
    rows = [[s, _mean_ci(c["redundant"]), _mean_ci(c["precedence_changing"]), _mean_ci(c["precedence_minus_redundant"])]
            for s, c in ex["bracket_cost"].items()]
    md += _table(["scale", "value-preserving (matched pairs)", "precedence-changing (H3's statistic)",
                  "precedence-changing minus value-preserving"], rows)
    md += [head("IIA on the residual stream, by variable, control and position class"), "",
           ("Per seed over the residual sites (embedding and block outputs): the peak IIA, and the relative depth where "
            "it first reaches 0.9; for the value-preserving control the figure is kept_base, and its lowest over the "
            "sites is shown (a site that carries the digits rather than the value lowers it). Then mean over seeds. "
            f"Position classes {', '.join(IIA_TABLE_CLASSES)} here; every class is in primary.json."), ""]
    rows = []
    for s, cells in ex["iia"].items():
        for e in cells.values():
            if e["position_class"] not in IIA_TABLE_CLASSES:
                continue
            kept = e["control"] == "value_preserving"
            rows.append([s, e["variable"], e["control"], e["position_class"],
                         "kept_base, lowest" if kept else "IIA, peak", e["seeds"],
                         _mean_ci(e["lowest"] if kept else e["peak"], ".3f"),
                         "—" if kept else f"{e['seeds_reaching']} of {e['seeds']}",
                         "—" if kept else _mean_ci(e["first_reach"], ".3f")])
    md += _table(["scale", "variable", "control", "position", "figure", "seeds", "mean [95% CI]", "seeds reaching 0.9",
                  "first reach depth (seeds reaching)"], rows)
    md += [head("exact_match by class"), ""]
    keys = list(dict.fromkeys(k for cells in ex["exact_match_by_class"].values() for k in cells))
    rows = [[*class_key(k), *[_mean_ci(ex["exact_match_by_class"][s].get(k), ".3f") for s in ex["exact_match_by_class"]]]
            for k in keys]
    md += _table(["operands", "operators", "depth", *ex["exact_match_by_class"]], rows)
    if ex["h1_permutation"]:
        md += [head("H1's difference without assuming normal seeds"), "",
               ("H1's registered test is Welch's t, which leans on seeds spread normally at each scale; seeds that "
                "learn at very different times (training curves below) need not be. The same difference under the "
                "exact permutation test of H2, which assumes no shape: outside the family, a check of H1's test, not "
                "a test of its own."), ""]
        rows = [[split, f"{e['estimate']:+.4f} {_ci(e['ci95'])}", f"{e['p_value']:.3g}", f"{e['p_floor']:.3g}",
                 f"{e['splits']:,}"] for split, e in ex["h1_permutation"].items()]
        md += _table(["statistic (10M - pilot)", "estimate [95% CI, the test inverted]", "p", "floor", "splits"], rows)
    md += [head("Training curves"), "",
           ("Per seed, from its metrics.jsonl: the last epoch's training loss and validation exact_match (200 "
            "items), the best validation epoch, and the epoch (from epoch 3 on) whose training loss fell most below "
            "the epoch before. A steepest fall at the last epoch means the run was still dropping when it stopped "
            "(training_curves.png)."), ""]
    rows = [[s, c["seed"], c["gpu_name"] or "—", c["epochs"], _num(c["train_loss_last"]), _num(c["val_last"], ".3f"),
             "—" if c["val_best_epoch"] is None else f"{c['val_best']:.3f} (epoch {c['val_best_epoch']})",
             "—" if c["steepest_fall"] is None else f"epoch {c['steepest_fall']['epoch']} "
                                                    f"(-{c['steepest_fall']['fall']:.4f})"]
            for s, cs in ex["training_curves"].items() for c in cs]
    md += _table(["scale", "seed", "card", "epochs", "training loss, last", "validation, last", "validation, best",
                  "steepest fall of training loss"], rows)
    md += ["## Figures", ""] + [f"![{name}]({name})" for name in rep["figures"]] + [""]
    return "\n".join(md)


# ---------------------------------------------------------------------------- the command


def registration_commit(flag: str | None) -> tuple[str, str | None]:
    """(the preregistration's commit, a note or None): --preregistration-commit, else git's last commit of the file."""
    if flag:
        if not re.fullmatch(r"[0-9a-f]{7,40}", flag):
            raise UserError(f"--preregistration-commit {flag[:60]!r}: not a commit hash (7 to 40 hex digits)")
        return flag, None
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%H", "--", REGISTRATION],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        done = None
    commit = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise UserError(f"the commit of {REGISTRATION} could not be read from git (no git, or not a checkout); pass "
                        "--preregistration-commit HASH")
    changed = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "--quiet", commit, "--", REGISTRATION],
                             capture_output=True, timeout=30, check=False).returncode
    note = f"The working copy of {REGISTRATION} differs from that commit." if changed == 1 else None
    return commit, note


def deviations(results: Path) -> dict:
    path = results / "DEVIATIONS.md"
    if not path.is_file():
        return {"file": None, "text": None}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{shown(path)}: unreadable ({str(err)[:120]}); write it as UTF-8 text") from None
    return {"file": str(path), "text": text if text.strip() else None}


def build(args) -> dict:
    out = check_output_dir(str(args.out), "--out")
    commit, note = registration_commit(args.preregistration_commit)
    runs, seeds = read_study(args.results, args.partial)
    check = checks(runs)
    if not check["ceiling_passed"]:
        failed = [c for c in check["ceiling"] if not c["passed"]]
        raise UserError("CHECK FAILED, nothing written: the all-position embedding patch (interchange.json ceiling.check) "
                        "did not pass on " + "; ".join(f"{SCALES[c['scale']]} seed {c['seed']} ({', '.join(c['failed'])})"
                                                       for c in failed)
                        + f"; the primary tests are not read ({REGISTRATION}, checks that must hold)")
    n_seeds = sum(len(rs) for rs in runs.values())
    partial = any(v["missing"] for v in seeds.values())
    label = (f"partial: {n_seeds} seeds, " + ", ".join(f"{v['config']} {len(v['found'])}" for v in seeds.values())
             if partial else "")
    tests, family = primary_tests(runs, check, args.simulations)
    ex = exploratory(runs)
    link = Path(os.path.relpath(REPO_ROOT / REGISTRATION, out)).as_posix()
    rep = {"schema": SCHEMA, "results": str(args.results), "partial": partial, "label": label, "n_seeds": n_seeds,
           "registration": {"file": REGISTRATION, "commit": commit, "link": link, "note": note,
                            "source": "--preregistration-commit" if args.preregistration_commit else "git"},
           "registered_seeds": list(REGISTERED_SEEDS), "seeds": seeds, "family": family, "tests": tests,
           "checks": check, "simulations": args.simulations, "deviations": deviations(args.results),
           "runs": {s: [{k: v for k, v in r.items() if k not in ("classes",)} | {"interchange": {
               k: v for k, v in r["interchange"].items() if k != "summary"}} for r in rs] for s, rs in runs.items()},
           "exploratory": ex}
    pngs = {"iia_depth.png": iia_figure(runs, check, label),
            "class_exact_match.png": class_figure(ex["exact_match_by_class"], label),
            "bracket_cost.png": cost_figure(runs, ex["bracket_cost"], label),
            "training_curves.png": curves_figure(
                {s: [(r["seed"], r["curve"]) for r in rs] for s, rs in runs.items()},
                _figure_title("training loss and validation exact_match per epoch, one line per seed", label, 120))}
    rep["figures"] = list(pngs)
    text = markdown(rep)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        atomic_write_bytes(out / name, png)
    atomic_write_text(out / "primary.json", json.dumps(rep, indent=1) + "\n")
    atomic_write_text(out / "PRIMARY.md", text)
    return rep


def parse_args(argv):
    p = ArgumentParser.from_doc("python -m src.report.study", __doc__)
    p.add_argument("--results", type=path_arg, default=Path("results/study"),
                   help="the study's results: RESULTS/<config>/seed<S>/ (default: %(default)s)")
    p.add_argument("--out", type=path_arg, default=Path("results/study"),
                   help="directory for PRIMARY.md, primary.json and the figures (default: %(default)s)")
    p.add_argument("--partial", action="store_true",
                   help="test on the seeds there when a scale has fewer than its 8 registered seeds (every table and "
                   "figure then says 'partial: n seeds'); without it an incomplete study is an error")
    p.add_argument("--preregistration-commit", default=None, metavar="HASH",
                   help=f"the commit of {REGISTRATION} to cite (default: git's last commit of the file)")
    p.add_argument("--simulations", type=int_in(10, 10**6), default=SIMULATIONS,
                   help="simulated studies for each t-test's power, a tenth of them for the permutation test's "
                   "(default: %(default)s, as scripts/power.py)")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rep = build(args)
    for t in rep["tests"]:
        print(f"{t['id']}: {t['verdict']}")
    print(f"wrote {shown(args.out / 'PRIMARY.md')}, primary.json and {', '.join(rep['figures'])}"
          + (f" ({rep['label']})" if rep["label"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
