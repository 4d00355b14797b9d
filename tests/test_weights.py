"""scripts.carry_weights: runs packed into pieces and unpacked into run directories the analysis tools read."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from src.rundir.checkpoint import load_model, make_checkpoint
from src.config import config_from_dict
from src.errors import UserError, run_main
from src.model import CompactTransformer
from scripts.carry_weights import main, pack_run, unpack_run

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_run(run: Path, precision: str = "fp32", seed: int = 0) -> dict:
    """A finished run directory around a small random model: checkpoint_best.pt and the small files."""
    raw = yaml.safe_load((REPO_ROOT / "configs" / "pilot.yaml").read_text())
    raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
    raw["training"].update(compile=False, cuda_graph=False, precision=precision)
    cfg = config_from_dict(raw)
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model)
    with torch.no_grad():  # values that fp16 cannot hold exactly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    run.mkdir(parents=True)
    ckpt = make_checkpoint(cfg, model, epoch=3, step=120, best={"val_loss": 1.5, "epoch": 3, "metrics": None},
                           optimizer={"not": "kept"})
    torch.save(ckpt, run / "checkpoint_best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "summary.json").write_text(json.dumps({"config": cfg.name, "seed": seed}))
    (run / "eval.json").write_text(json.dumps({"test_flat": {"exact_match": 0.5}}))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    return ckpt


def test_fp32_round_trip_is_bit_for_bit_with_the_small_files(tmp_path):
    ckpt = make_run(tmp_path / "runs" / "cfg" / "seed42")
    manifest = pack_run(tmp_path / "runs" / "cfg" / "seed42", tmp_path / "pack")
    assert manifest["place"] == "cfg/seed42" and manifest["store"] == "fp32" and len(manifest["pieces"]) == 1
    run = unpack_run(tmp_path / "pack" / "cfg_seed42.weights.json", tmp_path / "back", tmp_path / "results")
    assert run == tmp_path / "back" / "cfg" / "seed42"
    model, back = load_model(run)  # the project's own reader accepts it
    for name, tensor in ckpt["model"].items():
        assert torch.equal(back["model"][name], tensor) and back["model"][name].dtype == tensor.dtype
    assert "optimizer" not in back and back["step"] == 120 and back["best"]["epoch"] == 3
    for name in ("config.yaml", "summary.json", "eval.json", "metrics.jsonl"):
        original = (tmp_path / "runs" / "cfg" / "seed42" / name).read_text()
        assert (run / name).read_text() == original
        assert (tmp_path / "results" / "cfg" / "seed42" / name).read_text() == original
    assert json.loads((run / "weights_origin.json").read_text())["store"] == "fp32"


def test_auto_stores_an_fp16_run_in_fp16_and_unpacks_it_to_the_models_dtypes(tmp_path):
    ckpt = make_run(tmp_path / "r" / "c" / "seed1", precision="fp16")
    manifest = pack_run(tmp_path / "r" / "c" / "seed1", tmp_path / "pack")
    assert manifest["store"] == "fp16" and manifest["trained_precision"] == "fp16"
    fp32_size = pack_run(tmp_path / "r" / "c" / "seed1", tmp_path / "pack32", store="fp32")["bytes"]
    assert manifest["bytes"] < 0.6 * fp32_size
    run = unpack_run(tmp_path / "pack" / "c_seed1.weights.json", tmp_path / "back")
    _, back = load_model(run)
    changed = 0
    for name, tensor in ckpt["model"].items():
        got = back["model"][name]
        assert got.dtype == tensor.dtype
        if tensor.is_floating_point():
            assert torch.equal(got, tensor.half().float())  # exactly the fp16 rounding, nothing else
            changed += int(not torch.equal(got, tensor))
    assert changed > 0
    assert "rounded to fp16" in json.loads((run / "weights_origin.json").read_text())["note"]


def test_pieces_are_joined_and_a_damaged_or_missing_piece_is_named(tmp_path):
    ckpt = make_run(tmp_path / "r" / "c" / "seed7")
    manifest = pack_run(tmp_path / "r" / "c" / "seed7", tmp_path / "pack", piece_bytes=20_000)
    pieces = [tmp_path / "pack" / p["file"] for p in manifest["pieces"]]
    assert len(pieces) > 3 and all(p.stat().st_size <= 20_000 for p in pieces)
    run = unpack_run(tmp_path / "pack" / "c_seed7.weights.json", tmp_path / "ok")
    _, back = load_model(run)
    assert all(torch.equal(back["model"][k], v) for k, v in ckpt["model"].items())

    data = bytearray(pieces[1].read_bytes())
    data[100] ^= 0xFF
    pieces[1].write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"{pieces[1].name}: sha256 differs"):
        unpack_run(tmp_path / "pack" / "c_seed7.weights.json", tmp_path / "bad")
    pieces[2].unlink()
    with pytest.raises(UserError, match=rf"{pieces[1].name}: sha256 differs|{pieces[2].name}: piece missing"):
        unpack_run(tmp_path / "pack" / "c_seed7.weights.json", tmp_path / "bad")
    assert not (tmp_path / "bad" / "c" / "seed7" / "checkpoint_best.pt").exists()


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("checkpoint"), "no checkpoint with a model"),
    (lambda p: p["checkpoint"].pop("model"), "no checkpoint with a model"),
    (lambda p: p["checkpoint"]["model"].update({"embed.weight": [1.0]}), "other than named tensors"),
    (lambda p: p.update(files={"eval.json": 3}), "not texts by name"),
    (lambda p: p.pop("store"), "no store"),
])
def test_a_malformed_pack_whose_checksums_match_is_a_clear_error(tmp_path, change, message):
    """A pack of another version or written by hand: its pieces check out, its contents do not."""
    make_run(tmp_path / "r" / "c" / "seed0")
    manifest = pack_run(tmp_path / "r" / "c" / "seed0", tmp_path / "pack")
    piece = tmp_path / "pack" / manifest["pieces"][0]["file"]
    packed = torch.load(piece, weights_only=True)
    change(packed)
    torch.save(packed, piece)
    data = piece.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    manifest.update(sha256=digest, bytes=len(data), pieces=[{"file": piece.name, "bytes": len(data), "sha256": digest}])
    (tmp_path / "pack" / "c_seed0.weights.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"not a well-formed weights/1 pack: .*{message}"):
        unpack_run(tmp_path / "pack" / "c_seed0.weights.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_manifest_piece_without_file_or_sha256_is_a_clear_error(tmp_path):
    make_run(tmp_path / "r" / "c" / "seed0")
    manifest = pack_run(tmp_path / "r" / "c" / "seed0", tmp_path / "pack")
    manifest["pieces"] = ["c_seed0.weights.pt"]
    (tmp_path / "pack" / "c_seed0.weights.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="every piece must name its file and sha256"):
        unpack_run(tmp_path / "pack" / "c_seed0.weights.json", tmp_path / "out")


@pytest.mark.parametrize("field, value", [("sha256", None), ("sha256", "0" * 63 + "\x00"), ("bytes", "many"),
                                          ("bytes", None), ("bytes", True), ("bytes", -1)])
def test_a_manifest_whose_sha256_or_bytes_is_missing_or_not_of_its_type_names_the_field(tmp_path, field, value):
    # before: a missing sha256 was reported as "the joined pieces ... (sha256 differs)", and "bytes": "many" unpacked
    make_run(tmp_path / "r" / "c" / "seed0")
    manifest = pack_run(tmp_path / "r" / "c" / "seed0", tmp_path / "pack")
    if value is None:
        manifest.pop(field)
    else:
        manifest[field] = value
    (tmp_path / "pack" / "c_seed0.weights.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"'{field}' (is missing|must be)"):
        unpack_run(tmp_path / "pack" / "c_seed0.weights.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_checkpoint_is_never_overwritten(tmp_path):
    make_run(tmp_path / "r" / "c" / "seed0")
    pack_run(tmp_path / "r" / "c" / "seed0", tmp_path / "pack")
    before = (tmp_path / "r" / "c" / "seed0" / "checkpoint_best.pt").read_bytes()
    with pytest.raises(UserError, match="exists already"):
        unpack_run(tmp_path / "pack" / "c_seed0.weights.json", tmp_path / "r")
    assert unpack_run(tmp_path / "pack" / "c_seed0.weights.json", tmp_path / "r", skip_existing=True) is None
    assert (tmp_path / "r" / "c" / "seed0" / "checkpoint_best.pt").read_bytes() == before


def test_root_names_nested_runs_and_the_command_line_round_trips(tmp_path, capsys):
    make_run(tmp_path / "runs" / "replication" / "pilot" / "seed42")
    make_run(tmp_path / "runs" / "ext" / "seed42", seed=1)
    assert run_main(main, ["pack", str(tmp_path / "runs" / "replication" / "pilot" / "seed42"),
                           str(tmp_path / "runs" / "ext" / "seed42"), "--root", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "pack")]) == 0
    assert sorted(p.name for p in (tmp_path / "pack").glob("*.json")) == [
        "ext_seed42.weights.json", "replication_pilot_seed42.weights.json"]
    assert run_main(main, ["unpack", str(tmp_path / "pack"), "--runs-dir", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "replication" / "pilot" / "seed42" / "checkpoint_best.pt").is_file()
    assert (tmp_path / "back" / "ext" / "seed42" / "checkpoint_best.pt").is_file()


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_main(main, ["pack", str(tmp_path / "empty"), "--out", str(tmp_path / "p")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert run_main(main, ["unpack", str(tmp_path / "empty"), "--runs-dir", str(tmp_path / "b")]) == 2
    assert "no *.weights.json manifest" in capsys.readouterr().err
    make_run(tmp_path / "a" / "c" / "seed1")
    make_run(tmp_path / "b" / "c" / "seed1")
    assert run_main(main, ["pack", str(tmp_path / "a" / "c" / "seed1"), str(tmp_path / "b" / "c" / "seed1"),
                           "--out", str(tmp_path / "p")]) == 2
    assert "pack under one name" in capsys.readouterr().err
    assert run_main(main, ["pack", str(tmp_path / "a" / "c" / "seed1"), "--root", str(tmp_path / "b"),
                           "--out", str(tmp_path / "p")]) == 2
    assert "not under --root" in capsys.readouterr().err
    assert run_main(main, ["pack", str(tmp_path / "a" / "c" / "seed1"), "--piece-mib", "0",
                           "--out", str(tmp_path / "p")]) == 2
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.weights.json").write_text(json.dumps(
        {"schema": "weights-manifest/1", "place": "../escape", "pieces": [{"file": "x"}]}))
    assert run_main(main, ["unpack", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "b2")]) == 2
    assert "outside --runs-dir" in capsys.readouterr().err
