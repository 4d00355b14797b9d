"""Role matching across scales (src.analysis.rolematch) on made-up roles.json dicts: a 2-seed pilot (4 layers)
and a 2-seed 10M (6 layers) built so that each verdict occurs, then the edge cases of the verdict
rule, the reading of ablation.json, and the shipped results end to end."""

import json
from pathlib import Path

import pytest

from src.analysis import run_all as battery, rolematch, roles
from src.errors import run_main
from src.rundir.results import read_result, result_file
from src.analysis.rolematch import (LARGE, PILOT, VERDICTS, HeadEffect, RunEvidence, direction, effects_from_ablation,
                           match_across_scales, role_verdict, rolematch_markdown)
from tests.test_probe import write_tiny_run
from tests.tiny import drop_limit_tag

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE = "zero/test_paren_matched/answer_loss"


def made_up_roles(config: str, seed: int, num_layers: int, shares: dict[str, dict[str, float]]) -> dict:
    """A roles/1 dict whose heads have the given combined shares (other roles 0.05; share_distinct = share)."""
    heads = []
    for label, given in shares.items():
        layer, head = int(label[1]), int(label[4])
        combined = {role: given.get(role, 0.05) for role in roles.ROLES}
        passing, primary = roles.head_roles(combined)
        heads.append({"head": label, "layer": layer, "head_index": head, "relative_layer": layer / (num_layers - 1),
                      "combined": combined, "combined_distinct": dict(combined), "roles": passing,
                      "primary_role": primary})
    queries = {role: {"n_queries": 100, "uniform": 0.1, "n_distinct": 80} for role in roles.ROLES}
    return {"schema": roles.SCHEMA, "run": f"runs/{config}_seed{seed}", "config": config, "seed": seed,
            "num_layers": num_layers, "num_heads": 6, "threshold": roles.ROLE_THRESHOLD,
            "combined_queries": queries, "heads": heads}


def evidence(config: str, seed: int, num_layers: int, baseline: float,
             heads: dict[str, tuple[dict[str, float], tuple[float, float, float]]]) -> RunEvidence:
    """heads: label -> (role shares, (relative estimate, relative lo, relative hi)); the effects are stored
    in the metric's units (times the baseline), as ablation.json holds them."""
    run = made_up_roles(config, seed, num_layers, {label: s for label, (s, _) in heads.items()})
    effects = {label: HeadEffect(e * baseline, (lo * baseline, hi * baseline), baseline, SOURCE)
               for label, (_, (e, lo, hi)) in heads.items()}
    return RunEvidence(run, effects)


NULL = (0.0, -0.01, 0.01)

# matching_paren  persists: every seed, every scale, at relative depth 2/3 (10M: 0.6 and 0.8), effects ~ +5%
# previous_token  moves: the pilot's heads sit in the first layer, the 10M ones at 0.4 and 1.0
# operator        vanishes: held in pilot seed 1 only, in no 10M seed
# equals          not held in the pilot (though held at 10M)
PILOT_RUNS = [
    evidence("pilot", 1, 4, 1.7, {
        "L2-H3": ({"matching_paren": 0.80}, (0.05, 0.03, 0.07)),
        "L0-H1": ({"previous_token": 0.90}, (0.02, 0.01, 0.03)),
        "L1-H0": ({"operator": 0.55}, (0.01, 0.00, 0.02)),
        "L3-H2": ({"equals": 0.30}, NULL)}),
    evidence("pilot", 2, 4, 1.6, {
        "L2-H0": ({"matching_paren": 0.70}, (0.04, 0.02, 0.06)),
        "L0-H3": ({"previous_token": 0.85}, (0.03, 0.02, 0.04)),
        "L1-H2": ({"operator": 0.35}, NULL),
        "L3-H1": ({"equals": 0.20}, NULL)}),
]
LARGE_RUNS = [
    evidence("scale_10m", 1, 6, 0.5, {
        "L4-H5": ({"matching_paren": 0.60}, (0.06, 0.04, 0.08)),
        "L2-H3": ({"previous_token": 0.95}, (0.025, 0.015, 0.035)),  # the pilot's paren head's label: no matter
        "L1-H1": ({"operator": 0.30}, NULL),
        "L5-H0": ({"equals": 0.70}, (0.10, 0.05, 0.15))}),
    evidence("scale_10m", 2, 6, 0.4, {
        "L3-H1": ({"matching_paren": 0.50}, (0.03, 0.01, 0.05)),
        "L5-H2": ({"previous_token": 0.90}, (0.02, 0.01, 0.03)),
        "L2-H4": ({"operator": 0.38}, NULL),
        "L5-H3": ({"equals": 0.65}, (0.08, 0.04, 0.12))}),
]


def cells_of(result: dict, role: str, scale: str) -> list[dict]:
    return [c for c in result["cells"] if c["role"] == role and c["scale"] == scale]


def test_each_verdict_on_made_up_roles():
    result = match_across_scales(PILOT_RUNS, LARGE_RUNS)
    verdicts = {role: v["verdict"] for role, v in result["verdicts"].items()}
    assert verdicts == {"matching_paren": "persists", "previous_token": "moves", "operator": "vanishes",
                        "equals": "not held in the pilot"}
    assert set(verdicts.values()) == set(VERDICTS)
    assert result["depth_tolerance"] == pytest.approx(1 / 6) and result["effect_source"] == SOURCE
    prev = result["verdicts"]["previous_token"]
    assert prev["reasons"] == ["10M seed 1: L2-H3 at relative layer 0.40, outside the pilot's 0.00-0.00 +/- 0.17",
                               "10M seed 2: L5-H2 at relative layer 1.00, outside the pilot's 0.00-0.00 +/- 0.17"]
    op = result["verdicts"]["operator"]
    assert (op["pilot_seeds_holding"], op["pilot_seeds"], op["large_seeds_holding"]) == (1, 2, 0)
    assert result["verdicts"]["equals"]["large_seeds_holding"] == 2


def test_table_is_role_by_scale_by_seed_with_heads_matched_by_role():
    result = match_across_scales(PILOT_RUNS, LARGE_RUNS)
    assert len(result["cells"]) == len(roles.ROLES) * 4
    assert [(c["role"], c["scale"], c["seed"]) for c in result["cells"][:4]] == \
        [("matching_paren", PILOT, 1), ("matching_paren", PILOT, 2), ("matching_paren", LARGE, 1),
         ("matching_paren", LARGE, 2)]
    paren = cells_of(result, "matching_paren", LARGE)
    # 10M seed 1 has an L2-H3 too (a previous-token head): the match is by role, so L4-H5
    assert [(c["head"], c["held"]) for c in paren] == [("L4-H5", True), ("L3-H1", True)]
    assert [c["relative_layer"] for c in paren] == pytest.approx([0.8, 0.6])
    # effects relative to each model's own baseline: 0.06 * 0.5 / 0.5
    assert paren[0]["effect"] == pytest.approx(0.06) and paren[0]["effect_ci95"] == pytest.approx([0.04, 0.08])
    assert paren[0]["effect_direction"] == 1
    not_held = cells_of(result, "operator", PILOT)[1]
    assert (not_held["head"], not_held["held"], not_held["effect_direction"]) == ("L1-H2", False, 0)


def test_markdown_rendering():
    table = rolematch_markdown(match_across_scales(PILOT_RUNS, LARGE_RUNS))
    assert "| role | verdict | pilot seeds holding | 10M seeds holding | reasons |" in table
    assert "| matching_paren | **persists** | 2 of 2 | 2 of 2 | - |" in table
    assert "| operator | **vanishes** | 1 of 2 | 0 of 2 | no 10M seed has a head holding the role |" in table
    assert "| equals | **not held in the pilot** | 0 of 2 | 2 of 2 |" in table
    assert "| matching_paren | 10M | 1 | **L4-H5 (0.60)** | 0.80 | +6.0% [+4.0%, +8.0%] |" in table
    assert "| operator | pilot | 2 | L1-H2 (0.35), not held | 0.33 | +0.0% [-1.0%, +1.0%] |" in table
    assert "never by index" in table and SOURCE in table


# ---------------------------------------------------------------------------- the verdict rule


def cell(seed: int, relative_layer: float, effect: tuple[float, float, float] | None, held: bool = True) -> dict:
    e, lo, hi = effect if effect else (None, None, None)
    return {"seed": seed, "head": f"L?-H{seed}", "relative_layer": relative_layer, "held": held, "effect": e,
            "effect_ci95": None if effect is None else [lo, hi],
            "effect_direction": None if effect is None else direction((lo, hi))}


def test_moves_on_opposite_directions_disjoint_intervals_or_only_some_seeds():
    pilot = [cell(1, 1 / 3, (0.05, 0.03, 0.07))]
    opposite = role_verdict(pilot, [cell(1, 0.4, (-0.04, -0.06, -0.02))], 1 / 6)
    assert opposite["verdict"] == "moves" and opposite["reasons"] == \
        ["10M seed 1 against pilot seed 1: opposite effect directions"]
    disjoint = role_verdict(pilot, [cell(1, 0.2, (0.30, 0.20, 0.40))], 1 / 6)
    assert disjoint["verdict"] == "moves" and "do not overlap" in disjoint["reasons"][0]
    some = role_verdict(pilot, [cell(1, 0.4, (0.05, 0.04, 0.06)), cell(2, 0.4, NULL, held=False)], 1 / 6)
    assert some["verdict"] == "moves" and some["reasons"] == ["held in 1 of 2 10M seeds"]
    # a null effect at 10M whose interval still reaches the pilot's is compatible, not opposite
    compatible = role_verdict(pilot, [cell(1, 0.4, (0.01, -0.01, 0.04))], 1 / 6)
    assert compatible["verdict"] == "persists" and compatible["failed"] == []
    # what failed is named, so that "moves" at the same depth is told from "moves" to another depth
    assert opposite["failed"] == ["direction"] and disjoint["failed"] == ["effect size"] and some["failed"] == ["seeds"]
    both = role_verdict(pilot, [cell(1, 0.8, (0.30, 0.20, 0.40)), cell(2, 0.4, NULL, held=False)], 1 / 6)
    assert both["failed"] == ["depth", "effect size", "seeds"]


def test_depth_tolerance_is_half_the_pilot_spacing_inclusive():
    pilot = [cell(1, 1 / 3, NULL)]
    assert role_verdict(pilot, [cell(1, 0.5, NULL)], 1 / 6)["verdict"] == "persists"  # exactly at the edge
    assert role_verdict(pilot, [cell(1, 0.6, NULL)], 1 / 6)["verdict"] == "moves"
    # the pilot's own spread over seeds widens the range
    spread = [cell(1, 1 / 3, NULL), cell(2, 1.0, NULL)]
    assert role_verdict(spread, [cell(1, 0.6, NULL)], 1 / 6)["verdict"] == "persists"


def test_direction():
    assert [direction((0.01, 0.02)), direction((-0.02, -0.01)), direction((-0.01, 0.01)), direction(None)] == \
        [1, -1, 0, None]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="seed given twice"):
        match_across_scales(PILOT_RUNS + PILOT_RUNS[:1], LARGE_RUNS)
    with pytest.raises(ValueError, match="no 10M runs"):
        match_across_scales(PILOT_RUNS, [])
    other = RunEvidence(LARGE_RUNS[0].roles, {k: HeadEffect(e.estimate, e.ci95, e.baseline, "mean/test_flat/loss")
                                              for k, e in LARGE_RUNS[0].effects.items()})
    with pytest.raises(ValueError, match="different measurements"):
        match_across_scales(PILOT_RUNS, [other, LARGE_RUNS[1]])
    missing = RunEvidence(LARGE_RUNS[0].roles, {k: e for k, e in LARGE_RUNS[0].effects.items() if k != "L4-H5"})
    with pytest.raises(ValueError, match="L4-H5 holds matching_paren but has no ablation effect"):
        match_across_scales(PILOT_RUNS, [missing, LARGE_RUNS[1]])
    with pytest.raises(ValueError, match="not positive"):
        HeadEffect(0.1, (0.0, 0.2), 0.0).relative()
    with pytest.raises(ValueError, match="roles/1"):
        match_across_scales([RunEvidence({"schema": "probe/2", "seed": 1}, {})], LARGE_RUNS)


# ---------------------------------------------------------------------------- ablation.json and the shipped results


def made_up_ablation() -> dict:
    entry = {"baseline": 2.0, "estimate": 0.1, "ci95": [0.05, 0.15]}
    row = {"head": "L0-H0", "effects": {"test_paren_matched": {"answer_loss": entry}},
           "bracket_specificity": {"answer_loss": {"estimate": 0.04, "ci95": [0.01, 0.07]}}}
    return {"schema": "ablation/2", "baseline": {"test_paren_matched": {"answer_loss": 2.0}},
            "scan": {"modes": {"zero": [row]}}}


def test_effects_from_ablation():
    effect = effects_from_ablation(made_up_ablation())["L0-H0"]
    assert effect == HeadEffect(0.1, (0.05, 0.15), 2.0, SOURCE)
    estimate, ci95 = effect.relative()
    assert estimate == pytest.approx(0.05) and ci95 == pytest.approx((0.025, 0.075))
    specificity = effects_from_ablation(made_up_ablation(), split="bracket_specificity")["L0-H0"]
    assert (specificity.estimate, specificity.baseline, specificity.source) == \
        (0.04, 2.0, "zero/bracket_specificity/answer_loss")
    with pytest.raises(ValueError, match="mode 'mean'"):
        effects_from_ablation(made_up_ablation(), mode="mean")
    with pytest.raises(ValueError, match="ablation/2"):
        effects_from_ablation({"schema": "roles/1"})


def shipped(scale_dir: str) -> list[RunEvidence]:
    runs = []
    for seed_dir in sorted((REPO_ROOT / "results" / scale_dir).glob("seed*")):
        roles_path, ablation_path = seed_dir / "roles.json", seed_dir / "ablation.json"
        if result_file(roles_path) and result_file(ablation_path):  # large results are committed gzipped
            runs.append(RunEvidence(read_result(roles_path, "roles"),
                                    effects_from_ablation(read_result(ablation_path, "ablation"))))
    return runs


def test_shipped_results_end_to_end():
    pilot, large = shipped("pilot"), shipped("scale_10m")
    if not pilot or not large:
        pytest.skip("results/pilot and results/scale_10m hold no roles.json with ablation.json")
    result = match_across_scales(pilot, large)
    assert len(result["cells"]) == len(roles.ROLES) * (len(pilot) + len(large))
    assert all(v["verdict"] in VERDICTS for v in result["verdicts"].values())
    assert rolematch_markdown(result).count("\n| ") >= len(result["cells"])


@pytest.mark.slow
def test_the_command_matches_real_run_files_and_reports_the_patching_peaks(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        (tmp_path / f"s{seed}").mkdir()
        run = write_tiny_run(tmp_path / f"s{seed}", seed=seed)
        assert battery.main(["--run", str(run), "--device", "cpu", "--limit", "24", "--only", "ablate,roles,patching",
                             "--quiet"]) == 0
        drop_limit_tag(run, 24)  # rolematch reads the full-data names
        runs.append(run)
    out = tmp_path / "match"
    assert rolematch.main(["--pilot", str(runs[0]), "--large", str(runs[1]), "--out", str(out)]) == 0
    result = json.loads((out / "rolematch.json").read_text())
    assert result["schema"] == "rolematch/1" and result["mode"] == "zero"
    assert result["effect_source"] == "zero/test_paren_matched/answer_loss"
    assert {c["role"] for c in result["cells"]} == set(roles.ROLES) and len(result["cells"]) == 2 * len(roles.ROLES)
    assert set(result["verdicts"]) == set(roles.ROLES)
    peaks = result["patching_peaks"]["pilot"][0]["peaks"]
    patching = json.loads((runs[0] / "patching.json").read_text())
    for direction_name, classes in peaks.items():
        for cls, peak in classes.items():
            shares = [e["restored_share"] for e in patching["resid"][direction_name][cls] if e["restored_share"] is not None]
            assert peak["restored_share"] == max(shares)
    assert "| role | verdict |" in (out / "ROLEMATCH.md").read_text()
    capsys.readouterr()
    (runs[1] / "roles.json").unlink()
    assert run_main(rolematch.main, ["--pilot", str(runs[0]), "--large", str(runs[1]), "--out", str(out)]) == 2
    assert "roles.json: not found; make it with `python -m src.analysis.roles" in capsys.readouterr().err
