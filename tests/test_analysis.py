"""Analysis tools (src.ablate, src.probe, src.report) on a tiny model, CPU only.

The run directory is built by hand in the format src.train writes (checkpoint dict, summary.json,
metrics.jsonl) around a briefly trained 2-layer model in which L0-H1 is the only head of layer 0
that writes to the residual stream (the out-projection slices of L0-H0, L0-H2 and L0-H3 are held
at zero through training): it carries the first layer's context, so ablating it must raise
answer_loss significantly, while ablating the silent L0-H0 must change nothing at all.
"""

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from src import ablate, probe, report
from src.config import config_from_dict
from src.errors import run_main
from src.evaluate import load_split_batches
from src.model import CompactTransformer

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLIT_SIZES = {"train": 80, "val": 16, "test_flat": 40, "test_paren": 40, "test_depth3": 40}
SIGNAL, SILENT = (0, 1), (0, 0)
FAST = ["--device", "cpu", "--resamples", "400"]  # smallest p-value 2/400, times 8 heads < 0.05


def tiny_config(data_dir: Path) -> dict:
    raw = yaml.safe_load((REPO_ROOT / "configs" / "pilot.yaml").read_text())
    raw["name"] = "tiny"
    raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
    raw["training"].update(compile=False, cuda_graph=False)
    raw["data"] = {split: str(data_dir / f"pilot_{split}.jsonl") for split in SPLIT_SIZES}
    return raw


def write_run(run: Path, raw: dict, seed: int = 0) -> None:
    """A run directory as src.train leaves it, around a briefly trained model with a signal head."""
    cfg = config_from_dict(raw)
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model)
    train = load_split_batches(cfg, ("train",))["train"]
    hd = cfg.model.head_dim
    live = torch.zeros(cfg.model.d_model)  # out-projection input columns h*hd:(h+1)*hd belong to head h
    live[SIGNAL[1] * hd:(SIGNAL[1] + 1) * hd] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):  # a few full-batch steps: the answer is predicted better than chance
        opt.zero_grad()
        model(train.inputs, train.labels).loss.backward()
        opt.step()
        with torch.no_grad():
            model.blocks[0].attn.out.weight.mul_(live)
    run.mkdir(parents=True)
    best = {"val_loss": 2.0, "epoch": 1, "metrics": None}
    ckpt = {"model_config": dataclasses.asdict(cfg.model), "config": cfg.to_dict(), "model": model.state_dict(),
            "epoch": 1, "step": 40, "best": best}
    torch.save(ckpt, run / "checkpoint_best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 40, "train_loss": 2.5}) + "\n")
    summary = {"config": "tiny", "seed": seed, "device": "cpu", "device_fallback": False, "gpu_name": None,
               "precision": "fp32", "peak_gpu_memory_mb": None, "parameters": model.num_parameters(), "epochs": 1,
               "steps": 40, "wall_time_s": 3.0, "train_steps_per_s": 20.0, "best_epoch": 1,
               "best_val_metrics": {"loss": 2.0}}
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    data = root / "data"
    data.mkdir()
    for split, n in SPLIT_SIZES.items():
        lines = (REPO_ROOT / "data" / f"pilot_{split}.jsonl").read_text().splitlines()[:n]
        (data / f"pilot_{split}.jsonl").write_text("\n".join(lines) + "\n")
    raw = tiny_config(data)
    run = root / "run"
    write_run(run, raw)
    assert ablate.main(["--run", str(run), *FAST]) == 0
    return {"root": root, "run": run, "raw": raw, "ablation": json.loads((run / "ablation.json").read_text())}


def head_row(result: dict, label: str) -> dict:
    return next(r for r in result["scan"]["heads"] if r["head"] == label)


# ---------------------------------------------------------------------------- ablation


def test_ablation_json_has_documented_fields(tiny):
    res = tiny["ablation"]
    for key in ("run", "checkpoint", "epoch", "config", "seed", "mode", "sign_convention", "baseline", "scan",
                "targeted", "num_layers", "num_heads", "resamples"):
        assert key in res, key
    assert set(res["baseline"]) == {"test_flat", "test_paren", "test_depth3"}
    assert res["baseline"]["test_flat"]["n_examples"] == SPLIT_SIZES["test_flat"]
    assert "exact_match_ci95" in res["baseline"]["test_paren"]
    rows = res["scan"]["heads"]
    assert res["scan"]["heads_tested"] == len(rows) == 2 * 4
    for row in rows:
        assert {"head", "layer", "head_index", "relative_layer", "rank", "splits", "specialization"} <= set(row)
        for split in ("test_flat", "test_paren", "test_depth3"):
            for metric in ("loss", "answer_loss", "answer_token_acc", "end_of_answer_acc", "exact_match"):
                entry = row["splits"][split][metric]
                assert {"baseline", "ablated", "delta", "ci95", "p_value", "p_bonferroni"} <= set(entry)
                assert entry["delta"] == pytest.approx(entry["ablated"] - entry["baseline"], abs=1e-12)
            for metric in ("exact_match", "end_of_answer_acc"):
                assert {"lost", "gained", "p_value"} <= set(row["splits"][split][metric]["mcnemar"])
        spec = row["specialization"]["answer_loss"]
        assert {"estimate", "ci95", "p_value", "p_bonferroni", "significant", "significant_bonferroni"} <= set(spec)
        assert spec["p_bonferroni"] == pytest.approx(min(1.0, spec["p_value"] * 8))
        flat, paren = row["splits"]["test_flat"]["answer_loss"], row["splits"]["test_paren"]["answer_loss"]
        assert spec["estimate"] == pytest.approx(paren["delta"] - flat["delta"], abs=1e-12)
    estimates = [r["specialization"]["answer_loss"]["estimate"] for r in rows]
    assert estimates == sorted(estimates, reverse=True)
    assert [r["rank"] for r in rows] == list(range(1, 9))
    t = res["targeted"]
    assert {"found", "criterion", "steps", "heads_ranked", "sets_tested", "note"} <= set(t)
    if t["found"]:
        assert set(t["effects"]) == {"test_flat", "test_paren", "test_depth3"} and t["size"] == len(t["heads"])
    else:
        assert t["heads"] is None and "no prefix" in t["message"]
    png = tiny["run"] / "ablation_heatmap.png"
    assert png.is_file() and png.stat().st_size < 200_000


def test_signal_head_is_significant_and_silent_head_is_exactly_null(tiny):
    res = tiny["ablation"]
    signal = head_row(res, "L0-H1")
    for split in ("test_flat", "test_paren"):
        entry = signal["splits"][split]["answer_loss"]
        assert entry["delta"] > 0.1 and entry["ci95"][0] > 0 and entry["p_value"] < 0.05, entry
        assert entry["p_bonferroni"] < 0.05
    silent = head_row(res, "L0-H0")
    for split, metrics in silent["splits"].items():
        for metric, entry in metrics.items():
            assert entry["delta"] == 0.0 and entry["ci95"] == [0.0, 0.0] and entry["p_value"] == 1.0, (split, metric)
            if "mcnemar" in entry:
                assert entry["mcnemar"]["p_value"] == 1.0
    for metric, spec in silent["specialization"].items():
        assert spec["estimate"] == 0.0 and spec["p_value"] == 1.0 and not spec["significant"], metric


def test_heads_flag_ablates_together_with_mean_mode(tiny):
    run = tiny["run"]
    assert ablate.main(["--run", str(run), *FAST, "--heads", "0.1,1.2", "--mode", "mean", "--limit", "20"]) == 0
    res = json.loads((run / "ablation_heads_0.1+1.2_mean.json").read_text())
    assert res["heads"] == ["L0-H1", "L1-H2"] and res["mode"] == "mean" and "per-position" in res["mean_over"]
    assert set(res["effects"]) == {"test_flat", "test_paren", "test_depth3"}
    assert res["effects"]["test_flat"]["answer_loss"]["p_value"] < 0.05
    assert "answer_loss" in res["specialization"]
    assert "scan" not in res


def test_training_means_are_per_position_means_over_real_tokens(tiny):
    cfg = config_from_dict(tiny["raw"])
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model).eval()
    batch = load_split_batches(cfg, ("train",))["train"]
    means = ablate.training_means(model, batch)
    assert means.shape == (2, 4, cfg.model.max_seq_len, cfg.model.head_dim)
    z = model(batch.inputs, cache={"blocks.1.attn.hook_z"}).cache["blocks.1.attn.hook_z"]
    real = batch.inputs != 0
    for t in (0, 5, 20):
        keep = real[:, t]
        torch.testing.assert_close(means[1, :, t], z[keep, t].mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--heads", "7.0"], "layers 0-1"),
    (["--heads", "x"], "LAYER.HEAD"),
    (["--splits", "test_flat"], "test_paren"),
    (["--checkpoint", "latest"], "no latest checkpoint"),
])
def test_bad_input_is_a_user_error(tiny, capsys, argv, message):
    assert run_main(ablate.main, ["--run", str(tiny["run"]), "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- probes


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


def test_expression_bootstrap_interval_is_wider_than_wilson_for_correlated_tokens():
    # 100 expressions of 10 tokens, each expression all right or all wrong
    correct = torch.repeat_interleave(torch.arange(100) % 2 == 0, 10)
    expr = torch.repeat_interleave(torch.arange(100), 10)
    entry = probe.accuracy_entry(correct, expr)
    assert entry["accuracy"] == 0.5 and entry["n_tokens"] == 1000 and entry["n_expressions"] == 100
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(entry["ci95_bootstrap"]) > 2 * width(entry["ci95_wilson"])


def test_probe_json_has_documented_fields(tiny):
    run = tiny["run"]
    assert probe.main(["--run", str(run), "--device", "cpu", "--limit", "30", "--max-iter", "30",
                       "--resamples", "200"]) == 0
    res = json.loads((run / "probe.json").read_text())
    for key in ("config", "seed", "control_seed", "tasks", "classes", "majority", "sites", "intervals", "positions"):
        assert key in res, key
    assert res["control_seed"] == 0 and res["classes"] == {"binary": 2, "exact": 3}
    assert len(res["sites"]) == 1 + 2 * (4 + 1)
    assert [s["site"] for s in res["sites"][:3]] == ["hook_embed", "blocks.0.attn.hook_z.0", "blocks.0.attn.hook_z.1"]
    splits = {"val", "test_flat", "test_paren", "test_depth3"}
    for task in ("binary", "exact"):
        assert set(res["majority"][task]["splits"]) == splits
    for site in res["sites"]:
        assert {"kind", "layer", "head", "relative_depth"} <= set(site)
        for task in ("binary", "exact"):
            t = site[task]
            for model in ("trained", "control"):
                assert 0.0 <= t[model]["train_accuracy"] <= 1.0
                assert set(t[model]["splits"]) == splits
                for entry in t[model]["splits"].values():
                    assert {"accuracy", "ci95_wilson", "ci95_bootstrap", "n_tokens", "n_expressions"} <= set(entry)
            for split in splits:
                assert t["selectivity"][split] == pytest.approx(
                    t["trained"]["splits"][split]["accuracy"] - t["control"]["splits"][split]["accuracy"])
        d3 = site["exact"]["trained"]["splits"]["test_depth3"]
        assert d3["n_unseen_class_tokens"] > 0 and 0.0 <= d3["accuracy_seen_classes"] <= 1.0
        assert d3["accuracy"] < 1.0  # depth 3 can never be predicted
    assert (run / "probe_layers.png").is_file()


# ---------------------------------------------------------------------------- report


def fake_seed_run(tiny, name: str, seed: int, em_flat: float, wall: float) -> Path:
    """A copy of the tiny run with another seed and known numbers."""
    src, run = tiny["run"], tiny["root"] / name
    run.mkdir()
    summary = json.loads((src / "summary.json").read_text()) | {"seed": seed, "wall_time_s": wall}
    (run / "summary.json").write_text(json.dumps(summary))
    shutil.copy(src / "metrics.jsonl", run / "metrics.jsonl")
    metrics = {s: {"n_examples": 40, "exact_match": em_flat, "exact_match_ci95": [0.0, 0.1],
                   "end_of_answer_acc": 0.9, "end_of_answer_acc_ci95": [0.8, 0.95], "answer_token_acc": 0.5,
                   "answer_loss": 2.0, "loss": 2.1} for s in ("val", "test_flat", "test_paren", "test_depth3")}
    (run / "eval.json").write_text(json.dumps({"run": str(run), "checkpoint": "best", "epoch": 1, "metrics": metrics}))
    abl = copy.deepcopy(tiny["ablation"]) | {"seed": seed}
    (run / "ablation.json").write_text(json.dumps(abl))
    if (src / "probe.json").is_file():
        shutil.copy(src / "probe.json", run / "probe.json")
    return run


def test_report_aggregates_seeds_of_one_config(tiny):
    if not (tiny["run"] / "probe.json").is_file():
        probe.main(["--run", str(tiny["run"]), "--device", "cpu", "--limit", "20", "--max-iter", "20",
                    "--resamples", "200"])
    a = fake_seed_run(tiny, "seed_a", 1, em_flat=0.10, wall=10.0)
    b = fake_seed_run(tiny, "seed_b", 2, em_flat=0.20, wall=30.0)
    (b / "probe.json").unlink()
    out = tiny["root"] / "results" / "REPORT.md"
    assert report.main([str(a), str(b), "--out", str(out)]) == 0
    agg = json.loads((out.parent / "report.json").read_text())
    tiny_cfg = agg["configs"]["tiny"]
    assert tiny_cfg["seeds"] == [1, 2]
    em = tiny_cfg["baseline"]["test_flat"]["exact_match"]
    assert em["n"] == 2 and em["mean"] == pytest.approx(0.15) and em["min"] == 0.10 and em["max"] == 0.20
    assert em["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert tiny_cfg["training"]["wall_time_s"]["mean"] == pytest.approx(20.0)
    heads = tiny_cfg["heads"]["per_seed"]
    assert len(heads) == 2 and heads[0]["top"][0]["relative_layer"] in (0.0, 1.0)
    assert tiny_cfg["probe"]["n"] == 1
    assert any("seed_b: no probe.json" in n for n in agg["notes"])
    text = out.read_text()
    for heading in ("## 1. Training", "## 2. Baseline metrics", "## 3. Heads by specialization",
                    "## 4. Targeted minimal ablation", "## 5. Depth probes", "## 6. Depth 3",
                    "## 7. Against the original study", "end_of_answer_acc", "exact_match"):
        assert heading in text, heading
    assert "0.150 ± 0.071" in text
    assert (out.parent / "probe_relative_depth.png").is_file()
    assert (out.parent / "head_specialization.png").is_file()


def test_report_of_a_bare_run_notes_every_missing_piece(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"config": "pilot", "seed": 42, "parameters": 664192}))
    out = tmp_path / "REPORT.md"
    assert report.main([str(run), "--out", str(out)]) == 0
    notes = json.loads((tmp_path / "report.json").read_text())["notes"]
    for piece in ("eval.json", "ablation.json", "probe.json"):
        assert any(piece in n for n in notes), piece
    assert "config not in this report" in out.read_text()  # no 10M run given


@pytest.mark.parametrize("module", [ablate, probe, report])
def test_help_describes_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = {"--out"} | ({"--run", "--device", "--fp16", "--limit", "--checkpoint"} if module is not report else set())
    for flag in flags:
        assert flag in text, flag
