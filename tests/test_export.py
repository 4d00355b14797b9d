"""python -m src.export and CompactTransformer.from_pretrained: safetensors + config.json, CPU only.

The models here are tiny (2 layers, d_model 32). `random_model` perturbs every parameter, the
LayerNorms' weights and biases and the feed-forward biases included, so that a weight mapped to the
wrong place cannot hide behind its initial value; `trained_model` is a few full-batch steps on the
first training expressions. tests/test_transformer_lens.py uses both.
"""

import dataclasses
import importlib.metadata
import json
import struct

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from src import export
from src.analysis import evaluate
from src.config import config_from_dict
from src.errors import UserError, run_main
from src.model import CompactTransformer, load_pretrained
from src.rundir.checkpoint import load_model
from src.tokenizer import VOCAB
from tests.tiny import REPO_ROOT, tiny_config, write_data

TRAIN_LINES, TRAIN_STEPS = 100, 20


def tiny_raw(data_dir) -> dict:
    return tiny_config(data_dir)


def random_model(raw: dict, seed: int = 0) -> CompactTransformer:
    """A tiny model in eval mode whose every parameter is random."""
    torch.manual_seed(seed)
    model = CompactTransformer(config_from_dict(raw).model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model.eval()


def trained_model(raw: dict, seed: int = 0) -> CompactTransformer:
    """A tiny model after TRAIN_STEPS full-batch Adam steps on the first TRAIN_LINES training expressions."""
    from src.data import load_jsonl, make_batch

    cfg = config_from_dict(raw)
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model)
    batch = make_batch(load_jsonl(REPO_ROOT / "data" / "pilot_train.jsonl", 32, max_records=TRAIN_LINES), 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(TRAIN_STEPS):
        opt.zero_grad()
        model(batch.inputs, batch.labels).loss.backward()
        opt.step()
    return model.eval()


def checkpoint(model, raw, epoch, best_epoch, seed=7) -> dict:
    cfg = config_from_dict(raw)
    best = {"val_loss": 2.0, "epoch": best_epoch, "metrics": {"loss": 2.0, "exact_match": 0.25} if best_epoch else None}
    return {"model_config": dataclasses.asdict(cfg.model), "config": cfg.to_dict(), "model": model.state_dict(),
            "epoch": epoch, "step": 10 * epoch, "best": best, "seed": seed, "precision": "fp32"}


def write_tiny_run(run, raw, best_model, latest_model) -> None:
    """A run directory as src.train leaves it: the best checkpoint at epoch 2, the latest at epoch 3."""
    run.mkdir(parents=True)
    torch.save(checkpoint(best_model, raw, 2, 2), run / "checkpoint_best.pt")
    torch.save(checkpoint(latest_model, raw, 3, 2), run / "checkpoint_latest.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(config_from_dict(raw).to_dict(), sort_keys=False))
    rows = [{"schema": "metrics/1", "epoch": e, "step": 10 * e, "train_loss": 3.0 - e / 10,
             "val": {"loss": 2.5 - e / 10, "exact_match": e / 100}} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"schema": "summary/1", "seed": 7, "precision": "fp32"}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_data(root / "data")
    raw = tiny_raw(root / "data")
    best, latest = random_model(raw, 0), random_model(raw, 1)
    write_tiny_run(root / "run", raw, best, latest)
    out = root / "exported"
    assert export.main(["--run", str(root / "run"), "--out", str(out)]) == 0
    return {"root": root, "raw": raw, "run": root / "run", "out": out, "best": best, "latest": latest}


def same_weights(a: CompactTransformer, b: CompactTransformer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_gives_the_checkpoint_back_bit_for_bit(tiny):
    model = CompactTransformer.from_pretrained(tiny["out"])
    assert same_weights(model, tiny["best"]) and not model.training
    tokens = torch.randint(0, 35, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, tiny["best"](tokens).logits)


def test_weights_file_is_plain_safetensors_in_float32(tiny):
    path = tiny["out"] / "model.safetensors"
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: 8-byte length, a JSON header, then raw bytes
    header = json.loads(raw[8:8 + header_len])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert set(header) == set(tiny["best"].state_dict()) and {h["dtype"] for h in header.values()} == {"F32"}
    assert b"\x80\x04" not in raw[:8 + header_len]  # no pickle protocol marker in the header
    assert torch.equal(load_file(path)["embed.weight"], tiny["best"].embed.weight)


def test_config_json_records_the_model_vocabulary_run_and_selected_epoch(tiny):
    config = json.loads((tiny["out"] / "config.json").read_text())
    assert config["schema"] == "export/1"
    assert config["model_config"] == dataclasses.asdict(tiny["best"].cfg)
    assert config["vocabulary"] == list(VOCAB) and len(config["vocabulary"]) == 35
    assert config["special_tokens"] == {"<PAD>": 0, "<BOS>": 1, "<EOS>": 2, "<UNK>": 3}
    assert config["answer_format"]["name"] == "plain"
    assert config["answer_format"]["prompt"] == "<BOS>{expr} = "
    assert config["run_config"] == config_from_dict(tiny["raw"]).to_dict()
    assert config["run_config"]["training"]["learning_rate"] == tiny["raw"]["training"]["learning_rate"]
    assert config["seed"] == 7 and config["trained_precision"] == "fp32"
    assert config["checkpoint"] == {"selected": "best", "file": "checkpoint_best.pt", "epoch": 2, "step": 20}
    assert config["selected_metrics"] == {"split": "val", "epoch": 2, "source": "checkpoint (best)",
                                          "metrics": {"loss": 2.0, "exact_match": 0.25}}
    assert config["parameters"] == tiny["best"].num_parameters()


def test_latest_checkpoint_exports_its_own_epoch_and_metrics(tiny):
    out = tiny["root"] / "latest"
    assert export.main(["--run", str(tiny["run"]), "--checkpoint", "latest", "--out", str(out)]) == 0
    assert same_weights(CompactTransformer.from_pretrained(out), tiny["latest"])
    config = json.loads((out / "config.json").read_text())
    assert config["checkpoint"]["selected"] == "latest" and config["checkpoint"]["epoch"] == 3
    # not the run's best epoch: its metrics come from that epoch's metrics.jsonl row
    assert config["selected_metrics"]["source"] == "metrics.jsonl (epoch 3)"
    assert config["selected_metrics"]["metrics"] == {"loss": 2.2, "exact_match": 0.03}


def test_load_model_reads_an_export_directory_as_a_run(tiny):
    model, ckpt = load_model(tiny["out"])
    assert same_weights(model, tiny["best"])
    assert ckpt["epoch"] == 2 and ckpt["seed"] == 7 and ckpt["precision"] == "fp32"
    assert config_from_dict(ckpt["config"]) == config_from_dict(tiny["raw"])
    same, _ = load_model(tiny["run"], str(tiny["out"]))  # as a --checkpoint PATH too
    assert same_weights(same, tiny["best"])
    with pytest.raises(UserError, match="export of the best checkpoint and holds no other"):
        load_model(tiny["out"], "latest")


def test_an_analysis_command_accepts_an_export_directory(tiny, capsys):
    out = tiny["root"] / "eval_of_export.json"
    argv = ["--run", str(tiny["out"]), "--device", "cpu", "--limit", "4", "--out", str(out)]
    assert run_main(evaluate.main, argv) == 0
    result = json.loads(out.read_text())
    assert result["epoch"] == 2 and result["metrics"]["test_flat"]["n_examples"] == 4


def test_an_export_re_exported_is_the_same_model(tiny):
    again = tiny["root"] / "again"
    assert export.main(["--run", str(tiny["out"]), "--out", str(again)]) == 0
    assert (again / "model.safetensors").read_bytes() == (tiny["out"] / "model.safetensors").read_bytes()
    assert json.loads((again / "config.json").read_text()) == json.loads((tiny["out"] / "config.json").read_text())


def refused(argv, capsys, message) -> None:
    assert run_main(export.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_run_without_the_checkpoint_is_refused_and_nothing_written(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    refused(["--run", str(run), "--out", str(tmp_path / "out")], capsys, "no best checkpoint in run directory")
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_refused_and_nothing_written(tiny, tmp_path, capsys):
    model = random_model(tiny["raw"])
    with torch.no_grad():
        model.blocks[1].ffn.up.weight[3, 5] = float("nan")
    run = tmp_path / "run"
    write_tiny_run(run, tiny["raw"], model, model)
    refused(["--run", str(run), "--out", str(tmp_path / "out")], capsys,
            "weight blocks.1.ffn.up.weight holds non-finite values")
    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_is_refused_unless_force(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(["--run", str(tiny["run"]), "--out", str(out)], capsys, "is not empty (notes.txt)")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert export.main(["--run", str(tiny["run"]), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert same_weights(CompactTransformer.from_pretrained(out), tiny["best"])


def test_out_may_not_be_a_run_directory(tiny, capsys):
    refused(["--run", str(tiny["run"]), "--out", str(tiny["run"]), "--force"], capsys, "is the run directory itself")


def copy_export(tiny, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        (out / name).write_bytes((tiny["out"] / name).read_bytes())
    return out


def test_a_config_that_does_not_match_its_weights_names_the_first_tensor(tiny, tmp_path):
    out = copy_export(tiny, tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["model_config"]["d_ff"] = 48
    (out / "config.json").write_text(json.dumps(config))
    # embed, then block 0's ln1, attn.qkv, attn.out, ln2: the first tensor d_ff sizes is blocks.0.ffn.up.weight
    with pytest.raises(UserError, match=r"tensor blocks\.0\.ffn\.up\.weight has shape \[64, 32\]; .* gives \[48, 32\]"):
        CompactTransformer.from_pretrained(out)


def test_a_missing_or_extra_tensor_is_named(tiny, tmp_path):
    out = copy_export(tiny, tmp_path)
    weights = load_file(out / "model.safetensors")
    del weights["blocks.1.ln2.bias"]
    save_file(weights, out / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor blocks\.1\.ln2\.bias is missing"):
        load_pretrained(out)
    weights["blocks.1.ln2.bias"] = torch.zeros(32)
    weights["blocks.2.ln1.weight"] = torch.ones(32)
    save_file(weights, out / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor blocks\.2\.ln1\.weight is not part of the model"):
        load_pretrained(out)


def test_non_finite_or_foreign_export_files_are_refused(tiny, tmp_path):
    out = copy_export(tiny, tmp_path)
    weights = load_file(out / "model.safetensors")
    weights["ln_f.weight"][0] = float("inf")
    save_file(weights, out / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor ln_f\.weight holds non-finite values"):
        load_pretrained(out)
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_pretrained(out)
    (out / "config.json").write_text(json.dumps({"schema": "transformer_lens_export/1"}))
    with pytest.raises(UserError, match="a TransformerLens export: load it with HookedTransformer"):
        load_pretrained(out)


def test_transformer_lens_missing_or_unsupported_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, monkeypatch):
    real = importlib.metadata.version

    def version(name, answer):
        if name != "transformer-lens":
            return real(name)
        if answer is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return answer

    argv = ["--run", str(tiny["run"]), "--to", "transformer-lens", "--out", str(tmp_path / "tl")]
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version(name, None))
    refused(argv, capsys, "TransformerLens is not installed; install it with: pip install -r requirements-interop.txt")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version(name, "4.0.1"))
    refused(argv, capsys, "transformer-lens 4.0.1 is installed; this bridge supports transformer-lens>=3.9,<4")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version(name, "3.8.2"))
    refused(argv, capsys, "transformer-lens 3.8.2 is installed")
    assert not (tmp_path / "tl").exists()


def test_a_float16_export_is_half_the_bytes_and_reads_back_as_the_rounded_weights(tiny, tmp_path):
    out = tmp_path / "half"
    assert export.main(["--run", str(tiny["run"]), "--out", str(out), "--dtype", "float16"]) == 0
    assert (out / "model.safetensors").stat().st_size < 0.6 * (tiny["out"] / "model.safetensors").stat().st_size
    assert {v.dtype for v in load_file(out / "model.safetensors").values()} == {torch.float16}
    config = json.loads((out / "config.json").read_text())
    assert config["weights"]["dtype"] == "float16" and "rounded" in config["weights"]["note"]
    model = CompactTransformer.from_pretrained(out)
    for name, got in model.state_dict().items():
        assert got.dtype == torch.float32
        assert torch.equal(got, tiny["best"].state_dict()[name].half().float()), name


def test_a_float16_export_refuses_weights_beyond_its_range_and_a_float32_tensor_in_it(tiny, tmp_path, capsys):
    out = tmp_path / "half"
    assert export.main(["--run", str(tiny["run"]), "--out", str(out), "--dtype", "float16"]) == 0
    weights = load_file(out / "model.safetensors")
    weights["ln_f.weight"] = weights["ln_f.weight"].float()
    save_file(weights, out / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor ln_f\.weight has dtype torch\.float32, but .* float16"):
        load_pretrained(out)
    model = CompactTransformer.from_pretrained(tiny["out"])
    with torch.no_grad():
        model.ln_f.weight[0] = 1e6
    with pytest.raises(UserError, match=r"ln_f\.weight holds 1e\+06, beyond float16's range"):
        export.compact_export(model, export.export_config(tiny["run"], "best", {"config": {}}, model), "float16")
    assert run_main(export.main, ["--run", str(tiny["run"]), "--out", str(tmp_path / "tl"), "--to",
                                  "transformer-lens", "--dtype", "float16"]) == 2
    assert "--dtype float16 applies to --to compact only" in capsys.readouterr().err
    assert not (tmp_path / "tl").exists()
