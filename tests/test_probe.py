"""src.analysis.probe: depth probes read against an untrained control, CPU only.

The small cases are built directly through the module's functions (features that hold the depth
or do not); the end-to-end ones run `python -m src.analysis.probe` on a tiny, briefly trained 2-layer model
in a run directory laid out as src.train leaves it.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml

from src.analysis import probe

from src import stats
from src.config import DataConfig, config_from_dict
from src.rundir.checkpoint import make_checkpoint
from src.errors import run_main
from src.metrics import EVAL_SPLITS
from src.analysis.common import load_split_batches
from src.model import CompactTransformer
import shutil
from tests.runs import cli
from tests.analysis_runs import FAST as ANALYSIS_FAST, expect_user_error, full_disk_on

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLIT_SIZES = {"train": 80}  # every other split: 40 expressions
FAST = ["--device", "cpu", "--limit", "30", "--max-iter", "20", "--resamples", "200"]


_TRAINED: dict[tuple, dict] = {}  # write_tiny_run's trained weights by seed and training data


def write_tiny_run(root: Path, seed: int = 0) -> Path:
    """A run directory around a 2-layer model trained for a few full-batch steps."""
    data = root / "data"
    data.mkdir()
    files = {}
    for name in DataConfig.splits():  # whatever splits the config knows, test_paren_matched included
        source = REPO_ROOT / "data" / f"pilot_{name}.jsonl"
        if not source.is_file():
            source = REPO_ROOT / "data" / "pilot_test_paren.jsonl"
        lines = source.read_text().splitlines()[:SPLIT_SIZES.get(name, 40)]
        files[name] = data / f"pilot_{name}.jsonl"
        files[name].write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load((REPO_ROOT / "configs" / "pilot.yaml").read_text())
    raw["name"] = "tiny"
    raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
    raw["training"].update(compile=False, cuda_graph=False)
    raw["data"] = {name: str(path) for name, path in files.items()}
    cfg = config_from_dict(raw)
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model)
    key = (seed, (data / "pilot_train.jsonl").read_bytes())
    if key in _TRAINED:  # many tests build this run: the weights and random state the loop below made before
        model.load_state_dict(_TRAINED[key]["model"])
        torch.set_rng_state(_TRAINED[key]["rng"])
    else:
        train = load_split_batches(cfg, ("train",))["train"]
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            model(train.inputs, train.labels).loss.backward()
            opt.step()
        _TRAINED[key] = {"model": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
                         "rng": torch.get_rng_state()}
    run = root / "run"
    run.mkdir()
    torch.save(make_checkpoint(cfg, model, epoch=1, step=20, best={"val_loss": 2.0, "epoch": 1, "metrics": None},
                               seed=seed),
               run / "checkpoint_best.pt")
    (run / "summary.json").write_text(json.dumps({"config": "tiny", "seed": seed}))
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run = write_tiny_run(tmp_path_factory.mktemp("probe"))
    assert probe.main(["--run", str(run), *FAST]) == 0
    return {"run": run, "result": json.loads((run / "probe.limit30.json").read_text())}


def sample_depth_features(gen, n: int, holds_depth: bool, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 1, d] features and depths 0-2; with `holds_depth` feature 0 is the depth plus a little noise."""
    depth = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 1, d, generator=gen)
    if holds_depth:
        x[:, 0, 0] = depth + 0.1 * torch.randn(n, generator=gen)
    return x, depth


# ---------------------------------------------------------------------------- probes and intervals


def test_probe_recovers_depth_from_a_feature_that_holds_it_and_not_from_noise():
    gen = torch.Generator().manual_seed(0)
    n, d = 3000, 8

    def sample():
        depth = torch.randint(0, 3, (n,), generator=gen)
        x = torch.randn(n, 2, d, generator=gen)
        x[:, 0, 0] = depth + 0.1 * torch.randn(n, generator=gen)  # slice 0 holds depth, slice 1 is noise
        return x, depth

    x_train, y_train = sample()
    x_test, y_test = sample()
    fitted = probe.fit_probes(x_train, y_train, num_classes=3)
    acc = (fitted.predict(x_test) == y_test[:, None]).double().mean(0)
    majority = (y_test == torch.bincount(y_train).argmax()).double().mean().item()
    assert acc[0] > 0.97
    assert abs(acc[1].item() - majority) < 0.05


def test_fit_groups_hold_every_site_once_with_one_feature_width():
    cfg = config_from_dict(yaml.safe_load(Path("configs/scale_10m.yaml").read_text())).model
    groups = probe.fit_groups(cfg)
    flat = [site.name for group in probe.site_groups(cfg) for site in group]
    assert sorted(s.name for g in groups for s in g) == sorted(flat) and len(flat) == len(set(flat))
    assert all(len({s.kind == "head" for s in g}) == 1 for g in groups)  # heads (d_head) apart from d_model sites


def test_a_joint_fit_predicts_like_separate_fits():
    # fit_groups fits many sites in one L-BFGS loop: the slices share no parameter, so each slice's
    # predictions must match the fit of that slice alone
    gen = torch.Generator().manual_seed(1)
    n, d = 2000, 6
    depth = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 3, d, generator=gen)
    x[:, 0, 0] += depth
    x[:, 1, 2] += 0.3 * depth
    joint = probe.fit_probes(x, depth, 3).predict(x)
    for s in range(3):
        alone = probe.fit_probes(x[:, s:s + 1], depth, 3).predict(x[:, s:s + 1])[:, 0]
        assert (joint[:, s] == alone).double().mean() > 0.995


def test_expression_bootstrap_interval_is_wider_than_wilson_for_correlated_tokens():
    # 100 expressions of 10 tokens, each expression all right or all wrong
    correct = torch.repeat_interleave(torch.arange(100) % 2 == 0, 10)
    expr = torch.repeat_interleave(torch.arange(100), 10)
    entry = probe.accuracy_entry(correct, expr)
    assert entry["accuracy"] == 0.5 and entry["n_tokens"] == 1000 and entry["n_expressions"] == 100
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(entry["ci95_bootstrap"]) > 2 * width(entry["ci95_wilson"])


def test_selectivity_interval_is_paired_over_the_same_positions(monkeypatch):
    # 60 expressions of 10 positions. The control gets 9 positions of each even expression and none of
    # each odd one (its accuracy varies a lot between resamples); the trained probe gets one position
    # more in every expression: the difference is exactly 0.1 in each, so in every paired resample
    expr = torch.repeat_interleave(torch.arange(60), 10)
    position = torch.arange(10).repeat(60)
    even = (expr % 2 == 0)
    control = even & (position > 0)
    trained = even | (position == 0)

    seen = {}
    real = stats.paired_bootstrap

    def spy(num_a, den_a, num_b, den_b, **kw):
        seen.update(num_a=num_a, den_a=den_a, num_b=num_b, den_b=den_b)
        return real(num_a, den_a, num_b, den_b, **kw)

    monkeypatch.setattr(stats, "paired_bootstrap", spy)
    sel = probe.selectivity_entry(trained, control, expr, resamples=400)
    assert torch.equal(seen["den_a"], seen["den_b"]) and seen["den_a"].tolist() == [10.0] * 60  # same positions
    assert seen["num_a"].sum() == control.sum() and seen["num_b"].sum() == trained.sum()  # control a, trained b
    assert sel["estimate"] == pytest.approx(0.1)
    assert sel["ci95"] == pytest.approx([0.1, 0.1]) and sel["p_value"] < 0.01  # paired: no spread at all
    unpaired = stats.bootstrap_ratio_interval(*probe.per_expression(control, expr), resamples=400)
    assert unpaired[1] - unpaired[0] > 0.2  # the control alone varies far more than the paired difference
    same = probe.selectivity_entry(control, control, expr, resamples=400)
    assert same["estimate"] == 0.0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same positions"):
        probe.selectivity_entry(trained[:-1], control, expr)


def test_a_control_that_holds_the_depth_puts_the_probe_at_its_ceiling():
    gen = torch.Generator().manual_seed(1)
    expr = torch.repeat_interleave(torch.arange(200), 10)

    def scored(holds_depth: bool):
        x_train, y_train = sample_depth_features(gen, 2000, holds_depth)
        x_test, y_test = sample_depth_features(gen, 2000, holds_depth)
        correct = probe.fit_probes(x_train, y_train, 3).predict(x_test)[:, 0] == y_test
        return correct, probe.accuracy_entry(correct, expr, resamples=200)

    trained, trained_entry = scored(True)
    control, control_entry = scored(True)  # the feature holds the depth in both models
    assert control_entry["accuracy"] >= probe.CEILING and probe.at_ceiling(control_entry)
    sel = probe.selectivity_entry(trained, control, expr, resamples=200)
    assert probe.claim(probe.at_ceiling(control_entry), sel) == "at ceiling: no claim"

    noise, noise_entry = scored(False)  # a control that does not hold it
    assert noise_entry["accuracy"] < 0.6 and not probe.at_ceiling(noise_entry)
    sel = probe.selectivity_entry(trained, noise, expr, resamples=200)
    assert sel["ci95"][0] > 0 and probe.claim(False, sel) == "selective"
    assert probe.claim(False, {"estimate": 0.01, "ci95": [-0.02, 0.04]}) == "not selective"
    # an unseen class caps the accuracy below 1: the seen classes are held against the ceiling too
    assert probe.at_ceiling({"accuracy": 0.6, "accuracy_seen_classes": 0.97})
    assert not probe.at_ceiling({"accuracy": 0.6, "accuracy_seen_classes": 0.9})
    assert probe.at_ceiling({"accuracy": probe.CEILING})


def fake_site(name: str, kind: str, layer, train_acc: float, acc: float, control: float) -> dict:
    entry = {"accuracy": acc, "ci95_bootstrap": [acc - 0.01, acc + 0.01]}
    ctrl = {"accuracy": control, "ci95_bootstrap": [control - 0.01, control + 0.01]}
    sel = {"estimate": acc - control, "ci95": [acc - control - 0.02, acc - control + 0.02], "p_value": 0.01}
    task = {"trained": {"train_accuracy": train_acc, "splits": {"test_paren": entry, "test_depth3": entry}},
            "control": {"train_accuracy": 0.5, "splits": {"test_paren": ctrl, "test_depth3": ctrl}},
            "selectivity": {"test_paren": sel, "test_depth3": sel},
            "at_ceiling": {"test_paren": control >= probe.CEILING, "test_depth3": control >= probe.CEILING}}
    return {"site": name, "kind": kind, "layer": layer, "relative_depth": 0.0 if layer is None else (layer + 1) / 3,
            "binary": task, "exact": task}


def test_summary_tells_the_first_block_from_the_best_site():
    sites = [fake_site("hook_embed", "embed", None, 1.0, 0.9, 0.5),  # not a candidate: the embedding
             fake_site("blocks.0.hook_resid_post", "resid", 0, 0.90, 0.80, 0.96),
             fake_site("blocks.1.attn.hook_z.0", "head", 1, 1.0, 0.99, 0.5),  # not a candidate: a head
             fake_site("blocks.1.hook_resid_post", "resid", 1, 0.99, 0.97, 0.60),
             fake_site("blocks.2.hook_resid_post", "resid", 2, 0.99, 0.98, 0.60)]  # a tie: the earlier wins
    depths = {"test_paren": {"min_depth": 0, "max_depth": 2, "in_distribution": True},
              "test_depth3": {"min_depth": 0, "max_depth": 3, "in_distribution": False}}
    summary = probe.summarize(sites, ["test_paren", "test_depth3"], depths, train_max_depth=2)
    assert "first_block" in summary["rule"] and "best_site" in summary["rule"]
    assert summary["in_distribution"] == ["test_paren"] and summary["out_of_distribution"] == ["test_depth3"]
    s = summary["tasks"]["binary"]["test_paren"]
    assert s["first_block"]["site"] == "blocks.0.hook_resid_post" and s["first_block"]["relative_depth"] == 1 / 3
    assert s["best_site"]["site"] == "blocks.1.hook_resid_post" and not s["best_is_first_block"]
    assert s["first_block"]["at_ceiling"] and s["first_block"]["claim"] == "at ceiling: no claim"
    assert s["best_site"]["claim"] == "selective" and s["best_site"]["control_accuracy"] == 0.60
    assert s["best_site"]["selectivity"]["ci95"] == pytest.approx([0.35, 0.39])
    assert "in distribution" in s["distribution"]
    d3 = summary["tasks"]["exact"]["test_depth3"]
    assert not d3["in_distribution"] and "out of distribution" in d3["distribution"]


# ---------------------------------------------------------------------------- the command


def test_probe_json_has_documented_fields(tiny):
    res, run = tiny["result"], tiny["run"]
    assert next(iter(res)) == "schema" and res["schema"] == "probe/2"
    for key in ("config", "seed", "control_seed", "tasks", "classes", "majority", "sites", "intervals", "positions",
                "ceiling", "ceiling_rule", "selectivity_definition", "split_depths", "summary"):
        assert key in res, key
        assert key in probe.__doc__, key  # the output paragraph documents every key
    assert res["control_seed"] == 0 and res["classes"] == {"binary": 2, "exact": 3} and res["ceiling"] == 0.95
    assert len(res["sites"]) == 1 + 2 * (4 + 1)
    assert [s["site"] for s in res["sites"][:3]] == ["hook_embed", "blocks.0.attn.hook_z.0", "blocks.0.attn.hook_z.1"]
    splits = set(EVAL_SPLITS)
    assert "test_depth3" in splits and set(res["split_depths"]) == splits
    assert not res["split_depths"]["test_depth3"]["in_distribution"] and res["split_depths"]["test_paren"]["in_distribution"]
    for task in ("binary", "exact"):
        assert set(res["majority"][task]["splits"]) == splits
    for site in res["sites"]:
        assert {"kind", "layer", "head", "relative_depth"} <= set(site)
        for task in ("binary", "exact"):
            t = site[task]
            for model in ("trained", "control"):  # the control at every site and on every split, depth 3 included
                assert 0.0 <= t[model]["train_accuracy"] <= 1.0
                assert set(t[model]["splits"]) == splits
                for entry in t[model]["splits"].values():
                    assert {"accuracy", "ci95_wilson", "ci95_bootstrap", "n_tokens", "n_expressions"} <= set(entry)
            assert set(t["selectivity"]) == set(t["at_ceiling"]) == splits
            for split in splits:
                sel, ctrl = t["selectivity"][split], t["control"]["splits"][split]
                assert sel["estimate"] == pytest.approx(t["trained"]["splits"][split]["accuracy"] - ctrl["accuracy"])
                assert sel["ci95"][0] <= sel["estimate"] <= sel["ci95"][1] and 0 < sel["p_value"] <= 1
                assert t["at_ceiling"][split] == probe.at_ceiling(ctrl)
        d3 = site["exact"]["trained"]["splits"]["test_depth3"]
        assert d3["n_unseen_class_tokens"] > 0 and 0.0 <= d3["accuracy_seen_classes"] <= 1.0
        assert d3["accuracy"] < 1.0  # depth 3 can never be predicted
        assert "accuracy_seen_classes" in site["exact"]["control"]["splits"]["test_depth3"]
    summary = res["summary"]
    assert summary["out_of_distribution"] == ["test_depth3"] and "test_paren" in summary["in_distribution"]
    resid = [s["site"] for s in res["sites"] if s["kind"] == "resid"]
    for task in ("binary", "exact"):
        assert set(summary["tasks"][task]) == splits
        for split, s in summary["tasks"][task].items():
            assert s["first_block"]["site"] == "blocks.0.hook_resid_post" and s["best_site"]["site"] in resid
            for label in (s["first_block"], s["best_site"]):
                assert {"site", "relative_depth", "trained_accuracy", "trained_ci95", "control_accuracy",
                        "selectivity", "at_ceiling", "claim"} <= set(label)
                assert label["claim"] == probe.claim(label["at_ceiling"], label["selectivity"])
    d3 = summary["tasks"]["exact"]["test_depth3"]["first_block"]
    assert d3["n_unseen_class_tokens"] > 0 and "control_accuracy_seen_classes" in d3
    png = run / "probe_layers.limit30.png"  # a --limit run: its own files, beside the full-data ones
    assert png.is_file() and png.stat().st_size < 200_000
    assert not (run / "probe.json").exists() and not (run / "probe_layers.png").exists()


def test_table_shows_the_control_and_the_ceiling(tiny):
    text = probe.format_table(tiny["result"])
    assert "control" in text and "at ceiling" in text and "summary" in text
    assert "test_depth3: out of distribution" in text and "test_paren: in distribution" in text
    site = tiny["result"]["sites"][0]
    row = next(line for line in text.splitlines() if line.strip().startswith(site["site"]))
    assert f"{site['binary']['control']['splits']['test_paren']['accuracy']:.3f}" in row
    assert row.endswith("*") == site["binary"]["at_ceiling"]["test_paren"]


@pytest.mark.parametrize("argv, flag", [
    (["--resamples", "0"], "--resamples"),
    (["--resamples", "99"], "--resamples"),
    (["--l2", "nan"], "--l2"),
    (["--l2", "inf"], "--l2"),
    (["--l2", "-1"], "--l2"),
    (["--max-iter", "0"], "--max-iter"),
    (["--limit", "0"], "--limit"),
    (["--splits", "test_nope"], "--splits"),
])
def test_bad_flags_are_one_line_user_errors_and_write_nothing(tiny, tmp_path, capsys, argv, flag):
    before = sorted(p.name for p in tiny["run"].iterdir())
    out = tmp_path / "fresh" / "probe.json"
    assert run_main(probe.main, ["--run", str(tiny["run"]), "--device", "cpu", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {flag}"), err
    assert not (tmp_path / "fresh").exists() and sorted(p.name for p in tiny["run"].iterdir()) == before


def test_splits_flag_takes_any_evaluation_split(tiny, tmp_path):
    matched = "test_paren_matched"
    out = tmp_path / "probe.json"
    assert probe.main(["--run", str(tiny["run"]), *FAST, "--max-iter", "5", "--splits", matched, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["sites"][0]["binary"]["selectivity"]) == {matched}
    assert res["summary"]["in_distribution"] == [matched] and set(res["summary"]["tasks"]["exact"]) == {matched}
    assert not list(tmp_path.glob("probe_layers*.png"))  # the figure needs test_paren


# ---------------------------------------------------------------------------- a full disk (docs/RELIABILITY.md)


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_probe_full_disk_leaves_no_partial_file(analysis_run, tmp_path, capsys, monkeypatch, suffix):
    run = tmp_path / "run"
    shutil.copytree(analysis_run["run"], run)
    full_disk_on(monkeypatch, suffix)
    expect_user_error(cli(probe.main, ["--run", run, "--device", "cpu", *ANALYSIS_FAST["probe"], "--limit", "8"], capsys),
                      "disk is full")
    assert not (run / "probe_layers.limit8.png").exists() and not list(run.glob("*.tmp"))
