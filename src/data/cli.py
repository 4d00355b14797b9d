"""The command line of src.data: `python -m src.data` (src/data/__main__.py runs `main`).

    python -m src.data --seed 42 --out data     # writes the six files of docs/DESIGN.md sections 4 and 5
    python -m src.data --train-size 200000      # data/generated/train_200000.jsonl (src/data/trainsets.py, section 8)
    python -m src.data --fresh-test 2026        # fresh test files that avoid every shipped and training expression
    python -m src.data --train-size 2000000 --near-twin-free   # data/generated/train_nt_2000000.jsonl
    python -m src.data --counterfactual-against 2000000        # the pair files, also free of train_2000000's near twins

Besides the six files, the default command writes the precedence pairs (src/data/precedence.py) and the
counterfactual pair files with their manifest (src/data/counterfactual.py), all byte for byte.

Apart from the library (src/data/__init__.py: grammar, generator, loading, batching), so that the
training sets (src.data.trainsets), which build on the library's generator, and this command, which
writes them, import one another in one direction only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from src.data import trainsets
from src.cli import MAX_SEED, int_in
from src.config import GENERATED_DIR, MAX_TRAIN_SIZE, REPO_ROOT
from src.data import (MATCHED_SPLIT, MAX_FRESH_EXCLUDE, SPLITS, check_max_seq_len, generate_splits, load_jsonl,
                      split_minimums, write_splits)
from src.rundir.paths import check_output_dir
from src.data.canonical import canonical_set, training_forms
from src.data.counterfactual import write_counterfactuals
from src.data.precedence import PRECEDENCE_SOURCE, PRECEDENCE_SPLIT, generate_precedence
from src.errors import UserError

# the near twins of a generated training set that the counterfactual generator met, found by
# --counterfactual-against and read back by every later generation with that seed (a shipped input)
TWINS_FILE = "counterfactual_train_twins.json"
TWINS_SCHEMA = "counterfactual_train_twins/1"
from src.signals import StopSignals

# ---------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.data",
        description="Generate the six data files of docs/DESIGN.md sections 4 and 5, the precedence pairs and the "
        "counterfactual pair files of docs/CAUSAL_MODELS.md, or with --train-size a larger training set for the "
        "learnability extension (section 8).",
    )
    parser.add_argument("--seed", type=int_in(0, MAX_SEED), default=None,  # random.Random(-s) is random.Random(s)
                        help=f"random seed of the six files, 0 to {MAX_SEED} (default 42, as the shipped files)")
    # a string, not a Path: Path("") would be ".", and an empty --out must be an error, not the current directory
    parser.add_argument("--out", default=None,
                        help="directory to write into (created if missing); default data for the six files, "
                        f"{GENERATED_DIR.relative_to(REPO_ROOT)} of the repository for --train-size")
    parser.add_argument("--max-seq-len", type=_positive_int, default=None,
                        help=f"longest sequence allowed, in tokens (at least {max(t for t, _ in split_minimums().values())}, "
                        "the shortest depth-3 sequence; default 32)")
    parser.add_argument("--train-size", type=trainsets.parse_train_size, metavar="N",
                        help="instead of the six files, write train_N.jsonl: the first N lines of one fixed stream "
                        "whose first 2,000 lines are data/pilot_train.jsonl and whose later lines are drawn by the same "
                        "generator (seed 42, depths 0-2 in turn, max_seq_len 32), no expression twice and none from "
                        "the shipped val and test files; so every set is the start of every larger one. "
                        f"1 to {MAX_TRAIN_SIZE:,}. A sha256 manifest is written beside it; an existing set "
                        "is verified and kept, a damaged one is remade. Byte for byte the same on any machine, with any "
                        "number of processes; 2,000,000 take about 40 s on two cores")
    parser.add_argument("--fresh-test", type=int_in(0, 2**63 - 1), default=None, metavar="SEED",
                        help="instead of the six files, write fresh test files (test_flat, test_paren, test_depth3 and "
                        "the matched pairs, named as the shipped ones) drawn by the same generator with this seed, "
                        "holding no expression of any shipped file nor of the training set of --exclude-train "
                        "expressions (generated if missing): expressions no model of the repository has seen. Default "
                        "--out: data/generated/fresh_SEED. Evaluate a run on them with "
                        "`python -m src.analysis.evaluate --run D --data-dir DIR`")
    parser.add_argument("--exclude-train", type=trainsets.parse_train_size, default=MAX_FRESH_EXCLUDE, metavar="N",
                        help="with --fresh-test: the generated training set whose expressions the fresh files must avoid "
                        "(default: %(default)s, the largest of the extension; every smaller one is its start)")
    parser.add_argument("--processes", type=int_in(1, 1024), default=None, metavar="P",
                        help="with --train-size: processes that draw the set (default: the CPU cores available, "
                        "at most 16); "
                        "the output does not depend on it")
    parser.add_argument("--near-twin-free", action="store_true",
                        help="with --train-size: write train_nt_N.jsonl instead, the same stream with every line after "
                        "the 2,000-line prefix dropped whose canonical form (redundant brackets dropped, + and * "
                        "chains sorted, - in order) is that of a val, test, matched, precedence or counterfactual "
                        "expression; train_N.jsonl, on which the committed extension results were trained, is unchanged")
    parser.add_argument("--counterfactual-against", type=trainsets.parse_train_size, default=None, metavar="N",
                        help="instead of the six files, regenerate the counterfactual pair files in --out (default "
                        "data) so that no base or source is a near twin of the generated training set train_N "
                        "(generated if missing; its canonical forms are cached beside it), and record the near twins "
                        f"met in {TWINS_FILE}, which every later generation with seed 42 reads")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = parser.parse_args(argv)
    with StopSignals("no partial file is left; run the same command again"):  # SIGTERM too: workers and temporary files go
        return _generate(parser, args)


def _generate(parser, args) -> int:
    if args.fresh_test is not None:
        if args.train_size is not None or args.seed is not None:
            parser.error("--fresh-test takes its own seed; it goes with neither --train-size nor --seed")
        return write_fresh_test(args.fresh_test, args.exclude_train, args.out, args.processes)
    if args.counterfactual_against is not None:
        if args.train_size is not None or args.seed not in (None, 42):
            parser.error("--counterfactual-against regenerates the seed-42 pair files; it takes neither --train-size nor --seed")
        return write_counterfactuals_against(args.counterfactual_against, args.out, args.processes)
    if args.near_twin_free and args.train_size is None:
        parser.error("--near-twin-free goes with --train-size N")
    if args.train_size is not None:
        if args.seed not in (None, trainsets.TRAIN_SEED) or args.max_seq_len not in (None, trainsets.TRAIN_MAX_SEQ_LEN):
            parser.error("--seed and --max-seq-len apply to the six files; a training set is built on the shipped "
                         "ones (seed 42, max_seq_len 32)")
        out = check_output_dir(GENERATED_DIR if args.out is None else args.out, "--out")
        kind = "near_twin_free" if args.near_twin_free else "plain"
        path = trainsets.training_set_path(args.train_size, out, kind)
        trainsets.ensure_training_set(args.train_size, out, processes=args.processes, kind=kind)
        manifest = json.loads(trainsets.manifest_path(path).read_text(encoding="utf-8"))
        print(f"{path}: {args.train_size} records, sha256 {manifest['sha256']} ({trainsets.manifest_path(path).name})")
        return 0
    if args.processes is not None:
        parser.error("--processes applies only with --train-size")
    seed = 42 if args.seed is None else args.seed
    max_seq_len = 32 if args.max_seq_len is None else args.max_seq_len
    out_arg = "data" if args.out is None else args.out
    check_max_seq_len(max_seq_len)  # the flags first, then the output directory: nothing is generated
    check_output_dir(out_arg, "--out")  # or written before every check has passed
    out = Path(out_arg)
    splits = generate_splits(seed, max_seq_len)
    write_splits(splits, out)
    for name, records in splits.items():
        print(f"{out / (name + '.jsonl')}: {len(records)} records")
    write_pair_files(splits, out, seed, max_seq_len)
    return 0


def _split_texts(splits) -> dict[str, str]:
    return {f"{name}.jsonl": "".join(r.to_json() + "\n" for r in records) for name, records in splits.items()}


def write_pair_files(splits, out: Path, seed: int, max_seq_len: int,
                     generated: tuple[str, str, set[str]] | None = None) -> dict:
    """The precedence pairs and the counterfactual pair files drawn from `splits`, written into `out`; returns
    the counterfactual manifest. `generated`: (name, sha256, canonical forms) of a generated training set whose near
    twins to find and record; otherwise those recorded in data/TWINS_FILE for this seed are excluded."""
    from src.rundir.atomic import atomic_write_text

    forms = canonical_set(r.expr for records in splits.values() for r in records)
    precedence = generate_precedence(splits[PRECEDENCE_SOURCE], seed, max_seq_len, forms)
    precedence_text = "".join(p.to_json() + "\n" for p in precedence)
    atomic_write_text(out / f"{PRECEDENCE_SPLIT}.jsonl", precedence_text)
    print(f"{out / (PRECEDENCE_SPLIT + '.jsonl')}: {len(precedence)} records")
    forms |= canonical_set(p.record.expr for p in precedence)
    texts = {**_split_texts(splits), f"{PRECEDENCE_SPLIT}.jsonl": precedence_text}
    sources = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(texts.items())}
    if generated is not None:
        meta = write_counterfactuals(out, seed, forms, sources, generated=generated, max_seq_len=max_seq_len)
    else:
        meta = write_counterfactuals(out, seed, forms, sources, recorded=_recorded_twins(seed), max_seq_len=max_seq_len)
    for name, info in meta["files"].items():
        print(f"{out / name}: {info['lines']} pairs ({', '.join(f'{k} {v}' for k, v in info['by_control'].items())})")
    return meta


def _recorded_twins(seed: int) -> dict | None:
    """The near twins recorded by --counterfactual-against for `seed` (data/TWINS_FILE), or None."""
    path = REPO_ROOT / "data" / TWINS_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err}); restore it with `git checkout {path.relative_to(REPO_ROOT)}`") from None
    if not isinstance(meta, dict) or meta.get("schema") != TWINS_SCHEMA or not isinstance(meta.get("forms"), list):
        raise UserError(f"{path}: not of schema {TWINS_SCHEMA}; restore it with `git checkout data/{TWINS_FILE}`")
    if meta.get("seed") != seed:
        return None
    return {"set": meta["set"], "sha256": meta["sha256"], "forms": meta["forms"]}


def write_counterfactuals_against(n: int, out_arg: str | None, processes: int | None) -> int:
    """The seed-42 pair files, free of the near twins of train_n as well; the twins met recorded in TWINS_FILE."""
    out = Path(check_output_dir("data" if out_arg is None else out_arg, "--out"))
    train = trainsets.ensure_training_set(n, processes=processes)
    forms = training_forms(train, processes=processes or trainsets.default_processes())
    splits = {name: load_jsonl(REPO_ROOT / "data" / f"{name}.jsonl", 32) for name in (*SPLITS, MATCHED_SPLIT)}
    sha256 = json.loads(trainsets.manifest_path(train).read_text(encoding="utf-8"))["sha256"]
    meta = write_pair_files(splits, out, 42, 32, generated=(train.name, sha256, forms))
    twins = meta["recorded_twins"]
    record = {"schema": TWINS_SCHEMA, "seed": 42, "set": train.name, "sha256": sha256,
              "note": f"canonical forms of {train.name} that the counterfactual generator (seed 42) met and rejected; "
                      "later generations exclude them, so the pair files regenerate without the training set",
              "forms": twins["forms"]}
    from src.rundir.atomic import atomic_write_json
    atomic_write_json(out / TWINS_FILE, record)
    print(f"{out / TWINS_FILE}: {len(twins['forms'])} near twins of {train.name} met and excluded")
    return 0


def write_fresh_test(seed: int, exclude_train: int, out_arg: str | None, processes: int | None) -> int:
    """The test files drawn with `seed`, disjoint from every shipped file and from train_<exclude_train>."""
    out = check_output_dir(GENERATED_DIR / f"fresh_{seed}" if out_arg is None else out_arg, "--out")
    seen = {r.expr for name in (*SPLITS, MATCHED_SPLIT) for r in load_jsonl(REPO_ROOT / "data" / f"{name}.jsonl", 32)}
    train = trainsets.ensure_training_set(exclude_train, processes=processes)
    with open(train, "rb") as fh:
        seen.update(json.loads(line)["expr"] for line in fh)
    splits = generate_splits(seed, 32, exclude=seen, only=("pilot_test_flat", "pilot_test_paren", "pilot_test_depth3"))
    write_splits(splits, Path(out))
    for name, records in splits.items():
        print(f"{Path(out) / (name + '.jsonl')}: {len(records)} records, none in the shipped files or {train.name}")
    return 0
