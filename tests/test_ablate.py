"""src.analysis.ablate on a tiny model with a known signal head, CPU only (see tests/tiny.py)."""

import json

import pytest
import torch

from src.analysis import ablate
from src.config import config_from_dict
from src.errors import run_main
from src.metrics import METRICS
from src.analysis.common import load_split_batches
from src.model import CompactTransformer, Hooks
from tests.tiny import SPLIT_SIZES, tiny_config, write_data, write_run
import shutil
from tests.runs import cli
from tests.analysis_runs import copy_run, expect_user_error, full_disk_on, snapshot

FAST = ["--device", "cpu"]
SPLITS = {"test_flat", "test_paren_matched", "test_paren", "test_depth3"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    write_data(root / "data")
    raw = tiny_config(root / "data")
    run = root / "run"
    write_run(run, raw)
    assert ablate.main(["--run", str(run), *FAST, "--max-set-size", "3"]) == 0
    return {"root": root, "run": run, "raw": raw, "ablation": json.loads((run / "ablation.json").read_text())}


def row(result: dict, mode: str, label: str) -> dict:
    return next(r for r in result["scan"]["modes"][mode] if r["head"] == label)


@pytest.mark.slow
def test_ablation_json_follows_the_statistical_standard(tiny):
    res = tiny["ablation"]
    assert res["schema"] == "ablation/2"
    assert set(res["baseline"]) == SPLITS and set(res["modes"]) == {"zero", "mean"}
    fams = res["families"]
    assert fams["head_effect"]["size"] == 2 * 8 * 2 * 4  # modes x heads x verdict metrics x splits
    assert fams["head_bracket"]["size"] == 2 * 8 * 2
    for fam in fams.values():
        assert fam["correction"] == "holm" and len(fam["members"]) == fam["size"]
        assert fam["resolution_floor_max"] * fam["size"] <= 0.005  # attainable: ten times below alpha
        assert fam["verdict"] and isinstance(fam["decidable"], bool)
    for mode in ("zero", "mean"):
        rows = res["scan"]["modes"][mode]
        assert len(rows) == 8 and [r["rank"] for r in rows] == list(range(1, 9))
        est = [r["bracket_specificity"]["answer_loss"]["estimate"] for r in rows]
        assert est == sorted(est, reverse=True)
        for r in rows:
            for split in SPLITS:
                for metric in METRICS:
                    e = r["effects"][split][metric]
                    assert {"test", "estimate", "ci95", "p_value", "p_floor", "baseline", "ablated"} <= set(e)
                    assert e["estimate"] == pytest.approx(e["ablated"] - e["baseline"], abs=1e-12)
                    assert e["test"] == ("mcnemar_exact" if METRICS[metric].binary else "paired_t")
                for metric in ("exact_match", "answer_loss"):
                    assert "p_adjusted" in r["effects"][split][metric]
            spec = r["bracket_specificity"]
            assert spec["exact_match"]["test"] == "sign_test_exact" and spec["answer_loss"]["test"] == "paired_t"
            m, f = r["effects"]["test_paren_matched"]["answer_loss"], r["effects"]["test_flat"]["answer_loss"]
            assert spec["answer_loss"]["estimate"] == pytest.approx(m["estimate"] - f["estimate"], abs=1e-10)
    png = tiny["run"] / "ablation_heatmap.png"
    assert png.is_file() and png.stat().st_size < 200_000


@pytest.mark.slow
def test_holm_adjusted_p_values_match_the_family(tiny):
    from src import stats
    res = tiny["ablation"]
    entries = []
    for mode in ("zero", "mean"):
        for r in res["scan"]["modes"][mode]:
            entries += [r["bracket_specificity"][m] for m in ("exact_match", "answer_loss")]
    assert [e["p_adjusted"] for e in entries] == pytest.approx(stats.holm([e["p_value"] for e in entries]))


@pytest.mark.slow
def test_signal_head_is_significant_and_silent_head_is_exactly_null(tiny):
    res = tiny["ablation"]
    signal = row(res, "zero", "L0-H1")
    for split in ("test_flat", "test_paren_matched"):
        e = signal["effects"][split]["answer_loss"]
        assert e["estimate"] > 0.1 and e["ci95"][0] > 0 and e["significant"], e
    finding = next(h for h in res["head_findings"] if h["head"] == "L0-H1")
    assert "zero" in finding["tests"]["test_flat/answer_loss"]["significant_under"]
    assert finding["tests"]["test_flat/answer_loss"]["holds_under"] in ("zero", "both")
    silent = row(res, "zero", "L0-H0")
    for split, metrics in silent["effects"].items():
        for metric, e in metrics.items():
            assert e["estimate"] == 0.0 and e["p_value"] == 1.0, (split, metric)
    for metric, e in silent["bracket_specificity"].items():
        assert e["estimate"] == 0.0 and e["p_value"] == 1.0, metric


@pytest.mark.slow
def test_targeted_set_is_tested_only_on_examples_it_was_not_chosen_on(tiny, monkeypatch):
    cfg = config_from_dict(tiny["raw"])
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model).eval()
    batches = load_split_batches(cfg, tuple(sorted(SPLITS)))
    base = ablate.score_splits(model, batches, None, False)
    _, kept = ablate.scan_heads(model, batches, base, None, False, log=lambda *_: None)
    seen = []
    real = ablate.score_splits

    def spy(model_, batches_, ablation, fp16, exact_match=ablate.EXACT_MATCH_METHOD):
        seen.append({s: b.inputs.clone() for s, b in batches_.items()})
        return real(model_, batches_, ablation, fp16, exact_match)

    monkeypatch.setattr(ablate, "score_splits", spy)
    t = ablate.targeted_ablation(model, batches, base, kept, None, False, "zero", 3, log=lambda *_: None)
    sel, test = ablate.halves(SPLIT_SIZES["test_flat"])
    assert set(sel.tolist()).isdisjoint(test.tolist())
    for call in seen:  # every forward pass of the targeted test sees the odd half only
        for split, inputs in call.items():
            assert torch.equal(inputs, batches[split].inputs[ablate.halves(len(batches[split]))[1]])
    assert t["sets_tried"] == 3 == t["family"]["size"] and t["family"]["correction"] == "holm"
    assert t["selection_examples"] == "even indices" and t["test_examples"] == "odd indices"
    # the ranking came from the even half alone: recompute it there
    base_sel = {s: ablate.subset(base[s], sel) for s in ("test_flat", "test_paren_matched")}
    est = {h: ablate.bracket_specificity(base_sel, {s: ablate.subset(kept[h][s], sel) for s in base_sel},
                                         ("answer_loss",))["answer_loss"]["estimate"] for h in kept}
    ranked = [r["head"] for r in t["ranking_on_selection"]]
    assert ranked == [f"L{l}-H{h}" for (l, h) in sorted(est, key=lambda k: -est[k])]


@pytest.mark.slow
def test_heads_flag_ablates_together_under_both_modes(tiny):
    run = tiny["run"]
    assert ablate.main(["--run", str(run), *FAST, "--heads", "0.1,1.2", "--limit", "20"]) == 0
    res = json.loads((run / "ablation_heads_0.1+1.2.limit20.json").read_text())  # --limit: a file of its own
    assert res["limit"] == 20 and not (run / "ablation_heads_0.1+1.2.json").exists()
    assert res["heads"] == ["L0-H1", "L1-H2"] and set(res["by_mode"]) == {"zero", "mean"}
    assert set(res["by_mode"]["mean"]["effects"]) == SPLITS
    assert res["families"]["head_effect"]["size"] == 2 * 2 * 4
    assert "scan" not in res


@pytest.mark.slow
def test_training_means_are_per_position_means_over_real_tokens(tiny):
    cfg = config_from_dict(tiny["raw"])
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model).eval()
    batch = load_split_batches(cfg, ("train",))["train"]
    means = ablate.training_means(model, batch)
    assert means.shape == (2, 4, cfg.model.max_seq_len, cfg.model.head_dim)
    z = model(batch.inputs, hooks=Hooks(record={"blocks.1.attn.hook_z"})).activations["blocks.1.attn.hook_z"]
    real = batch.inputs != 0
    for t in (0, 5, 20):
        keep = real[:, t]
        torch.testing.assert_close(means[1, :, t], z[keep, t].mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--heads", "7.0"], "--heads: cannot ablate head L7.H0: the model has 2 layers of 4 heads"),  # the model's check
    (["--heads", "x"], "LAYER.HEAD"),
    (["--heads", ","], "no empty items"),
    (["--modes", "zero,zero"], "distinct modes"),
    (["--modes", "median"], "--modes"),
    (["--max-set-size", "0"], "at least 1"),
    (["--checkpoint", "latest"], "no latest checkpoint"),
])
@pytest.mark.slow
def test_bad_input_is_a_user_error_and_writes_nothing(tiny, capsys, argv, message):
    before = sorted(p.name for p in tiny["run"].iterdir())
    assert run_main(ablate.main, ["--run", str(tiny["run"]), "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tiny["run"].iterdir()) == before


def test_a_run_without_the_matched_split_names_the_file_and_the_fix(tmp_path, capsys):
    write_data(tmp_path / "data")
    (tmp_path / "data" / "pilot_test_paren_matched.jsonl").unlink()
    run = tmp_path / "run"
    write_run(run, tiny_config(tmp_path / "data"))
    assert run_main(ablate.main, ["--run", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pilot_test_paren_matched.jsonl" in err and "python -m src.data" in err
    assert not (run / "ablation.json").exists()


# ---------------------------------------------------------------------------- targeted set, answer known


class BracketHeadModel(torch.nn.Module):
    """A model whose answer is known by construction. It predicts every next token of the known
    sequences with a large margin, except where a chosen head is ablated: then, on sequences that
    contain a bracket, its answer positions lose their margin (answer_loss rises by a different
    amount on each example), while flat sequences are untouched. Every other head is silent: its
    ablation changes nothing, bit for bit."""

    def __init__(self, batches: dict, signal=(0, 1)):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.signal = signal
        self.seqs = {}  # prompt (BOS, expr, " = ") as a tuple -> the labels after it (answer digits, EOS)
        for b in batches.values():
            for i in range(len(b)):
                p = int(b.prompt_len[i])
                labels = b.labels[i][b.answer_mask[i]].tolist()
                self.seqs[tuple(b.inputs[i, :p].tolist())] = (p, labels)

    def forward(self, tokens, labels=None, *, hooks=None):
        from src.model import ModelOutput
        from src.tokenizer import VOCAB, VOCAB_SIZE

        ablated = hooks is not None and hooks.ablation is not None and self.signal in hooks.ablation.heads
        open_id = VOCAB.index("(")
        B, T = tokens.shape
        logits = torch.zeros(B, T, VOCAB_SIZE)
        for i in range(B):
            row = tokens[i].tolist()
            p, answer = next(v for k, v in self.seqs.items() if tuple(row[: len(k)]) == k)
            bracketed = open_id in row[:p]
            margin = (1.0 + (i % 5)) if ablated and bracketed else 20.0
            for j, target in enumerate(answer):
                if p - 1 + j < T:
                    logits[i, p - 1 + j, target] = margin
        return ModelOutput(logits)


@pytest.mark.parametrize("signal", [(0, 1), None], ids=["one_signal_head", "no_signal_head"])
@pytest.mark.slow
def test_targeted_set_is_the_known_signal_head_and_nothing_else(tiny, signal):
    """With one head that matters for brackets only, the targeted set chosen on the even half is
    exactly that head, its effect on the odd half is significant after Holm, and every other
    head's ranking estimate is exactly zero. With no such head, nothing is found."""
    cfg = config_from_dict(tiny["raw"])
    batches = load_split_batches(cfg, ("test_flat", "test_paren_matched"))
    model = BracketHeadModel(batches, signal=signal if signal else (9, 9)).eval()
    heads = [(layer, head) for layer in range(2) for head in range(4)]
    base = ablate.score_splits(model, batches, None, "fp32")
    kept = {h: ablate.score_splits(model, batches, ablate.HeadAblation({h}), "fp32") for h in heads}
    t = ablate.targeted_ablation(model, batches, base, kept, None, "fp32", "zero", 3, log=lambda *_: None)
    ranking = {r["head"]: r["estimate"] for r in t["ranking_on_selection"]}
    if signal is None:
        assert not t["found"] and t["heads"] is None and "no prefix of up to 3 heads" in t["message"]
        assert set(ranking.values()) == {0.0}
        return
    assert t["ranking_on_selection"][0]["head"] == "L0-H1" and ranking["L0-H1"] > 1.0
    assert all(ranking[h] == 0.0 for h in ranking if h != "L0-H1")  # silent heads: exactly no effect
    assert t["found"] and t["heads"] == ["L0-H1"] and t["size"] == 1
    step = t["steps"][0]["answer_loss_bracket_specificity"]  # prefix 1, Holm over the 3 prefixes tried
    assert step["estimate"] > 1.0 and step["p_adjusted"] < 0.05 and step["significant"]
    assert t["bracket_specificity_on_test_half"]["answer_loss"]["estimate"] == pytest.approx(step["estimate"])
    flat = t["effects_on_test_half"]["test_flat"]["answer_loss"]
    assert flat["estimate"] == 0.0  # flat expressions are untouched by construction


@pytest.mark.slow
def test_the_scan_table_defines_every_column_it_abbreviates(tiny, capsys):
    rows = tiny["ablation"]["scan"]["modes"]["zero"]
    header = ablate.format_scan(rows, "zero").splitlines()[1]
    for short in ("rel", "dAL", "dEM", "p_adj"):
        assert short in header and f"{short} = " in ablate.SCAN_LEGEND, short


# ---------------------------------------------------------------------------- refused outputs and a full disk (docs/RELIABILITY.md)


def test_ablate_out_flag_that_is_a_directory(analysis_run, tmp_path, capsys):
    run = copy_run(analysis_run, tmp_path)
    before = snapshot(run)
    expect_user_error(cli(ablate.main, ["--run", run, "--device", "cpu", "--out", tmp_path], capsys),
                      f"--out {tmp_path}", "is a directory")
    assert snapshot(run) == before


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_ablate_full_disk_leaves_no_partial_file(analysis_run, tmp_path, capsys, monkeypatch, suffix):
    run = tmp_path / "run"
    shutil.copytree(analysis_run["run"], run)
    full_disk_on(monkeypatch, suffix)
    err = expect_user_error(cli(ablate.main, ["--run", run, "--device", "cpu", "--max-set-size", "1", "--limit", "8",
                                              "--modes", "zero"], capsys), "disk is full")
    assert not (run / "ablation.limit8_heatmap.png").exists() and not list(run.glob("*.tmp"))
    if suffix == ".json":  # the first write failed: nothing at all
        assert "ablation.limit8.json" in err and not (run / "ablation.limit8.json").exists()
    else:
        assert "ablation.limit8_heatmap.png" in err
