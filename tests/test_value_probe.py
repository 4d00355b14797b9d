"""src.analysis.value_probe on the CPU: the probe finds a value where a feature holds it, the baselines and
the non-trivial positions are what src.analysis.intermediate defines, and the command writes what it documents."""

import json

import pytest
import torch

from src.analysis import value_probe
from src.data import make_batch, make_record
from src.errors import run_main
from src.analysis.intermediate import at_expression_positions, batch_targets
from tests.test_probe import FAST, write_tiny_run

EXPRS = ["(12+3)*4", "(1*5)+2", "7-(8-9)", "((2+3)*4)-6", "3*4+5"]


def fields_of(exprs, width=32):
    records = [make_record(e) for e in exprs]
    batch = make_batch(records, width)
    return batch, at_expression_positions(batch_targets(records, width), batch.depth)


def test_targets_and_the_copy_baseline_at_the_closing_brackets_of_hand_made_expressions():
    _, f = fields_of(EXPRS)
    close = f["close_mask"]
    # "(12+3)*4" closes 15; "(1*5)+2" closes 5 (the digit just read: trivial); "7-(8-9)" closes -1;
    # "((2+3)*4)-6" closes 5, then 20
    assert f["value"][close].tolist() == [15, 5, -1, 5, 20]
    assert f["mod10"][close].tolist() == [5, 5, 1, 5, 0]
    assert f["sign_class"][close].tolist() == [2, 2, 0, 2, 2]
    assert f["trivial"][close].tolist() == [False, True, False, False, False]
    assert value_probe.nontrivial_positions(f, "mod10")[close].tolist() == [True, False, True, True, True]
    assert value_probe.nontrivial_positions(f, "sign")[close].tolist() == [False, False, True, False, False]
    base = value_probe.baselines({"train": f, "test": f}, "close", ["test"], resamples=200)["test"]
    assert base["n_positions"] == 5 and base["trivial_share"] == pytest.approx(0.2)
    assert base["copy_mod10"]["accuracy"] == pytest.approx(0.2)
    assert base["copy_sign"]["accuracy"] == pytest.approx(0.8)  # always +1: wrong only for -1
    assert base["majority"]["sign"]["accuracy"] == pytest.approx(0.8)


def test_the_probe_reads_a_value_that_a_feature_holds_and_not_one_that_it_does_not():
    gen = torch.Generator().manual_seed(0)
    exprs = [f"({a}+{b})*{c}" for a in range(1, 10) for b in range(1, 10) for c in (2, 3)]
    _, f = fields_of(exprs)
    n, d = len(f["mod10"]), 12
    holds = torch.randn(n, 2, d, generator=gen)
    holds[:, 0, :10] += 8 * torch.nn.functional.one_hot(f["mod10"].clamp(min=0), 10)  # site 0 holds mod10; site 1 noise
    train, test = torch.arange(n) % 2 == 0, torch.arange(n) % 2 == 1
    part = lambda t, m: {k: v[m] for k, v in t.items()}  # noqa: E731
    fields = {"train": part(f, train), "test": part(f, test)}
    x = {"train": holds[train], "test": holds[test]}
    correct = value_probe.probe_kind(x, fields, None, "close", "mod10", ["test"], l2=1e-4, max_iter=100)
    acc = correct["test"].double().mean(0)
    assert acc[0] >= 0.98 and acc[1] < 0.5  # chance: about 0.1


def test_claims_follow_the_control_and_the_non_trivial_positions():
    above, spans, below = {"ci95": [0.05, 0.2]}, {"ci95": [-0.05, 0.2]}, {"ci95": [-0.2, -0.05]}
    assert value_probe.claim(True, above, above) == "at ceiling: no claim"
    assert value_probe.claim(False, above, above) == "selective beyond the tokens"
    assert value_probe.claim(False, above, spans) == "selective"
    assert value_probe.claim(False, above, {}) == "selective"  # no non-trivial position on this split
    assert value_probe.claim(False, spans, above) == "selective on the non-trivial positions only"
    assert value_probe.claim(False, below, above) == "selective on the non-trivial positions only"
    assert value_probe.claim(False, below, spans) == "below the control"
    assert value_probe.claim(False, spans, {}) == "not selective"
    assert set(value_probe.CLAIMS) >= {value_probe.claim(c, a, b) for c in (True, False) for a in (above, spans, below)
                                       for b in (above, spans, below, {})}


def test_a_probe_below_its_control_is_never_selective_beyond_the_tokens():
    """Trained 0.617 against a control of 0.635 on all positions, while the non-trivial positions alone lean
    the other way: the label must not say 'selective beyond the tokens'."""
    overall = {"estimate": 0.617 - 0.635, "ci95": [-0.041, 0.006]}
    nontrivial = {"estimate": 0.05, "ci95": [0.012, 0.09]}
    label = value_probe.claim(False, overall, nontrivial)
    assert label == "selective on the non-trivial positions only"
    # an interval that leaves out its own estimate (percentile bootstrap) never carries a claim against it
    assert value_probe.claim(False, {"estimate": -0.01, "ci95": [0.001, 0.03]}, nontrivial) == label
    assert value_probe.claim(False, {"estimate": -0.01, "ci95": [0.001, 0.03]}, {}) == "not selective"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run = write_tiny_run(tmp_path_factory.mktemp("value_probe"))
    assert value_probe.main(["--run", str(run), *FAST]) == 0
    return {"run": run, "result": json.loads((run / "value_probe.limit30.json").read_text())}


def test_value_probe_json_has_every_site_split_and_claim(tiny):
    r = tiny["result"]
    assert list(r)[0] == "schema" and r["schema"] == "value_probe/1"
    assert r["train_expressions"] == 30 and r["operator_target"] == "left_operand"
    close = r["probes"]["close"]["mod10"]
    assert [s["site"] for s in close["sites"]] == ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for kind in ("close", "operator"):
        for task in ("mod10", "sign"):
            for site in r["probes"][kind][task]["sites"]:
                for split, s in site["splits"].items():
                    assert s["claim"] in value_probe.CLAIMS
                    assert s["selectivity"]["estimate"] == pytest.approx(
                        s["trained"]["accuracy"] - s["control"]["accuracy"], abs=1e-9)
                    if s["claim"] in ("selective beyond the tokens", "selective"):  # the numbers agree with the label
                        assert s["trained"]["accuracy"] > s["control"]["accuracy"]
                    if s["claim"] == "selective beyond the tokens":
                        assert s["trained_nontrivial"]["accuracy"] > s["control_nontrivial"]["accuracy"]
            for split, b in r["probes"][kind][task]["best_layer"]["splits"].items():
                site = next(x for x in r["probes"][kind][task]["sites"] if x["site"] == r["probes"][kind][task]["best_layer"]["site"])
                assert b["control_nontrivial"] == site["splits"][split].get("control_nontrivial", {}).get("accuracy")
    assert "test_flat" not in close["sites"][0]["splits"]  # flat expressions close no bracket
    assert r["baselines"]["close"]["test_flat"] == {"n_positions": 0}
    assert r["probes"]["close"]["mod10"]["best_layer"]["layer"] in (0, 1)


def test_bad_splits_are_refused(tiny, capsys):
    assert run_main(value_probe.main, ["--run", str(tiny["run"]), *FAST, "--splits", "val"]) == 2
    assert "--splits" in capsys.readouterr().err


def test_a_limit_run_writes_its_own_file_beside_the_full_data_one(tiny):
    run = tiny["run"]
    assert tiny["result"]["limit"] == 30 and not (run / "value_probe.json").exists()
    assert value_probe.main(["--run", str(run), "--device", "cpu", "--limit", "12", "--max-iter", "5", "--resamples",
                             "100", "--no-progress"]) == 0
    assert json.loads((run / "value_probe.limit12.json").read_text())["limit"] == 12
    assert json.loads((run / "value_probe.limit30.json").read_text())["limit"] == 30  # untouched
