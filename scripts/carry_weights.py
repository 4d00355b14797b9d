"""Carry trained weights between machines: pack runs into pieces small enough to travel, unpack them into
run directories that the analysis tools read.

    python -m scripts.carry_weights pack RUN... --out DIR [--root R] [--store auto|fp32|fp16] [--piece-mib 15]
    python -m scripts.carry_weights unpack DIR --runs-dir R [--results-dir S]

Checkpoints never enter the repository, and a GPU machine used for one job may keep nothing between jobs, so a model
trained in one call is either trained again in the next (scripts/extension_mechanisms.sh does that) or
carried back and forth. `pack` keeps what the analyses use from each run's checkpoint_best.pt (the
architecture, the config, the weights, and where the run was: epoch, step, best) with the run's small
files (config.yaml, summary.json, eval.json, metrics.jsonl), in one file per run, split into numbered
pieces of at most --piece-mib MiB where it is larger. Each run is named by its place under --root
(default: the run's grandparent, so RUNS/<config>/seed<S> packs as `<config>_seed<S>`), and has a
manifest `<name>.weights.json`: the run it came from, the place, the precision stored, the sha256 of
the whole file and of every piece.

`--store auto` (the default) keeps a run trained in fp16 in fp16 and every other run in fp32. A model
trained under fp16 autocast reads its weights as fp16 in every matrix product, so rounding them
halves what travels (a 10M model: 42.6 MB -> 21.3 MB) and changes only the parts computed in fp32
(embeddings, norms, biases) by fp16 rounding; the manifest and, after unpacking, weights_origin.json
say so. `--store fp32` keeps the weights bit for bit.

`unpack` checks every piece against its manifest, joins them, and writes R/<place>/checkpoint_best.pt
(the weights back in their model's dtypes) with the small files and weights_origin.json (where the
weights came from, how they were stored). With --results-dir, the small files also go to
S/<place>/, where src.sweep counts the run as finished, so that scripts/extension_mechanisms.sh (with
RETRAIN_DIR = S) goes straight to the battery. An existing checkpoint is never overwritten: it is an
error, or with --skip-existing the run is left as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
from pathlib import Path

from src import exit_on_sigint_while_importing
from src.cli import interrupted, path_arg  # light: ready before torch is
from src.errors import UserError, run_main
from src.rundir.paths import check_name

if __name__ == "__main__":
    exit_on_sigint_while_importing()  # until run_main: Ctrl-C inside torch's import ends at once

try:
    import torch

    from src.rundir.atomic import atomic_save, atomic_write_bytes, atomic_write_json, atomic_write_text
    from src.rundir.checkpoint import checked_model_config, load_checkpoint, model_from_checkpoint
    from src.cli import ArgumentParser, float_in
    from src.device import run_precision
    from src.model import CompactTransformer
except KeyboardInterrupt:  # Ctrl-C while torch imports: the one line of any other moment
    if __name__ != "__main__":
        raise
    raise SystemExit(run_main(interrupted)) from None

SCHEMA = "weights/1"
KEPT = ("model_config", "config", "model", "epoch", "step", "best", "seed", "precision")
RUN_FILES = ("config.yaml", "summary.json", "eval.json", "metrics.jsonl")
MAX_RUN_FILE = 32 * 2**20  # bytes: far above a run's small files; a larger one is not a run's summary
STORES = ("auto", "fp32", "fp16")


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_weights(model: dict, store: str) -> dict:
    """The state dict as it travels: floating-point tensors in fp16 for `store` == "fp16"."""
    if store == "fp32":
        return dict(model)
    return {k: v.half() if v.is_floating_point() else v for k, v in model.items()}


def place_of(run: Path, root: Path | None) -> str:
    """The run's path under `root` (default: its grandparent), with '/' separators."""
    root = run.parent.parent if root is None else root
    try:
        place = run.resolve().relative_to(root.resolve())
    except ValueError:
        raise UserError(f"{run}: not under --root {root}") from None
    if not place.parts:
        raise UserError(f"{run}: is --root itself; give the run directories below it")
    return place.as_posix()


def pack_run(run: Path, out: Path, root: Path | None = None, store: str = "auto", piece_bytes: int = 15 * 2**20) -> dict:
    """Pack one run directory into `out`; its manifest (also written as `<name>.weights.json`)."""
    if not run.is_dir():
        raise UserError(f"{run}: not a run directory")
    path = run / "checkpoint_best.pt"
    ckpt = load_checkpoint(path)
    model_from_checkpoint(ckpt, path)  # the schema check: architecture, shapes, dtypes, finite weights
    if store == "auto":
        store = "fp16" if run_precision(ckpt, run) == "fp16" else "fp32"
    kept = {k: ckpt[k] for k in KEPT if k in ckpt}
    kept["model"] = stored_weights(ckpt["model"], store)
    files = {}
    for name in RUN_FILES:
        f = run / name
        if f.is_file():
            if f.stat().st_size > MAX_RUN_FILE:
                raise UserError(f"{f}: {f.stat().st_size} bytes, more than a run's small file can be "
                                f"({MAX_RUN_FILE} bytes); is this a run directory of src.train?")
            files[name] = f.read_text(encoding="utf-8")
    place = place_of(run, root)
    name = place.replace("/", "_")
    buf = io.BytesIO()
    torch.save({"schema": SCHEMA, "place": place, "store": store, "checkpoint": kept, "files": files}, buf)
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    if len(data) <= piece_bytes:
        chunks = [(f"{name}.weights.pt", data)]
    else:
        count = math.ceil(len(data) / piece_bytes)
        chunks = [(f"{name}.weights.pt.part{i:03d}", data[i * piece_bytes:(i + 1) * piece_bytes]) for i in range(count)]
    for file, chunk in chunks:
        atomic_write_bytes(out / file, chunk)
    manifest = {"schema": "weights-manifest/1", "run": str(run), "place": place, "store": store,
                "trained_precision": run_precision(ckpt, run), "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
                "bytes": len(data), "sha256": _sha256(data),
                "pieces": [{"file": file, "bytes": len(chunk), "sha256": _sha256(chunk)} for file, chunk in chunks],
                "note": ("weights rounded to fp16 (the training precision of every matrix product); embeddings, norms "
                         "and biases differ from the fp32 master weights by that rounding") if store == "fp16"
                else "weights bit for bit as trained"}
    atomic_write_json(out / f"{name}.weights.json", manifest)
    return manifest


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable manifest ({type(err).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != "weights-manifest/1":
        raise UserError(f"{path}: not a manifest of python -m scripts.carry_weights pack")
    pieces, place = manifest.get("pieces"), manifest.get("place")
    if not isinstance(pieces, list) or not pieces or not isinstance(place, str):
        raise UserError(f"{path}: manifest without pieces or place")
    if Path(place).is_absolute() or ".." in Path(place).parts:
        raise UserError(f"{path}: place {place!r} would write outside --runs-dir")
    if not all(isinstance(p, dict) and isinstance(p.get("file"), str) and isinstance(p.get("sha256"), str)
               for p in pieces):
        raise UserError(f"{path}: every piece must name its file and sha256")
    for key, ok, what in (("sha256", _is_sha256, "64 hexadecimal digits"), ("bytes", _is_size, "a whole number of bytes")):
        if key not in manifest:
            raise UserError(f"{path}: '{key}' is missing (the packed file's {what}); pack the run again")
        if not ok(manifest[key]):
            raise UserError(f"{path}: '{key}' must be {what}, got {str(manifest[key])[:80]!r}; pack the run again")
    return manifest


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def joined(manifest: dict, where: Path, manifest_path: Path) -> bytes:
    """The packed file, its pieces checked one by one and together against the manifest."""
    parts = []
    for piece in manifest["pieces"]:
        file = where / str(piece.get("file"))
        if not file.is_file():
            raise UserError(f"{file}: piece missing (listed in {manifest_path}); copy every piece of the pack")
        data = file.read_bytes()
        if _sha256(data) != piece.get("sha256"):
            raise UserError(f"{file}: sha256 differs from {manifest_path}: the piece is damaged or from another pack")
        parts.append(data)
    data = b"".join(parts)
    if _sha256(data) != manifest.get("sha256"):
        raise UserError(f"{manifest_path}: the joined pieces do not give the packed file (sha256 differs)")
    return data


def _malformed(packed: dict) -> str | None:
    """What is wrong with a pack's structure (a pack whose sha256 matched, so written by another version or
    by hand), or None."""
    ckpt, files = packed.get("checkpoint"), packed.get("files")
    if not isinstance(packed.get("store"), str):
        return "no store"
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        return "no checkpoint with a model"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        return "the model holds something other than named tensors"
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return "its small files are not texts by name"
    return None


def unpack_run(manifest_path: Path, runs_dir: Path, results_dir: Path | None = None,
               skip_existing: bool = False, force: bool = False) -> Path | None:
    """Restore one packed run below `runs_dir` (and its small files below `results_dir`); its directory,
    or None where `skip_existing` and the run already has a checkpoint (left as it is)."""
    manifest = read_manifest(manifest_path)
    if skip_existing and (runs_dir / manifest["place"] / "checkpoint_best.pt").exists():
        return None
    data = joined(manifest, manifest_path.parent, manifest_path)
    try:
        packed = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # sha256 matched, so this is a pack of another version or a bug
        raise UserError(f"{manifest_path}: the packed file does not load ({type(err).__name__})") from None
    if not isinstance(packed, dict) or packed.get("schema") != SCHEMA:
        raise UserError(f"{manifest_path}: the packed file is not a {SCHEMA} pack")
    malformed = _malformed(packed)
    if malformed:
        raise UserError(f"{manifest_path}: the packed file is not a well-formed {SCHEMA} pack: {malformed}")
    ckpt = packed["checkpoint"]
    cfg = checked_model_config(ckpt.get("model_config"), manifest_path)
    want = CompactTransformer(cfg).state_dict()
    ckpt["model"] = {k: v.to(want[k].dtype) if k in want and v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}
    model_from_checkpoint(ckpt, manifest_path)  # the same schema check as every reader's
    place = manifest["place"]
    parts = place.split("/") if isinstance(place, str) else [""]
    for part in parts:  # RUNS_DIR/<place> stays inside RUNS_DIR
        check_name(part, f"{manifest_path}: place {str(place)[:80]!r}: the name")
    run = runs_dir.joinpath(*parts)
    target = run / "checkpoint_best.pt"
    if target.exists() or target.is_symlink():
        raise UserError(f"{target}: exists already; unpack into another --runs-dir, or move the run away first")
    written = [run / name for name in packed["files"] if name in RUN_FILES] + [run / "weights_origin.json"]
    if results_dir is not None:
        written += [results_dir.joinpath(*parts, name) for name in packed["files"] if name in RUN_FILES]
    there = [str(path) for path in written if path.exists() or path.is_symlink()]
    if there and not force:
        raise UserError(f"{manifest_path}: unpacking would replace {len(there)} file(s) of an existing run: "
                        f"{', '.join(there[:4])}{' ...' if len(there) > 4 else ''}; pass --force to replace them, "
                        "or unpack into another --runs-dir / --results-dir")
    for path in there:
        print(f"note: replacing {path} (--force)", file=sys.stderr)
    run.mkdir(parents=True, exist_ok=True)
    atomic_save(ckpt, target)
    for name, text in packed["files"].items():
        if name in RUN_FILES:
            atomic_write_text(run / name, text)
            if results_dir is not None:
                results_dir.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                atomic_write_text(results_dir.joinpath(*parts, name), text)
    atomic_write_json(run / "weights_origin.json", {
        "unpacked_from": str(manifest_path), "packed_run": manifest.get("run"), "store": packed["store"],
        "trained_precision": manifest.get("trained_precision"), "note": manifest.get("note")})
    return run


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m scripts.carry_weights", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{pack,unpack}")
    pk = sub.add_parser("pack", help="runs' weights and small files into pieces", description="Pack runs' weights.")
    pk.add_argument("runs", nargs="+", type=path_arg, metavar="RUN", help="run directories holding checkpoint_best.pt")
    pk.add_argument("--out", type=path_arg, required=True, help="directory for the pieces and manifests")
    pk.add_argument("--root", type=path_arg, help="each run is named by its path below ROOT (default: the run's "
                    "grandparent: RUNS/<config>/seed<S> -> <config>/seed<S>)")
    pk.add_argument("--store", choices=STORES, default="auto", help="precision of the stored weights: auto = fp16 "
                    "for a run trained in fp16, else fp32 (default: auto); fp32 keeps them bit for bit")
    pk.add_argument("--piece-mib", type=float_in(0.001, 4096), default=15.0,
                    help="largest piece in MiB (default: 15, under a 16 MiB transfer limit)")
    pk.add_argument("--debug", action="store_true", help="show a traceback on error")
    up = sub.add_parser("unpack", help="packed runs back into run directories", description="Unpack packed runs.")
    up.add_argument("packs", type=path_arg, metavar="DIR", help="directory holding the pieces and *.weights.json")
    up.add_argument("--runs-dir", type=path_arg, required=True, help="run directories are written to RUNS_DIR/<place>")
    up.add_argument("--results-dir", type=path_arg, help="also write the small files to RESULTS_DIR/<place> (where "
                    "src.sweep counts a run as finished)")
    up.add_argument("--skip-existing", action="store_true", help="leave a run that already has a checkpoint as "
                    "it is (default: an error)")
    up.add_argument("--force", action="store_true", help="replace the small files (summary.json, eval.json, ...) "
                    "of a run already there, in RUNS_DIR or RESULTS_DIR (default: an error listing them; a "
                    "checkpoint is never replaced)")
    up.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = p.parse_args(argv)
    if args.command == "pack":
        names = {}
        for run in args.runs:
            place = place_of(run, args.root)
            if place.replace("/", "_") in names:
                raise UserError(f"{run} and {names[place.replace('/', '_')]} pack under one name; give --root")
            names[place.replace("/", "_")] = run
        for run in args.runs:
            m = pack_run(run, args.out, args.root, args.store, int(args.piece_mib * 2**20))
            print(f"packed {run} as {m['place']}: {m['bytes']} bytes ({m['store']}) in {len(m['pieces'])} piece(s)")
        return 0
    if not args.packs.is_dir():
        raise UserError(f"{args.packs}: not a directory")
    manifests = sorted(args.packs.glob("*.weights.json"))
    if not manifests:
        raise UserError(f"{args.packs}: no *.weights.json manifest; pack runs with python -m scripts.carry_weights pack")
    for manifest in manifests:
        run = unpack_run(manifest, args.runs_dir, args.results_dir, args.skip_existing, args.force)
        print(f"unpacked {manifest.name} into {run}" if run else f"{manifest.name}: left as it is (its run has a "
              "checkpoint already)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
