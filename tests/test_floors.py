"""Floors that tests can actually reach, and families that say when they cannot decide (src/stats.py)."""

import pytest
import torch

from src import stats
from src.analysis import ablate, patching
from src.metrics import paired_difference


def outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired yes/no outcomes with the given 2x2 table."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return torch.tensor(a), torch.tensor(b)


@pytest.mark.parametrize("d, floor", [(0, 1.0), (1, 1.0), (2, 0.5), (5, 0.0625), (10, 2.0 ** -9), (14, 2.0 ** -13)])
def test_mcnemar_floor_is_two_to_the_one_minus_d(d, floor):
    a, b = outcomes(both=30, only_a=0, only_b=d, neither=7)
    r = stats.mcnemar_exact(a, b)
    assert r["discordant"] == d and r["p_floor"] == floor == stats.binomial_p_floor(d)
    assert r["p_value"] == floor  # all d one way: the floor is reached, never undercut


def test_mcnemar_floor_on_a_mixed_table_and_the_sign_test():
    a, b = outcomes(both=10, only_a=2, only_b=6, neither=3)  # d = 8, not all one way
    r = stats.mcnemar_exact(a, b)
    assert r["p_floor"] == 2.0 ** -7
    assert r["p_value"] == stats.binomial_two_sided(2, 8) and r["p_value"] > r["p_floor"]
    s = stats.sign_test_exact(torch.tensor([0, 1, 2, -1, 0, 1]))
    assert s["discordant"] == 4 and s["p_floor"] == 2.0 ** -3


def test_paired_difference_carries_the_floor_and_discordant_count():
    a, b = outcomes(both=5, only_a=0, only_b=5, neither=5)
    one = torch.ones(len(a), dtype=torch.float64)
    sa = {"exact_match": a.double(), "one": one}
    sb = {"exact_match": b.double(), "one": one}
    e = paired_difference("exact_match", sa, sb)
    assert e["test"] == "mcnemar_exact" and e["discordant"] == 5 and e["p_floor"] == 0.0625 and e["p_value"] == 0.0625


def mcnemar_family(name: str, ds: list[int], size_extra: int = 0) -> tuple[stats.Family, list[dict]]:
    fam, entries = stats.Family(name), []
    for i, d in enumerate(ds):
        entries.append(fam.add(f"m{i}", stats.mcnemar_exact(*outcomes(20, 0, d, 20))))
    return fam, entries


def test_a_family_whose_members_cannot_reach_holm_says_cannot_decide():
    # 256 tests of at most 14 discordant pairs, all one way: 2^-13 = 1.2e-4 is below 0.05/256 = 2.0e-4, so the
    # largest can decide; at 576 tests (0.05/576 = 8.7e-5) none can
    fam, _ = mcnemar_family("few", [14] + [3] * 255)
    declared = fam.close()
    assert declared["decidable"] and declared["verdict"].startswith("1 of 256 significant")
    fam, entries = mcnemar_family("many", [14] + [3] * 575)
    declared = fam.close()
    assert not declared["decidable"] and declared["largest_d"] == 14
    assert declared["verdict"].startswith("cannot decide (largest d = 14")
    assert "no effect" not in declared["verdict"]
    assert not any(e["significant"] for e in entries)  # p = 2^-13 for the first, the most any data could give
    assert declared["p_floor_max"] == 0.25  # the members of d = 3: 2^-2
    assert declared["resolution_floor_max"] == 0.0  # exact floors are not refused, they are reported


def test_d5_all_one_way_alone_reaches_its_floor_of_0_0625():
    fam, (entry,) = mcnemar_family("one", [5])
    declared = fam.close()
    assert entry["p_value"] == entry["p_floor"] == 0.0625 and entry["p_adjusted"] == 0.0625
    assert not declared["decidable"] and declared["verdict"].startswith("cannot decide (largest d = 5")
    fam, (entry,) = mcnemar_family("seven", [7])  # 2^-6 = 0.0156 < 0.05: decidable, and decided
    declared = fam.close()
    assert declared["decidable"] and entry["significant"] and declared["verdict"].startswith("1 of 1 significant")


def test_a_decidable_family_with_nothing_significant_is_not_cannot_decide():
    fam = stats.Family("t")
    for i in range(4):
        fam.add(f"m{i}", {"test": "paired_t", "p_value": 0.3, "p_floor": 0.0})
    declared = fam.close()
    assert declared["decidable"] and declared["verdict"].startswith("none of 4 significant")


def test_a_mixed_family_states_a_verdict_per_test():
    fam = stats.Family("mixed")
    fam.add("em", stats.mcnemar_exact(*outcomes(10, 0, 2, 10)))            # floor 0.5
    fam.add("loss", {"test": "paired_t", "p_value": 1e-6, "p_floor": 0.0})
    declared = fam.close()
    assert declared["decidable"] and declared["verdict"].startswith("1 of 2 significant")
    assert declared["verdict_by_test"]["mcnemar_exact"].startswith("cannot decide (largest d = 2")
    assert declared["decidable_by_test"] == {"mcnemar_exact": False, "paired_t": True}
    assert not stats.decidable(declared, "mcnemar_exact") and stats.decidable(declared, "paired_t")


def test_a_resolution_floor_is_still_refused():
    fam = stats.Family("boot")
    for i in range(16):
        fam.add(f"h{i}", {"test": "paired_bootstrap", "p_value": 0.001, "p_floor": stats.bootstrap_p_floor(2000)})
    with pytest.raises(ValueError, match="p_floor"):
        fam.close()


def scan_row(head: str, em_d: int, loss_p: float) -> dict:
    em = stats.mcnemar_exact(*outcomes(20, 0, em_d, 20))
    loss = {"test": "paired_t", "estimate": 0.5, "p_value": loss_p, "p_floor": 0.0}
    spec_em = stats.sign_test_exact(torch.tensor([1.0] * em_d + [0.0] * 10))
    spec_loss = {"test": "paired_t", "estimate": 0.1, "p_value": loss_p, "p_floor": 0.0}
    return {"head": head, "layer": 0, "head_index": int(head[-1]), "relative_layer": 0.0,
            "effects": {"test_flat": {"exact_match": em, "answer_loss": loss}},
            "bracket_specificity": {"exact_match": spec_em, "answer_loss": spec_loss}}


def test_ablation_findings_say_cannot_decide_for_exact_match_and_decide_answer_loss():
    rows = {"zero": [scan_row("L0-H0", 3, 1e-9), scan_row("L0-H1", 2, 0.5)]}
    families = ablate.close_families(rows)
    effect = families["head_effect"]
    assert effect["verdict_by_test"]["mcnemar_exact"].startswith("cannot decide (largest d = 3")
    findings = {f["head"]: f["tests"] for f in ablate.head_findings(rows, families)}
    assert findings["L0-H0"]["test_flat/exact_match"]["holds_under"] == "cannot decide"
    assert findings["L0-H0"]["test_flat/exact_match"]["cannot_decide"].startswith("cannot decide (largest d = 3")
    assert findings["L0-H0"]["test_flat/answer_loss"]["holds_under"] == "zero"
    assert findings["L0-H1"]["test_flat/answer_loss"]["holds_under"] == "neither"  # decidable, not significant
    assert "cannot decide" in ablate.format_verdicts(families)


def test_patching_cell_families_carry_mcnemar_floors_and_verdicts():
    def cell(layer, d):
        return {"layer": layer, "answer_correct_change_test": stats.mcnemar_exact(*outcomes(10, 0, d, 10))}
    summary = {"resid": {"bracketed_to_flat": {"close": [cell(0, 2), cell(1, 3)], "inside": [cell(0, 1), cell(1, 0)]}}}
    fams = patching.cell_families(summary)
    fam = fams["answer_correct_resid_bracketed_to_flat"]
    assert fam["size"] == 4 and fam["members"] == ["close/L0", "close/L1", "inside/L0", "inside/L1"]
    assert not fam["decidable"] and fam["verdict"].startswith("cannot decide (largest d = 3")
