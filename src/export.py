"""A trained model as the ecosystem loads it: safetensors weights with a config.json beside them.

    python -m src.export --run D [--checkpoint best|latest|PATH] --out DIR [--force]
    python -m src.export --run D --to transformer-lens --out DIR

The default (`--to compact`) writes
    DIR/model.safetensors  the CompactTransformer state dict, no pickle; float32 by default: the weights as
                           trained (fp16 and bf16 runs autocast around float32 weights), so that
                           CompactTransformer.from_pretrained(DIR) gives back the checkpoint's model bit for bit.
                           `--dtype float16` stores them rounded to float16 (half the bytes: about 21 MB for the
                           10M model); from_pretrained casts them back to float32 (exactly), so a reader
                           computes in float32 on the rounded weights, and config.json says so
    DIR/config.json        schema export/1: model_config, the vocabulary (the token of each id), the
                           answer format, the run's whole config (run_config; its `training` section is the
                           training config), the seed, the precision it trained in, the exported checkpoint
                           (selected, file, epoch, step) and that epoch's validation metrics
Every analysis command reads such a directory wherever it reads a run (`--run DIR`).

`--to transformer-lens` writes what TransformerLens's HookedTransformer loads (docs/INTEROP.md shows
the five lines): DIR/model.safetensors, the HookedTransformer state dict (buffers included, so it loads
strictly), and DIR/config.json, schema transformer_lens_export/1, whose `hooked_transformer_config` is
HookedTransformerConfig's keyword arguments and whose `compact_transformer` is the export/1 record above.
Before anything is written, the export is loaded back from its bytes and checked against the model:
the same tensors bit for bit (compact), or logits within 1e-4 of the largest logit on fixed random
sequences (TransformerLens; the tests hold tiny models to 1e-5 on every test file).

Nothing is written when the input is bad: a run without the checkpoint, weights that are not finite,
an --out that is not empty (unless --force, which replaces config.json and model.safetensors there and
leaves other files alone), or TransformerLens missing or of an unsupported version.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from src.cli import ArgumentParser
from src.device import run_precision
from src.errors import UserError, run_main
from src.model import (
    EXPORT_SCHEMA,
    PRETRAINED_CONFIG,
    PRETRAINED_WEIGHTS,
    CompactTransformer,
)
from src.rundir.atomic import atomic_write_bytes, atomic_write_json
from src.rundir.checkpoint import load_model, resolve_checkpoint
from src.rundir.paths import check_output_dir
from src.rundir.results import read_metrics
from src.tokenizer import ANSWER_SEPARATOR, BOS_ID, EOS_ID, PAD_ID, UNK_ID, VOCAB

TARGETS = ("compact", "transformer-lens")
ANSWER_DEFINITIONS = {
    "plain": "str(result)",
    "reversed": "the digits of result least significant first, the sign kept in front (-123 -> -321)",
}
# the TransformerLens export's check before writing: the largest logit difference may be `relative_tolerance` times the
# largest |logit| (at least 1). Float32 rounding, summed differently in the two implementations, gives 4e-6 on a
# tiny model and 5e-5 on a 10.65M-parameter one with random weights and logits up to 13; a wrong convention
# (tests/test_transformer_lens.py) moves the tiny trained model's logits by 2e-3 or more
TL_CHECK = {"sequences": 64, "relative_tolerance": 1e-4, "seed": 0}


def selected_metrics(run: Path, ckpt: dict) -> dict:
    """The validation metrics of the checkpoint's epoch: from the checkpoint when it is the run's best,
    else from that epoch's metrics.jsonl row; None (with the reason) when neither records them."""
    epoch = ckpt.get("epoch")
    best = ckpt.get("best") if isinstance(ckpt.get("best"), dict) else {}
    if best.get("epoch") == epoch and isinstance(best.get("metrics"), dict):
        return {"split": "val", "epoch": epoch, "source": "checkpoint (best)", "metrics": best["metrics"]}
    rows, _ = read_metrics(run / "metrics.jsonl")
    for row in rows:
        if row["epoch"] == epoch and isinstance(row.get("val"), dict):
            return {"split": "val", "epoch": epoch, "source": f"metrics.jsonl (epoch {epoch})", "metrics": row["val"]}
    return {"split": "val", "epoch": epoch, "source": None, "metrics": None}


def run_seed(run: Path, ckpt: dict):
    """The training seed: the checkpoint's, else summary.json's; None when neither records it."""
    if isinstance(ckpt.get("seed"), int):
        return ckpt["seed"]
    try:
        seed = json.loads((run / "summary.json").read_text()).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) else None


def export_config(run: Path, which: str, ckpt: dict, model: CompactTransformer) -> dict:
    """The config.json (export/1) of `model`, loaded from checkpoint `which` of `run`."""
    if isinstance(ckpt.get("exported"), dict):  # the run is itself an export: its record stands
        return ckpt["exported"]
    run_config = ckpt["config"]
    answer_format = (run_config.get("data") or {}).get("answer_format", "plain")
    return {
        "schema": EXPORT_SCHEMA,
        "model_class": "CompactTransformer",
        "parameters": model.num_parameters(),
        "model_config": dataclasses.asdict(model.cfg),
        "vocabulary": list(VOCAB),
        "special_tokens": {"<PAD>": PAD_ID, "<BOS>": BOS_ID, "<EOS>": EOS_ID, "<UNK>": UNK_ID},
        "answer_format": {"name": answer_format, "answer": ANSWER_DEFINITIONS.get(answer_format),
                          "sequence": f"<BOS>{{expr}}{ANSWER_SEPARATOR}{{answer}}<EOS>",
                          "prompt": f"<BOS>{{expr}}{ANSWER_SEPARATOR}",
                          "note": "one token per character; the model reads <BOS> + expression + ' = ' and writes "
                                  "the answer, then <EOS>"},
        "run_config": run_config,
        "seed": run_seed(run, ckpt),
        "trained_precision": run_precision(ckpt, run),
        "weights": {"file": PRETRAINED_WEIGHTS, "format": "safetensors", "dtype": "float32",
                    "note": WEIGHT_NOTES["float32"]},
        "checkpoint": {"selected": which if which in ("best", "latest") else Path(which).name,
                       "file": resolve_checkpoint(run, which).name, "epoch": ckpt.get("epoch"),
                       "step": ckpt.get("step")},
        "selected_metrics": selected_metrics(run, ckpt),
        "run": str(run),
    }


WEIGHT_NOTES = {
    "float32": "the float32 weights as trained, whatever trained_precision was (mixed precision autocasts "
               "around float32 weights)",
    "float16": "the float32 weights as trained, rounded to float16 (round to nearest even); from_pretrained "
               "casts them back to float32, so a reader computes in float32 on the rounded weights; "
               "selected_metrics are those of the unrounded weights",
}
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def compact_export(model: CompactTransformer, config: dict, dtype: str = "float32") -> tuple[bytes, dict]:
    """(model.safetensors bytes, config.json) of the compact export in `dtype` (float32: bit for bit;
    float16: rounded, refused where a weight lies beyond float16's range), its bytes checked."""
    from safetensors.torch import load, save

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if dtype != "float32":
        for name, v in tensors.items():
            big = float(v.abs().max()) if v.numel() else 0.0
            if big > torch.finfo(torch.float16).max:
                raise UserError(f"tensor {name} holds {big:.4g}, beyond float16's range; export with --dtype float32")
        tensors = {k: v.to(WEIGHT_DTYPES[dtype]) for k, v in tensors.items()}
        config = dict(config, weights=dict(config["weights"], dtype=dtype, note=WEIGHT_NOTES[dtype]))
    data = save(tensors, metadata={"format": "pt"})
    back = load(data)
    if set(back) != set(tensors) or not all(torch.equal(back[k], v) for k, v in tensors.items()):
        raise RuntimeError("the safetensors bytes do not give back the model's tensors")  # a bug, not an input
    return data, config


def transformer_lens_export(model: CompactTransformer, config: dict) -> tuple[bytes, dict]:
    """(model.safetensors bytes, config.json) of the TransformerLens export, loaded back from its bytes
    and checked against `model` on fixed random sequences (TL_CHECK) before it is returned."""
    from safetensors.torch import load, save

    from src.interop.transformer_lens import (
        SUPPORTED,
        TL_EXPORT_SCHEMA,
        build_hooked_transformer,
        hooked_config,
        require_transformer_lens,
        to_hooked_transformer,
    )

    version = require_transformer_lens()
    model = model.to("cpu").eval()
    tensors = {k: v.detach().contiguous() for k, v in to_hooked_transformer(model, "cpu").state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    tl_config = hooked_config(model, "cpu")
    generator = torch.Generator().manual_seed(TL_CHECK["seed"])
    tokens = torch.randint(0, model.cfg.vocab_size, (TL_CHECK["sequences"], model.cfg.max_seq_len), generator=generator)
    with torch.no_grad():  # in float64: the arithmetic adds no float32 rounding (the rotary tables keep theirs)
        ours = copy.deepcopy(model).double()(tokens).logits
        gap = (build_hooked_transformer(tl_config, load(data)).double()(tokens) - ours).abs().max().item()
    tolerance = TL_CHECK["relative_tolerance"] * max(1.0, ours.abs().max().item())
    if not gap <= tolerance:  # a bug of the mapping, not of the input
        raise RuntimeError(f"the TransformerLens model's logits differ from the model's by {gap:.3g} (tolerance "
                           f"{tolerance:.3g}); nothing was written")
    out = {"schema": TL_EXPORT_SCHEMA,
           "hooked_transformer_config": tl_config,
           "transformer_lens": {"supported": SUPPORTED, "exported_with": version},
           "check": {**TL_CHECK, "tolerance": tolerance, "max_abs_logit_difference": gap,
                     "what": "logits of the HookedTransformer loaded from these files minus the model's, on "
                             "`sequences` random token sequences of max_seq_len tokens (both models in float64, CPU)"},
           "weights": {"file": PRETRAINED_WEIGHTS, "format": "safetensors", "dtype": "float32",
                       "note": "HookedTransformer's state dict: parameters and buffers"},
           "compact_transformer": config}
    return data, out


def check_out(out_arg: str, run: Path, force: bool) -> Path:
    """The --out directory, checked before anything is read: writable, not the run, empty unless --force."""
    out = check_output_dir(out_arg, "--out")
    if out == run.resolve():
        raise UserError(f"--out {out_arg}: is the run directory itself; export into a directory of its own")
    if out.is_dir():
        found = sorted(p.name for p in out.iterdir())
        if any(name.startswith("checkpoint_") and name.endswith(".pt") for name in found):
            raise UserError(f"--out {out_arg}: holds checkpoints (a run directory); export into a directory of its own")
        if found and not force:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise UserError(f"--out {out_arg}: is not empty ({shown}); choose a new or empty directory, or pass --force "
                            f"to replace its {PRETRAINED_CONFIG} and {PRETRAINED_WEIGHTS}")
    return out


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m src.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by src.train (or an export directory)")
    parser.add_argument("--checkpoint", default="best",
                        help="best, latest, or a checkpoint path (default: best, the checkpoint the run selected)")
    parser.add_argument("--out", required=True, help="directory to write config.json and model.safetensors into "
                        "(created; must be new or empty unless --force)")
    parser.add_argument("--to", choices=TARGETS, default="compact",
                        help="compact: CompactTransformer.from_pretrained and the analysis commands read it "
                        "(default); transformer-lens: TransformerLens's HookedTransformer loads it "
                        "(needs requirements-interop.txt)")
    parser.add_argument("--dtype", choices=tuple(WEIGHT_DTYPES), default="float32",
                        help="the stored weights (compact only): float32, the weights as trained, bit for bit "
                        "(default); float16, rounded, half the bytes (read back as float32)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out, replacing its config.json and model.safetensors")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"--run {args.run}: not a directory; pass a run directory written by src.train")
    out = check_out(args.out, run, args.force)
    if args.dtype != "float32" and args.to != "compact":
        raise UserError(f"--dtype {args.dtype} applies to --to compact only; the {args.to} export stores float32")
    if args.to == "transformer-lens":  # before the model is read: a missing package is the first thing said
        from src.interop.transformer_lens import require_transformer_lens

        require_transformer_lens()
    model, ckpt = load_model(run, args.checkpoint, "cpu")  # no checkpoint, non-finite weights: refused here
    config = export_config(run, args.checkpoint, ckpt, model)
    if args.to == "transformer-lens":
        data, config = transformer_lens_export(model, config)
    else:
        data, config = compact_export(model, config, args.dtype)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / PRETRAINED_WEIGHTS, data)
    atomic_write_json(out / PRETRAINED_CONFIG, config)
    print(f"wrote {out / PRETRAINED_WEIGHTS} ({len(data) / 2**20:.2f} MiB) and {out / PRETRAINED_CONFIG} ({args.to})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
