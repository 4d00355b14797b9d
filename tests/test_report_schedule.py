"""The chosen schedule's 3-seed figures (src/report/schedule.py) on hand-made seed directories with known values."""

import json
import math

import pytest

from src.errors import run_main
from src.report import schedule
from src.rundir.results import stamp

SEEDS = schedule.SEEDS
# known test_flat / test_paren / test_depth3 per seed (42, 123, 7), and the 1x means beside them
WHOLE = {"pilot": {"test_flat": [0.60, 0.62, 0.64], "test_paren": [0.50, 0.49, 0.51], "test_depth3": [0.20, 0.25, 0.30]},
         "10M": {"test_flat": [0.90, 0.92, 0.94], "test_paren": [0.88, 0.86, 0.90], "test_depth3": [0.66, 0.68, 0.70]}}
ONE_X = {"pilot": {"test_flat": 0.70, "test_paren": 0.56, "test_depth3": 0.27},
         "10M": {"test_flat": 0.87, "test_paren": 0.82, "test_depth3": 0.52}}
ONE_X_OFFSET = (-0.01, 0.01, 0.0)  # each 1x seed's exact_match minus the 1x mean
EPOCHS = 8
T975_DF2 = 4.302652729911275  # the 97.5% quantile of Student's t with 2 degrees of freedom


def write_seed(study, scale, config, i, seed, limit=None):
    d = study / config / f"seed{seed}"
    d.mkdir(parents=True)
    whole = {split: values[i] for split, values in WHOLE[scale].items()}
    metrics = {split: {"n_examples": 2000, "exact_match": em} for split, em in whole.items()}
    near = {"splits": {split: {"whole": {"n": 2000, "exact_match": em}, "unseen": {"n": 1990, "exact_match": em - 0.001},
                               "near_twins_seen": 10} for split, em in whole.items()}}
    (d / "eval.json").write_text(json.dumps(stamp("eval", {"config": config, "seed": seed, "epoch": EPOCHS, "step": 80,
                                                          "limit": limit, "metrics": metrics, "near_twin_free": near})))
    (d / "summary.json").write_text(json.dumps(stamp("summary", {
        "status": "completed", "config": config, "seed": seed, "gpu_name": "a GPU", "steps": 250_016, "epochs": EPOCHS,
        "best_epoch": EPOCHS if i < 2 else EPOCHS - 1, "wall_time_s": 1.0})))
    # validation rises by 0.01 an epoch (seed 7's falls at the end: its best epoch is not the last)
    rows = [{"schema": "metrics/1", "epoch": e, "step": 10 * e, "train_loss": 1.0 - 0.1 * e,
             "val": {"exact_match": 0.1 + 0.01 * e - (0.05 if i == 2 and e == EPOCHS else 0.0), "loss": 1.0,
                     "end_of_answer_acc": 1.0}} for e in range(1, EPOCHS + 1)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def dirs(tmp_path):
    study, extension = tmp_path / "study", tmp_path / "extension"
    for scale, (config, _) in schedule.SCALES.items():
        for i, seed in enumerate(SEEDS):
            write_seed(study, scale, config, i, seed)
    # the 1x seeds: the mean, less 0.01 for seed 42, plus 0.01 for seed 123
    configs = {ext: {"splits": {split: {"seeds": 3, "mean": m, "ci95": [m - 0.01, m + 0.01],
                                        "per_seed": [{"seed": s, "exact_match": m + d} for s, d in zip(SEEDS, ONE_X_OFFSET)]}
                                for split, m in ONE_X[scale].items()}} for scale, (_, ext) in schedule.SCALES.items()}
    extension.mkdir()
    (extension / "extension.json").write_text(json.dumps(stamp("extension", {"configs": configs})))
    return study, extension, tmp_path / "out"


def test_means_intervals_targets_and_the_extrapolation(dirs, capsys):
    study, extension, out = dirs
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 0
    doc = json.loads((out / "schedule.json").read_text())
    assert doc["schema"] == "schedule/1"
    for scale in ("pilot", "10M"):
        for split, values in WHOLE[scale].items():
            row = doc["scales"][scale]["splits"][split]
            mean = sum(values) / 3
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
            half = T975_DF2 * sd / math.sqrt(3)
            assert row["whole"]["mean"] == pytest.approx(mean, rel=1e-4)
            assert row["whole"]["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-4)
            assert row["unseen"]["mean"] == pytest.approx(mean - 0.001, rel=1e-4)
            gain = mean - ONE_X[scale][split]
            assert row["change_from_one_x"] == pytest.approx(gain, rel=1e-4, abs=1e-9)
            diffs = [v - ONE_X[scale][split] - d for v, d in zip(values, ONE_X_OFFSET)]  # paired by seed
            sd_d = math.sqrt(sum((x - gain) ** 2 for x in diffs) / 2)
            paired = row["change_from_one_x_paired"]
            assert paired["mean"] == pytest.approx(gain, rel=1e-4, abs=1e-9)
            assert paired["ci95"] == pytest.approx([gain - T975_DF2 * sd_d / math.sqrt(3), gain + T975_DF2 * sd_d / math.sqrt(3)],
                                                   rel=1e-4, abs=1e-9)
            if gain > 0:
                assert row["next_doubling_extrapolated"] == pytest.approx(min(1.0, mean + gain), rel=1e-4)
            else:  # 2x below 1x: no line is drawn
                assert row["next_doubling_extrapolated"] is None
    ten = doc["scales"]["10M"]["splits"]
    assert ten["test_flat"]["target"] == 0.95 and ten["test_flat"]["minus_target"] == pytest.approx(0.92 - 0.95, rel=1e-4)
    assert ten["test_depth3"]["target"] == 0.70 and ten["test_depth3"]["minus_target"] == pytest.approx(-0.02, rel=1e-4)
    assert "target" not in doc["scales"]["pilot"]["splits"]["test_flat"]
    # seeds 42 and 123 have their best epoch last, seed 7 not; validation rose 0.01 an epoch (seed 7: fell at the end)
    pilot = doc["scales"]["pilot"]
    assert pilot["best_epoch_last"] == 2
    assert [s["val_change_last_epochs"] for s in pilot["seeds"]] == pytest.approx([0.01, 0.01, (0.03 - 0.05) / 3], rel=1e-4)
    assert list(pilot["seeds"][0]["train_loss_by_quarter"]) == ["2", "4", "6", "8"]
    md = (out / "SCHEDULE.md").read_text()
    assert "| 10M | test_flat | 0.870 [0.860, 0.880] | **0.920 [" in md and "| -0.030 | +0.050 [" in md and "| 0.970 (extrapolated) |" in md
    assert "| pilot | test_flat | 0.700 [0.690, 0.710] | **0.620 [" in md and "— (mean below 1x)" in md
    assert "in 2 of 3 seeds" in md
    assert (out / "schedule_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_a_missing_seed_names_it_and_how_to_make_it(dirs, capsys):
    study, extension, out = dirs
    for f in (study / "study_10m" / "seed7").iterdir():
        f.unlink()
    (study / "study_10m" / "seed7").rmdir()
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seed7" in err and "study_10m" in err and "scripts/study.sh" in err
    assert not out.exists()


def test_a_limited_evaluation_or_a_misplaced_seed_is_refused(dirs, capsys):
    study, extension, out = dirs
    d = study / "study_pilot" / "seed123"
    ev = json.loads((d / "eval.json").read_text())
    (d / "eval.json").write_text(json.dumps({**ev, "limit": 200}))
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 2
    assert "--limit 200" in capsys.readouterr().err
    (d / "eval.json").write_text(json.dumps({**ev, "seed": 42}))
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 2
    assert "lies in study_pilot/seed123" in capsys.readouterr().err


def test_the_committed_figures_are_those_the_committed_runs_give(tmp_path):
    """results/extension/schedule.json is what the command makes from the committed runs today."""
    from tests.tiny import REPO_ROOT

    out = tmp_path / "out"
    assert run_main(schedule.main, ["--study", str(REPO_ROOT / "results" / "study"),
                                    "--extension", str(REPO_ROOT / "results" / "extension"), "--out", str(out)]) == 0
    made = json.loads((out / "schedule.json").read_text())
    committed = json.loads((REPO_ROOT / "results" / "extension" / "schedule.json").read_text())
    for doc in (made, committed):
        doc.pop("study"), doc.pop("extension")
    assert made == committed


def test_the_line_in_log_steps_is_read_one_doubling_past_a_longer_schedule(dirs):
    """At 4x the 1x steps, 1x to the chosen schedule is two doublings: one more adds half the change."""
    study, extension, out = dirs
    for summary in study.glob("study_*/seed*/summary.json"):
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps": 4 * schedule.ONE_X_STEPS}))
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 0
    row = json.loads((out / "schedule.json").read_text())["scales"]["10M"]["splits"]["test_flat"]
    assert row["next_doubling_extrapolated"] == pytest.approx(0.92 + (0.92 - 0.87) / 2, rel=1e-4)
    assert "10M 500,032 (4x)" in (out / "SCHEDULE.md").read_text()


def test_seeds_of_one_scale_on_two_schedules_are_refused(dirs, capsys):
    study, extension, out = dirs
    summary = study / "study_10m" / "seed7" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps": 125_008}))
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 2
    assert "one schedule per scale" in capsys.readouterr().err


def test_a_1x_seed_missing_from_the_extension_is_named(dirs, capsys):
    study, extension, out = dirs
    ext = json.loads((extension / "extension.json").read_text())
    cell = ext["configs"]["ext_10m_n2000000"]["splits"]["test_paren"]
    cell["per_seed"] = [c for c in cell["per_seed"] if c["seed"] != 123]
    (extension / "extension.json").write_text(json.dumps(ext))
    assert run_main(schedule.main, ["--study", str(study), "--extension", str(extension), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ext_10m_n2000000 has no test_paren figure of seed(s) 123" in err and "paired by seed" in err
