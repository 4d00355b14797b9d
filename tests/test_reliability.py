"""Reliability: every bad input is one clear line and exit status 2, every crash is recoverable.

Bad inputs go through the real entry points: in-process through `run_main(main, argv)`, which is
exactly what `python -m src.train` / `python -m src.analysis.evaluate` run, and a handful as subprocesses
to prove the command line itself. Each case checks the exit status, that the message names the
file and line, the config key or the flag, that no traceback is printed, and that nothing in the
output directory was written or changed. The crash scenarios SIGKILL real training processes,
fill the disk (a write that fails with ENOSPC) and make the loss NaN.
docs/RELIABILITY.md lists every case, what the user sees, and the test that checks it.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import src.rundir.atomic
import src.analysis.evaluate
import src.train
import src.training.trainer
from src.rundir.checkpoint import load_checkpoint, model_from_checkpoint
from src.errors import run_main

REPO_ROOT = Path(__file__).resolve().parent.parent
PILOT = REPO_ROOT / "configs" / "pilot.yaml"
HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks behaviour on a machine without CUDA")
GOOD_LINES = (REPO_ROOT / "data" / "pilot_train.jsonl").read_text(encoding="utf-8").splitlines()
# one thread in every training subprocess: the same arithmetic in each, so weights compare bit for bit
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class NotWeights:
    """A custom class: a checkpoint holding one can only be rebuilt by unpickling code."""


# ---------------------------------------------------------------------------- helpers


def tiny_raw(data_dir: Path, **training) -> dict:
    """The pilot config shrunk to d_model 32, 2 layers, on the small data files in `data_dir`."""
    raw = yaml.safe_load(PILOT.read_text(encoding="utf-8"))
    raw["name"] = "tiny"
    raw["model"].update(d_model=32, num_layers=2, num_heads=2, d_ff=64)
    raw["training"].update(batch_size=8, epochs=4, warmup_steps=2, eval_interval=1, save_interval=1,
                           compile=False, cuda_graph=False, max_bad_steps=3)
    raw["training"].update(training)
    raw["data"] = {split: str(data_dir / ("train.jsonl" if split == "train" else "val.jsonl")) for split in raw["data"]}
    return raw


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def write_data(data_dir: Path, n_train: int = 64, n_val: int = 16) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.jsonl").write_text("\n".join(GOOD_LINES[:n_train]) + "\n", encoding="utf-8")
    (data_dir / "val.jsonl").write_text("\n".join(GOOD_LINES[n_train:n_train + n_val]) + "\n", encoding="utf-8")
    return data_dir


def cli(main, argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of an entry point run as its __main__ block runs it."""
    try:
        rc = run_main(main, [str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def expect_error(result, *fragments, code=2, usage=False) -> str:
    """The run failed with `code`, no traceback, and a short message holding every fragment."""
    rc, out, err = result
    assert rc == code, f"exit status {rc}, expected {code}; stderr:\n{err}\nstdout tail:\n{out[-2000:]}"
    assert "Traceback" not in out + err, err
    message = err.strip().splitlines()[-1] if err.strip() else ""
    if usage:  # argparse: usage line(s), then "prog: error: ..."
        assert "error: " in message, err
    else:  # run_main: one line, "error: ..."
        assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in the message:\n{message}"
    return message


def snapshot(directory: Path) -> dict:
    """Name -> bytes of every file in a directory (to prove a failed run changed nothing)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def load_all_checkpoints(run_dir: Path) -> dict:
    """Every checkpoint_*.pt of a run directory, loaded and rebuilt into a model: name -> dict."""
    loaded = {}
    for path in sorted(run_dir.glob("checkpoint_*.pt")):
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path)
        assert all(torch.isfinite(p).all() for p in model.parameters()), path
        loaded[path.name] = ckpt
    assert loaded, f"no checkpoint in {run_dir}"
    return loaded


def assert_same_training(run_a: Path, run_b: Path) -> None:
    """Final weights, optimizer state and every evaluation identical (bit for bit)."""
    a, b = load_checkpoint(run_a / "checkpoint_latest.pt"), load_checkpoint(run_b / "checkpoint_latest.pt")
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"weights {name} differ"
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), f"optimizer state {pid}.{key} differs"
    rows_a = (run_a / "metrics.jsonl").read_text().splitlines()
    rows_b = (run_b / "metrics.jsonl").read_text().splitlines()
    assert rows_a == rows_b
    for name in sorted(p.name for p in run_a.glob("checkpoint_epoch_*.pt")):
        ca, cb = load_checkpoint(run_a / name), load_checkpoint(run_b / name)
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), f"{name} differs"


def train_argv(config: Path, out: Path, *extra) -> list:
    return ["--config", config, "--output-dir", out, "--device", "cpu", "--seed", "7", "--no-progress", *extra]


def run_cli(args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (two threads crawl when other processes hold the
    cores), and one thread count for every in-process run keeps their weights comparable bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Small data files, a tiny config (4 epochs of 8 steps), and two real runs made with it:
    `paused` stopped after epoch 2 (resumable), `finished` ran all 4 epochs."""
    root = tmp_path_factory.mktemp("tiny")
    data_dir = write_data(root / "data")
    config = write_yaml(root / "tiny.yaml", tiny_raw(data_dir))
    runs = {}
    for name, extra in (("paused", ["--stop-after-epoch", "2"]), ("finished", [])):
        rc = run_main(src.train.main, [str(a) for a in train_argv(config, root / name, *extra)])
        assert rc == 0
        runs[name] = root / name
    return {"root": root, "data": data_dir, "config": config, **runs}


def copy_run(tiny, name, tmp_path) -> Path:
    target = tmp_path / name
    shutil.copytree(tiny[name], target)
    return target


def replace_file(path: Path, content: bytes) -> None:
    """New content at `path` without touching the hard links that share its inode."""
    path.unlink()
    path.write_bytes(content)


# ============================================================================ bad inputs: data files

RECORD = {"expr": "(1+2)*3", "result": 9, "depth": [1, 1, 1, 1, 0, 0, 0]}


DROP = object()  # record_line(field=DROP) leaves the field out


def record_line(**changes) -> str:
    obj = {**RECORD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not DROP})


LONG_EXPR = "(" * 12 + "1+2" + ")" * 12  # valid, but 33 tokens as "<BOS>expr = 3<EOS>"

# id -> (file, its bad line 3, what the message must say)
BAD_RECORDS = {
    "blank_line": ("train", "", "empty line"),
    "not_json": ("train", '{"expr": "1+2", "result": 3', "not valid JSON"),
    "not_json_in_val": ("val", '{"expr": "1+2" "result": 3}', "not valid JSON"),
    "not_an_object": ("train", "[1, 2, 3]", "expected a JSON object, got list"),
    "missing_field": ("train", record_line(depth=DROP), "missing field 'depth'"),
    "unknown_field": ("train", record_line(note="x"), "unknown field 'note'"),
    "expr_wrong_type": ("train", record_line(expr=123), "field 'expr' must be a string, got int"),
    "result_wrong_type": ("train", record_line(result="9"), "field 'result' must be an integer, got str"),
    "result_bool": ("train", record_line(result=True), "field 'result' must be an integer, got bool"),
    "depth_wrong_type": ("train", record_line(depth="1110000"), "field 'depth' must be a list of integers"),
    "char_outside_vocabulary": ("train", record_line(expr="1x2", depth=[0, 0, 0]), "has character 'x'"),
    "char_outside_grammar": ("train", record_line(expr="8/2", result=4, depth=[0, 0, 0]), "has character '/'"),
    "invalid_expression": ("train", record_line(expr="1++2", result=3, depth=[0, 0, 0, 0]),
                           "is not a valid expression"),
    "too_many_numbers": ("train", record_line(expr="1+2+3+4+5", result=15, depth=[0] * 9), "has 5 numbers"),
    "result_mismatch": ("train", record_line(result=10),
                        "result 10 does not match expr '(1+2)*3', which evaluates to 9"),
    "result_mismatch_in_val": ("val", record_line(result=-9), "result -9 does not match expr '(1+2)*3'"),
    "depth_mismatch": ("train", record_line(depth=[0] * 7),
                       "does not match expr '(1+2)*3'; expected [1, 1, 1, 1, 0, 0, 0]"),
    "sequence_longer_than_max_seq_len": (
        "val", record_line(expr=LONG_EXPR, result=3, depth=[*range(1, 13), 12, 12, 12, *range(11, -1, -1)]),
        "sequence of 33 tokens (<BOS>expr = result<EOS>) is longer than max_seq_len 32",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_names_file_and_line(case, tiny, tmp_path, capsys):
    split, bad_line, says = BAD_RECORDS[case]
    data = tmp_path / f"{split}.jsonl"
    data.write_text("\n".join([GOOD_LINES[0], GOOD_LINES[1], bad_line, GOOD_LINES[2]]) + "\n", encoding="utf-8")
    raw = tiny_raw(tiny["data"])
    raw["data"][split] = str(data)
    out = tmp_path / "run"
    result = cli(src.train.main, train_argv(write_yaml(tmp_path / "c.yaml", raw), out), capsys)
    expect_error(result, f"{data}:3: ", says)
    assert not out.exists(), "a run that failed on its data must write nothing"


def test_data_file_empty(tiny, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    raw = tiny_raw(tiny["data"])
    raw["data"]["train"] = str(data)
    out = tmp_path / "run"
    result = cli(src.train.main, train_argv(write_yaml(tmp_path / "c.yaml", raw), out), capsys)
    expect_error(result, f"{data}: file is empty")
    assert not out.exists()


def test_data_file_not_utf8(tiny, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_bytes((GOOD_LINES[0] + "\n").encode() + b'{"expr": "1\xff2"}\n')
    raw = tiny_raw(tiny["data"])
    raw["data"]["train"] = str(data)
    out = tmp_path / "run"
    result = cli(src.train.main, train_argv(write_yaml(tmp_path / "c.yaml", raw), out), capsys)
    expect_error(result, f"{data}:2: not UTF-8 text")
    assert not out.exists()


def test_data_file_missing_at_evaluation(tiny, tmp_path, capsys):
    """src.analysis.evaluate reads the test files named in the checkpoint's config; one has been deleted."""
    ckpt = load_checkpoint(tiny["finished"] / "checkpoint_best.pt")
    missing = tmp_path / "moved" / "test_depth3.jsonl"
    ckpt["config"]["data"]["test_depth3"] = str(missing)
    path = tmp_path / "checkpoint_moved_data.pt"
    torch.save(ckpt, path)
    result = cli(src.analysis.evaluate.main, ["--run", tiny["finished"], "--checkpoint", path, "--device", "cpu"], capsys)
    expect_error(result, f"{missing}: data file not found", "python -m src.data")


# ============================================================================ bad inputs: config files


def _drop(section, key):
    def change(raw):
        del raw[section][key]
    return change


def _set(section, key, value):
    def change(raw):
        (raw if section is None else raw[section])[key] = value
    return change


# id -> (change to the tiny config, config key named, what the message must say)
BAD_CONFIGS = {
    "unknown_key": (_set("training", "learning_rat", 1e-3), "training.learning_rat", "unknown key"),
    "missing_key": (_drop("training", "max_bad_steps"), "training.max_bad_steps", "missing key"),
    "wrong_type": (_set("training", "batch_size", "8"), "training.batch_size", "must be int, got '8' (str)"),
    "bool_for_int": (_set("training", "epochs", True), "training.epochs", "must be int, got True (bool)"),
    "section_not_a_mapping": (_set(None, "model", 5), "'model' must be a mapping", ""),
    "non_positive_size": (_set("model", "d_model", 0), "model.d_model", "must be positive, got 0"),
    "zero_heads": (_set("model", "num_heads", 0), "model.num_heads", "must be positive, got 0"),
    "negative_batch_size": (_set("training", "batch_size", -8), "training.batch_size", "must be positive, got -8"),
    "d_model_not_divisible_by_heads": (_set("model", "num_heads", 3), "model.d_model",
                                       "(32) must be divisible by model.num_heads (3)"),
    "odd_head_size": (_set("model", "d_model", 30), "model.d_model", "rotary embedding needs an even one"),
    "wrong_vocab_size": (_set("model", "vocab_size", 36), "model.vocab_size", "must be 35"),
    "bad_loss_on": (_set("training", "loss_on", "answers"), "training.loss_on", "must be one of all, answer"),
    "dropout_out_of_range": (_set("model", "dropout", 1.0), "model.dropout", "must be in [0, 1)"),
    "negative_warmup": (_set("training", "warmup_steps", -1), "training.warmup_steps", "must be zero or positive"),
    "nan_learning_rate": (_set("training", "learning_rate", float("nan")), "training.learning_rate",
                          "must be a finite number, got nan"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_names_file_and_key(case, tiny, tmp_path, capsys):
    change, key, says = BAD_CONFIGS[case]
    raw = tiny_raw(tiny["data"])
    change(raw)
    config = write_yaml(tmp_path / "bad.yaml", raw)
    out = tmp_path / "run"
    expect_error(cli(src.train.main, train_argv(config, out), capsys), f"{config}: ", key, says)
    assert not out.exists(), "a run that failed on its config must write nothing"


def test_config_missing(tmp_path, capsys):
    config, out = tmp_path / "nope.yaml", tmp_path / "run"
    expect_error(cli(src.train.main, train_argv(config, out), capsys), f"{config}: config file not found",
                 "configs/pilot.yaml")
    assert not out.exists()


def test_config_not_yaml(tmp_path, capsys):
    config, out = tmp_path / "broken.yaml", tmp_path / "run"
    config.write_text("name: tiny\nmodel: [1, 2\ntraining: {}\n")
    expect_error(cli(src.train.main, train_argv(config, out), capsys), f"{config}:3: not valid YAML")
    assert not out.exists()


def test_config_not_utf8(tmp_path, capsys):
    config, out = tmp_path / "binary.yaml", tmp_path / "run"
    config.write_bytes(b"name: \xff\xfe\x00\n")
    expect_error(cli(src.train.main, train_argv(config, out), capsys), f"{config}: not a YAML config (not UTF-8")
    assert not out.exists()


def test_config_not_a_mapping(tmp_path, capsys):
    config, out = tmp_path / "list.yaml", tmp_path / "run"
    config.write_text("- model\n- training\n")
    expect_error(cli(src.train.main, train_argv(config, out), capsys), f"{config}: 'top level' must be a mapping")
    assert not out.exists()


def test_config_data_path_does_not_exist(tiny, tmp_path, capsys):
    raw = tiny_raw(tiny["data"])
    raw["data"]["val"] = str(tmp_path / "nope_val.jsonl")
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_error(cli(src.train.main, train_argv(config, out), capsys),
                 f"{config}: key 'data.val' points to {tmp_path / 'nope_val.jsonl'}, which does not exist")
    assert not out.exists()


# ============================================================================ bad inputs: flags and devices


def test_unknown_device(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", tiny["config"], "--output-dir", out, "--device", "tpu"]
    expect_error(cli(src.train.main, argv, capsys), "--device 'tpu'", "use cpu or cuda")
    assert not out.exists()


def test_unknown_device_evaluate(tiny, capsys):
    argv = ["--run", tiny["finished"], "--device", "tpu"]
    expect_error(cli(src.analysis.evaluate.main, argv, capsys), "--device 'tpu'", "use cpu or cuda")


@needs_no_cuda
def test_fp16_without_cuda(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", tiny["config"], "--output-dir", out, "--device", "cpu", "--fp16"]
    expect_error(cli(src.train.main, argv, capsys), "--fp16 needs a CUDA device")
    assert not out.exists()


@needs_no_cuda
def test_gpu_only_without_cuda_is_a_runtime_error_with_exit_1(tiny, tmp_path, capsys):
    """DESIGN.md section 2 makes this a RuntimeError: exit 1 (not 2), still one line and no traceback."""
    out = tmp_path / "run"
    argv = ["--config", tiny["config"], "--output-dir", out, "--device", "cuda", "--gpu-only"]
    expect_error(cli(src.train.main, argv, capsys), "CUDA requested but not available", "--gpu-only", code=1)
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", "abc", str(2**64)])
def test_seed_out_of_range(seed, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", tiny["config"], "--output-dir", out, "--device", "cpu", "--seed", seed]
    expect_error(cli(src.train.main, argv, capsys), "argument --seed", f"{seed}: must be an integer written in digits, at least 0 and at most",
                 usage=True)
    assert not out.exists()


def test_missing_config_flag(tmp_path, capsys):
    expect_error(cli(src.train.main, ["--output-dir", tmp_path / "run"], capsys),
                 "the following arguments are required: --config", usage=True)


def test_stop_after_epoch_not_positive(tiny, tmp_path, capsys):
    argv = train_argv(tiny["config"], tmp_path / "run", "--stop-after-epoch", "0")
    expect_error(cli(src.train.main, argv, capsys), "argument --stop-after-epoch", "0: must be an integer written in digits, at least 1",
                 usage=True)


def test_stop_after_epoch_beyond_epochs(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(tiny["config"], out, "--stop-after-epoch", "9")
    expect_error(cli(src.train.main, argv, capsys), "--stop-after-epoch 9 is beyond training.epochs (4)",
                 tiny["config"])
    assert not out.exists()


# ============================================================================ bad inputs: output directory


def test_output_dir_is_a_file(tiny, tmp_path, capsys):
    out = tmp_path / "a_file"
    out.write_text("not a directory")
    expect_error(cli(src.train.main, train_argv(tiny["config"], out), capsys),
                 f"--output-dir {out}: is an existing file, not a directory")
    assert out.read_text() == "not a directory"


def test_output_dir_under_a_file(tiny, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "run"
    expect_error(cli(src.train.main, train_argv(tiny["config"], out), capsys),
                 f"--output-dir {out}: {tmp_path / 'a_file'} is a file, not a directory, so nothing can be created under it")


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory path that cannot be created or written. Root ignores permission bits, so where
    chmod has no effect a path under /sys is used, which the kernel refuses to create even for root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):
            yield locked / "run"
            return
        candidate = Path("/sys/reliability_test_run")
        try:
            candidate.mkdir()
        except OSError:
            yield candidate
            return
        candidate.rmdir()
        pytest.skip("no directory here refuses writes (running as root, /sys writable)")
    finally:
        locked.chmod(0o755)


def test_output_dir_not_writable(unwritable_dir, tiny, capsys):
    with pytest.raises(OSError):  # the test is meaningful: the path really cannot be written
        unwritable_dir.mkdir(parents=True)
    expect_error(cli(src.train.main, train_argv(tiny["config"], unwritable_dir), capsys),
                 f"--output-dir {unwritable_dir}: cannot be created: {unwritable_dir.parent} is not writable",
                 "choose another directory")


def test_output_dir_already_holds_a_run(tiny, tmp_path, capsys):
    run = copy_run(tiny, "finished", tmp_path)
    before = snapshot(run)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run), capsys),
                 f"--output-dir {run} already holds a run", "--resume")
    assert snapshot(run) == before, "nothing may be overwritten"


# ============================================================================ bad inputs: resume and checkpoints


def test_resume_with_nothing_to_resume(tiny, tmp_path, capsys):
    out = tmp_path / "new_run"
    expect_error(cli(src.train.main, train_argv(tiny["config"], out, "--resume"), capsys),
                 f"--resume: nothing to resume in {out} (no checkpoint_latest.pt)", "start without --resume")
    assert not out.exists()


def test_resume_run_that_died_before_its_first_checkpoint(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    for path in run.glob("checkpoint_*.pt"):
        path.unlink()
    before = snapshot(run)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys),
                 f"nothing to resume in {run}", "stopped before its first checkpoint")
    assert snapshot(run) == before


def test_resume_finished_run(tiny, tmp_path, capsys):
    run = copy_run(tiny, "finished", tmp_path)
    before = snapshot(run)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys),
                 f"--resume: the run in {run} already finished all 4 epochs", "training.epochs = 4")
    assert snapshot(run) == before


def test_resume_stop_after_epoch_already_passed(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    before = snapshot(run)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run, "--resume", "--stop-after-epoch", "1"), capsys),
                 "--stop-after-epoch 1", "already at epoch 2")
    assert snapshot(run) == before


def _truncated(tiny) -> bytes:
    data = (tiny["paused"] / "checkpoint_latest.pt").read_bytes()
    return data[: len(data) // 2]


def _pickled_code(tmp_path) -> bytes:
    path = tmp_path / "evil.pt"
    torch.save({"model": NotWeights(), "model_config": {}}, path)
    return path.read_bytes()


def _saved(tmp_path, obj) -> bytes:
    path = tmp_path / "obj.pt"
    torch.save(obj, path)
    return path.read_bytes()


def _weights_only(tiny, tmp_path) -> bytes:
    ckpt = load_checkpoint(tiny["paused"] / "checkpoint_latest.pt")
    return _saved(tmp_path, {"model": ckpt["model"], "model_config": ckpt["model_config"]})


# id -> (content of checkpoint_latest.pt, what the message must say)
BAD_LATEST = {
    "truncated": (lambda tiny, tmp: _truncated(tiny), "not a readable checkpoint (truncated or corrupt"),
    "empty_file": (lambda tiny, tmp: b"", "not a readable checkpoint (truncated or corrupt"),
    "text_file": (lambda tiny, tmp: b"hello, not a checkpoint\n", "not a readable checkpoint (truncated or corrupt"),
    "pickled_code": (lambda tiny, tmp: _pickled_code(tmp),
                     "refused by torch.load(weights_only=True): the file holds an object of class"),
    "not_a_checkpoint_dict": (lambda tiny, tmp: _saved(tmp, torch.zeros(3)), "not a checkpoint of this project"),
    "no_training_state": (_weights_only, "holds weights but no training state"),
}


@pytest.mark.parametrize("case", list(BAD_LATEST))
def test_resume_from_bad_checkpoint(case, tiny, tmp_path, capsys):
    make, says = BAD_LATEST[case]
    content = make(tiny, tmp_path)
    run = copy_run(tiny, "paused", tmp_path)
    replace_file(run / "checkpoint_latest.pt", content)
    before = snapshot(run)
    message = expect_error(cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys),
                           f"{run / 'checkpoint_latest.pt'}: ", says)
    if case == "pickled_code":
        assert "NotWeights" in message
    assert snapshot(run) == before, "a failed resume must change nothing"


def test_resume_from_another_architecture(tiny, tmp_path, capsys):
    """The user resumes a run with the wrong config: d_model 64 against a d_model 32 checkpoint."""
    raw = tiny_raw(tiny["data"])
    raw["model"]["d_model"] = 64
    config = write_yaml(tmp_path / "wider.yaml", raw)
    run = copy_run(tiny, "paused", tmp_path)
    before = snapshot(run)
    expect_error(cli(src.train.main, train_argv(config, run, "--resume"), capsys),
                 f"--resume: a resumed run keeps its own config and seed, and these differ from the run in {run}",
                 f"model.d_model: run 32, {config} 64")
    assert snapshot(run) == before


def test_evaluate_run_without_checkpoints(tmp_path, capsys):
    run = tmp_path / "empty_run"
    run.mkdir()
    expect_error(cli(src.analysis.evaluate.main, ["--run", run, "--device", "cpu"], capsys),
                 f"{run / 'checkpoint_best.pt'}: no best checkpoint in run directory", "python -m src.train")
    assert not any(run.iterdir())


def test_evaluate_checkpoint_path_missing(tiny, tmp_path, capsys):
    path = tmp_path / "nope.pt"
    expect_error(cli(src.analysis.evaluate.main, ["--run", tiny["finished"], "--checkpoint", path, "--device", "cpu"], capsys),
                 f"{path}: checkpoint not found")


def test_evaluate_truncated_checkpoint(tiny, tmp_path, capsys):
    path = tmp_path / "half.pt"
    path.write_bytes(_truncated(tiny))
    expect_error(cli(src.analysis.evaluate.main, ["--run", tiny["finished"], "--checkpoint", path, "--device", "cpu"], capsys),
                 f"{path}: not a readable checkpoint (truncated or corrupt")


def test_evaluate_weights_do_not_fit_model_config(tiny, tmp_path, capsys):
    ckpt = load_checkpoint(tiny["finished"] / "checkpoint_best.pt")
    ckpt["model_config"]["d_ff"] = 128  # the weights are d_ff 64
    path = tmp_path / "mismatch.pt"
    torch.save(ckpt, path)
    expect_error(cli(src.analysis.evaluate.main, ["--run", tiny["finished"], "--checkpoint", path, "--device", "cpu"], capsys),
                 f"{path}: weights do not fit the model (size mismatch for ")


def test_evaluate_model_config_not_a_compact_transformer(tiny, tmp_path, capsys):
    ckpt = load_checkpoint(tiny["finished"] / "checkpoint_best.pt")
    ckpt["model_config"]["num_experts"] = 8
    path = tmp_path / "alien.pt"
    torch.save(ckpt, path)
    expect_error(cli(src.analysis.evaluate.main, ["--run", tiny["finished"], "--checkpoint", path, "--device", "cpu"], capsys),
                 f"{path}: model_config does not describe a CompactTransformer")


# ============================================================================ the real entry points


@pytest.mark.slow  # the command line's side; test_debug_raises_the_error_for_its_traceback is the fast check
def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "nope.yaml"
    proc = run_cli(["-m", "src.train", "--config", config, "--output-dir", tmp_path / "run", "--device", "cpu",
                    "--debug"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    assert f"{config}: config file not found" in proc.stderr


def test_debug_raises_the_error_for_its_traceback(tmp_path, capsys):
    """In-process: with --debug, run_main lets the UserError through, so Python prints its traceback."""
    from src.errors import UserError
    config = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="config file not found") as raised:
        run_main(src.train.main, [str(a) for a in ("--config", config, "--output-dir", tmp_path / "run",
                                                   "--device", "cpu", "--debug")])
    assert f"{config}: config file not found" in str(raised.value)
    assert capsys.readouterr().err == ""  # not the short message: the traceback replaces it


def _subprocess_cases(tiny, tmp_path):
    bad_data = tmp_path / "train.jsonl"
    bad_data.write_text(GOOD_LINES[0] + "\n{not json\n")
    raw = tiny_raw(tiny["data"])
    raw["data"]["train"] = str(bad_data)
    bad_data_config = write_yaml(tmp_path / "bad_data.yaml", raw)
    raw = tiny_raw(tiny["data"])
    raw["model"]["num_heads"] = 3
    bad_heads = write_yaml(tmp_path / "bad_heads.yaml", raw)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_pickled_code(tmp_path))
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    out = tmp_path / "run"
    return {
        "train_config_missing": (["-m", "src.train", "--config", tmp_path / "nope.yaml", "--output-dir", out,
                                  "--device", "cpu"], 2, f"{tmp_path / 'nope.yaml'}: config file not found"),
        "train_data_not_json": (["-m", "src.train", "--config", bad_data_config, "--output-dir", out,
                                 "--device", "cpu"], 2, f"{bad_data}:2: not valid JSON"),
        "evaluate_no_checkpoint": (["-m", "src.analysis.evaluate", "--run", empty_run, "--device", "cpu"], 2,
                                   "no best checkpoint in run directory"),
        "evaluate_pickled_code": (["-m", "src.analysis.evaluate", "--run", tiny["finished"], "--checkpoint", evil,
                                   "--device", "cpu"], 2, "refused by torch.load(weights_only=True)"),
        # verify_10m_config.py's contract (DESIGN.md section 7) is exit 1 with an [ERROR] line
        "verify_bad_config": (["verify_10m_config.py", "--config", bad_heads], 1,
                              "[ERROR] Invalid configuration: " + f"{bad_heads}: key 'model.d_model'"),
    }


# one real subprocess per entry point; the other cases run in-process, as the __main__ block runs them
SUBPROCESS_CASES = ["train_config_missing", "evaluate_no_checkpoint", "verify_bad_config"]
IN_PROCESS_CASES = ["train_data_not_json", "evaluate_pickled_code"]
MODULE_MAINS = {"src.train": src.train.main, "src.analysis.evaluate": src.analysis.evaluate.main}


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_real_entry_point_reports_bad_input_without_traceback(case, tiny, tmp_path):
    argv, code, says = _subprocess_cases(tiny, tmp_path)[case]
    proc = run_cli(argv)
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, output
    assert "Traceback" not in output
    assert says in output, output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", IN_PROCESS_CASES)
def test_entry_point_reports_bad_input_without_traceback_in_process(case, tiny, tmp_path, capsys):
    argv, code, says = _subprocess_cases(tiny, tmp_path)[case]
    assert argv[0] == "-m"
    rc, out, err = cli(MODULE_MAINS[argv[1]], argv[2:], capsys)
    output = out + err
    assert rc == code, output
    assert "Traceback" not in output
    assert says in output, output
    assert not (tmp_path / "run").exists()


# ============================================================================ crash 1: SIGKILL, then --resume

CRASH_EPOCHS = 8


@pytest.fixture(scope="module")
def crash(tmp_path_factory) -> dict:
    """A config of 8 epochs x 32 steps, a checkpoint every epoch, and the run that never stopped."""
    root = tmp_path_factory.mktemp("crash")
    data_dir = write_data(root / "data", n_train=256, n_val=16)
    config = write_yaml(root / "crash.yaml", tiny_raw(data_dir, epochs=CRASH_EPOCHS, warmup_steps=8))
    reference = root / "uninterrupted"
    proc = run_cli(["-m", "src.train", *train_argv(config, reference)])
    assert proc.returncode == 0, proc.stderr
    seconds = json.loads((reference / "summary.json").read_text())["wall_time_s"]  # after start-up
    return {"root": root, "config": config, "reference": reference, "seconds": seconds}


def resume(crash, run: Path) -> subprocess.CompletedProcess:
    proc = run_cli(["-m", "src.train", *train_argv(crash["config"], run, "--resume")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "Resuming from epoch" in proc.stdout
    return proc


def killed_run(crash, run: Path, point: str, signal_name: str = "KILL") -> subprocess.CompletedProcess:
    """A training subprocess that stops itself at a named point (through tests/killpoint.py, which wraps
    src.rundir.atomic's write steps): `<file>[@<n>]:<mid|after>` is half-way through, or just after,
    the n-th write of that file."""
    return run_cli(["-m", "tests.killpoint", f"{point}:{signal_name}", "--", "src.train",
                    *train_argv(crash["config"], run)])


# where a SIGKILL lands -> the checkpoint_latest epoch it leaves behind (one checkpoint per epoch)
KILL_POINTS = {
    "metrics.jsonl@3:after": 2,            # epoch 3 evaluated, its checkpoint not yet written
    "metrics.jsonl@5:mid": 4,              # half-way through rewriting the log
    "checkpoint_epoch_4.pt:mid": 3,        # half-way through a checkpoint
    "checkpoint_latest.pt@4:after": 4,     # latest in place, best not yet linked
    "checkpoint_epoch_8.pt:after": 7,      # the last epoch's checkpoint written, latest not yet
}


@pytest.mark.slow
@pytest.mark.parametrize("point, latest_epoch", list(KILL_POINTS.items()), ids=list(KILL_POINTS))
def test_sigkill_at_a_named_point_then_resume_matches_uninterrupted_run(point, latest_epoch, crash, tmp_path):
    run = tmp_path / "killed"
    proc = killed_run(crash, run, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run / "summary.json").exists()
    assert load_all_checkpoints(run)["checkpoint_latest.pt"]["epoch"] == latest_epoch  # every checkpoint loads
    if point.endswith(":mid"):  # the half-written temporary file is there, and unreadable
        name = point.split("@")[0].split(":")[0]
        halves = list(run.glob(f".{name}.*.tmp"))  # the writer's own temporary file
        assert len(halves) == 1 and halves[0].is_file()
        half = halves[0]
        if half.suffix == ".tmp" and half.stem.endswith(".pt"):
            with pytest.raises(Exception):
                torch.load(half, weights_only=True)
    assert (run / ".lock").read_text().startswith("PID ")  # left behind by the killed process

    proc = resume(crash, run)

    assert "no longer holds it (it was killed); taking it over" in proc.stderr

    assert_same_training(crash["reference"], run)
    assert len(load_all_checkpoints(run)) == CRASH_EPOCHS + 2  # every epoch, latest, best
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp")), "temporary files are removed on resume"
    assert not (run / ".lock").exists(), "the lock is released at the end"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_sigkill_after_the_last_checkpoint_resume_finishes_without_training(crash, tmp_path):
    """Failure 1 of the issue: killed after the final checkpoint_latest.pt, before checkpoint_best.pt
    and summary.json. --resume finishes the run (best, summary) and trains no step."""
    run = tmp_path / "killed_at_the_end"
    proc = killed_run(crash, run, f"checkpoint_latest.pt@{CRASH_EPOCHS}:after")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == CRASH_EPOCHS
    assert not (run / "summary.json").exists()
    reference_best = load_checkpoint(crash["reference"] / "checkpoint_best.pt")
    best_was_last = reference_best["epoch"] == CRASH_EPOCHS
    if best_was_last:  # the kill came before checkpoint_best.pt was linked: it is stale
        assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] < CRASH_EPOCHS

    proc = run_cli(["-m", "src.train", *train_argv(crash["config"], run, "--resume")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "Finishing the run" in proc.stdout and "epoch 1/" not in proc.stdout + proc.stderr

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == CRASH_EPOCHS
    assert summary["steps"] == json.loads((crash["reference"] / "summary.json").read_text())["steps"]
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == reference_best["epoch"]
    assert_same_training(crash["reference"], run)
    # and now it is finished: a second --resume says so
    proc = run_cli(["-m", "src.train", *train_argv(crash["config"], run, "--resume")])
    assert proc.returncode == 2 and "already finished" in proc.stderr


# ============================================================================ crash 2: the disk fills up


def full_disk_on(call: int, real, write_half):
    """A replacement for a write function that fails like a full disk on its `call`-th use, after
    writing part of its data (as a real ENOSPC does)."""
    calls = [0]

    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            write_half(*args)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    return write


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB file system (tmpfs), where mounting one is allowed (root, Linux); else None."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True).returncode == 0
    yield mount_point if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(directory: Path, leave: int) -> Path:
    """Fill the file system of `directory` up to `leave` free bytes; returns the filler file."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    size = st.f_bavail * st.f_frsize - leave
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * 2**20
        while size > 0:
            size -= fh.write(chunk[: min(size, len(chunk))])
    return filler


# tmpfs-<KiB>: a real full disk with that much room left when epoch 3's checkpoint is written (where
# the disk runs out within torch's zip records decides whether torch.save straight into the file
# raised OSError or RuntimeError "unexpected pos": with this tiny model, 24 and 48 KiB gave the latter)
@pytest.mark.parametrize("disk", ["tmpfs-16", "tmpfs-24", "tmpfs-48", "patched_write"])
def test_full_disk_while_writing_a_checkpoint_keeps_previous_checkpoints(disk, small_disk, tiny, tmp_path, capsys,
                                                                         monkeypatch):
    """The disk fills up while epoch 3's checkpoint is written. On a real full file system (a small
    tmpfs), torch.save straight into the file used to raise RuntimeError "unexpected pos" with a
    traceback; where no tmpfs can be mounted, the write raises the real ENOSPC half-way through."""
    if disk.startswith("tmpfs") and small_disk is None:
        pytest.skip("mounting a tmpfs is not allowed here; the patched_write case covers the same path")
    run = (small_disk if disk.startswith("tmpfs") else tmp_path) / "full"
    assert cli(src.train.main, train_argv(tiny["config"], run, "--stop-after-epoch", "2"), capsys)[0] == 0
    if disk.startswith("tmpfs"):
        filler = fill_disk(run, leave=int(disk.split("-")[1]) * 1024)  # room for a metrics row, not for a checkpoint
    else:
        real = src.rundir.atomic.write_synced

        def write_synced(path, data):
            if src.rundir.atomic.target_name(path) == "checkpoint_epoch_3.pt":  # its temporary file, whatever its name
                real(path, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, data)

        monkeypatch.setattr(src.rundir.atomic, "write_synced", write_synced)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys),
                 f"{run / 'checkpoint_epoch_3.pt'}: could not be written (No space left on device",
                 "the previous version, if any, is intact", "The disk is full", "--resume")
    monkeypatch.undo()
    checkpoints = load_all_checkpoints(run)
    assert sorted(checkpoints) == ["checkpoint_best.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt",
                                   "checkpoint_latest.pt"]
    assert checkpoints["checkpoint_latest.pt"]["epoch"] == 2
    assert not list(run.glob("*.tmp")), "the half-written temporary file is removed"
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped_after_epoch"  # epoch 2's, untouched

    # space freed: the run continues and ends exactly where a run on a roomy disk ends
    if disk.startswith("tmpfs"):
        filler.unlink()
    assert cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys)[0] == 0
    assert_same_training(tiny["finished"], run)


@pytest.mark.parametrize("name, nth", [("metrics.jsonl", 3), ("summary.json", 1)])
def test_full_disk_while_writing_metrics_or_summary_leaves_no_half_written_file(name, nth, tiny, tmp_path, capsys,
                                                                                monkeypatch):
    """RunDir writes metrics.jsonl (after each evaluation) and summary.json through a temporary file
    and a rename. The disk fills up during the 3rd metrics write / the summary write: the file
    keeps its previous whole content (or stays absent), and no temporary file is left."""
    run = tmp_path / "full"
    real = src.rundir.atomic.write_synced
    writes = []

    def write_synced(path, data):
        if src.rundir.atomic.target_name(path) == name:  # its temporary file, whatever its name
            writes.append(data)
            if len(writes) == nth:
                real(path, data[: len(data) // 2])  # a partial write, then the error
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(src.rundir.atomic, "write_synced", write_synced)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run), capsys),
                 f"{run / name}: could not be written (No space left on device", "The disk is full")
    monkeypatch.undo()
    assert len(writes) == nth
    assert not list(run.glob("*.tmp")), "the half-written temporary file is removed"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # whole rows only
    done = nth - 1 if name == "metrics.jsonl" else 4
    assert [r["epoch"] for r in rows] == list(range(1, done + 1))
    assert not (run / "summary.json").exists()
    assert load_all_checkpoints(run)["checkpoint_latest.pt"]["epoch"] == done


# ============================================================================ crash 3: non-finite values


def nan_loss_on(monkeypatch, bad_steps) -> dict:
    """Make the loss NaN at the given (1-based) training steps; returns the call record."""
    real = src.training.trainer.Trainer._plain_loss
    seen = {"steps": 0, "trainer": None}

    def loss(self, inputs, labels):
        seen["steps"] += 1
        seen["trainer"] = self
        value = real(self, inputs, labels)
        return value * float("nan") if bad_steps(seen["steps"]) else value

    monkeypatch.setattr(src.training.trainer.Trainer, "_plain_loss", loss)
    return seen


def test_nan_loss_stops_after_max_bad_steps_with_last_good_checkpoint_intact(tiny, tmp_path, capsys, monkeypatch):
    """From step 21 (epoch 3 of 8-step epochs) every loss is NaN; max_bad_steps is 3. The streak is
    checked at progress refreshes and epoch ends, so the run stops at the first check after the
    streak reaches 3: here the end of epoch 3. Epochs 1 and 2 were checkpointed."""
    run = tmp_path / "nan"
    seen = nan_loss_on(monkeypatch, lambda step: step > 20)
    message = expect_error(cli(src.train.main, train_argv(tiny["config"], run), capsys),
                           "consecutive steps had a non-finite loss or gradient", "training.max_bad_steps = 3",
                           "the last good checkpoint is intact", code=3)
    monkeypatch.undo()
    bad = seen["steps"] - 20
    assert bad >= 3 and f"stopped: {bad} consecutive steps" in message
    trainer = seen["trainer"]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), "a NaN step must not touch the weights"

    checkpoints = load_all_checkpoints(run)
    assert checkpoints["checkpoint_latest.pt"]["epoch"] == 2
    assert (run / "checkpoint_latest.pt").read_bytes() == (run / "checkpoint_epoch_2.pt").read_bytes()
    assert checkpoints["checkpoint_best.pt"]["epoch"] <= 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_non_finite"
    assert summary["skipped_steps"] == bad and isinstance(summary["skipped_steps"], int)
    assert summary["epochs"] == 2 and summary["steps"] == seen["steps"]
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_isolated_nan_steps_are_skipped_and_counted(tiny, tmp_path, capsys, monkeypatch):
    """Two separate bad steps (a streak of 1 each, under max_bad_steps 3): skipped, counted, run completes."""
    run = tmp_path / "two_nans"
    nan_loss_on(monkeypatch, lambda step: step in (5, 13))
    rc, out, err = cli(src.train.main, train_argv(tiny["config"], run), capsys)
    monkeypatch.undo()
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["skipped_steps"] == 2
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 2, 2, 2]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    load_all_checkpoints(run)


@pytest.mark.gpu
def test_fp16_overflow_steps_are_skipped_and_reported(tiny, tmp_path, capsys, monkeypatch):
    """FP16 on CUDA: with a loss scale of 2**24 the first steps overflow in float16; the dynamic scale
    backs off, the steps are skipped, and summary.json counts them."""
    raw = tiny_raw(tiny["data"], epochs=3, max_bad_steps=50)
    config = write_yaml(tmp_path / "fp16.yaml", raw)
    monkeypatch.setattr(src.train, "INIT_SCALE", 2.0**24)
    run = tmp_path / "fp16"
    rc, out, err = cli(src.train.main, ["--config", config, "--output-dir", run, "--device", "cuda", "--fp16",
                                        "--no-progress"], capsys)
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"].startswith("fp16") and summary["status"] == "completed"
    assert isinstance(summary["skipped_steps"], int) and 1 <= summary["skipped_steps"] < summary["steps"]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == summary["skipped_steps"]
    load_all_checkpoints(run)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    """Ctrl-C ends with a short message, not a traceback; --debug re-raises."""
    from src.errors import run_main

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, []) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    with pytest.raises(KeyboardInterrupt):
        run_main(interrupted, ["--debug"])
