"""src.train as a user runs it: the device policy of DESIGN.md section 2, the run directory of
section 7, resume, the out-of-memory policy, the fast step against the textbook loop, and the
10M launcher. CPU-only: a tiny model (d_model 32, 2 layers) on the real pilot data files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import src.data
import src.train
import src.training.trainer
from src.config import load_config
from src.data import load_jsonl, make_batch
from src.errors import UserError, run_main
from src.model import CompactTransformer
from src.rundir.checkpoint import load_checkpoint
from src.tokenizer import BOS_ID, EOS_ID, IGNORE_INDEX, PAD_ID, encode
from src.train import main
from src.training.reference import reference_training
from src.training.trainer import DeviceData, Trainer
from tests.runs import (
    SUBPROCESS_ENV,
    assert_same_training,
    cli,
    copy_run,
    expect_error,
    load_all_checkpoints,
    pickled_code_checkpoint,
    replace_file,
    saved_bytes,
    snapshot,
    tiny_raw,
    train_argv,
    train_entry,
    truncated_checkpoint,
    write_yaml,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PILOT = REPO_ROOT / "configs" / "pilot.yaml"
HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks behaviour on a machine without CUDA")

EPOCHS = 3
STEPS_PER_EPOCH = 32  # 2000 training examples, batch 64
VAL_METRICS = ("loss", "perplexity", "exact_match", "answer_token_acc", "answer_loss", "end_of_answer_acc")
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "rng", "epoch", "step", "model_config")
ALL_FLAGS = ("--config", "--output-dir", "--seed", "--device", "--fp16", "--gpu-only", "--resume",
             "--stop-after-epoch", "--no-progress", "--debug")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: fast for a model this small, and the same arithmetic on every machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tiny_config(directory: Path, name="tiny.yaml", **training) -> Path:
    """The pilot config shrunk to 18k parameters, data paths absolute, dropout kept at 0.1."""
    raw = yaml.safe_load(PILOT.read_text(encoding="utf-8"))
    raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
    raw["training"].update(batch_size=64, epochs=EPOCHS, eval_interval=1, save_interval=2,
                           warmup_steps=10, learning_rate=3e-3)
    raw["training"].update(training)
    raw["data"] = {k: str(REPO_ROOT / v) for k, v in raw["data"].items()}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(config), "--output-dir", str(out), "--seed", "42", "--device", "cpu",
                 "--no-progress", *extra])


def train_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m src.train ARGS` in a clean working directory, the repository on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def model_tensors(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def full_run(tiny_config, tmp_path_factory):
    """One uninterrupted 3-epoch CPU run, started from an empty working directory; returns
    (working directory, run directory, what the temp dir holds afterwards, data files read)."""
    work = tmp_path_factory.mktemp("work")
    scratch = tmp_path_factory.mktemp("scratch")  # stands in for the system temp dir
    read = []

    def recording_load_jsonl(path, max_seq_len, **kwargs):
        read.append(Path(path))
        return load_jsonl(path, max_seq_len, **kwargs)

    def no_generation(*args, **kwargs):
        raise AssertionError("data generated at train time")

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(tempfile, "tempdir", str(scratch))
        mp.setattr(src.train, "load_jsonl", recording_load_jsonl)
        for name in ("generate_splits", "random_expression", "write_splits"):
            mp.setattr(src.data, name, no_generation)
        assert train(tiny_config, work / "run") == 0
    return work, work / "run", listing(scratch), read


# ---------------------------------------------------------------------------- device policy


@pytest.mark.slow  # the command line's side; test_gpu_only_check_comes_before_anything_else is the fast check
@needs_no_cuda
def test_gpu_only_without_cuda_aborts_before_writing(tmp_path):
    out = tmp_path / "run"
    result = train_cli(tmp_path, "--config", str(PILOT), "--output-dir", str(out), "--seed", "42",
                       "--device", "cuda", "--fp16", "--gpu-only")
    assert result.returncode != 0
    assert "CUDA requested but not available. Aborting." in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert listing(tmp_path) == []


@pytest.mark.slow  # the command line's side; test_gpu_only_check_comes_before_anything_else is the fast check
def test_gpu_only_with_device_cpu_aborts_before_writing(tmp_path):
    out = tmp_path / "run"
    result = train_cli(tmp_path, "--config", str(PILOT), "--output-dir", str(out), "--device", "cpu", "--gpu-only")
    assert result.returncode != 0
    assert "GPU-only mode requires --device cuda" in result.stderr
    assert not out.exists()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("device, message", [
    ("cuda", "CUDA requested but not available. Aborting."),
    ("cpu", "GPU-only mode requires --device cuda"),
], ids=["cuda", "cpu"])
def test_gpu_only_check_comes_before_anything_else(tmp_path, monkeypatch, device, message):
    """In-process: a RuntimeError, and not one config read, data file loaded or model built."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def forbidden(*args, **kwargs):
        raise AssertionError("called before the --gpu-only check")

    for name in ("load_config", "check_data_paths", "load_jsonl", "make_batch", "CompactTransformer", "RunDir"):
        monkeypatch.setattr(src.train, name, forbidden)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=message):
        main(["--config", str(PILOT), "--output-dir", str(out), "--device", device, "--gpu-only"])
    assert not out.exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_no_cuda)])
def test_fp16_without_cuda_is_an_error(tmp_path, device, capsys):
    """In-process, as the __main__ block runs it (the real entry point's exit path is in test_errors.py)."""
    out = tmp_path / "run"
    rc = run_main(main, ["--config", str(PILOT), "--output-dir", str(out), "--device", device, "--fp16"])
    stderr = capsys.readouterr().err
    assert rc != 0
    assert "--fp16 needs a CUDA device" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.slow
def test_cuda_fallback_is_loud_and_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_tiny_config(tmp_path, epochs=1)
    with pytest.warns(RuntimeWarning, match="CUDA requested but not available"):
        rc = main(["--config", str(config), "--output-dir", str(tmp_path / "run"), "--device", "cuda",
                   "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "WARNING: CUDA requested but not available" in captured.err
    assert "[FALLBACK:" in captured.out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device_fallback"] is True
    assert summary["requested_device"] == "cuda" and summary["device"] == "cpu"
    assert "CUDA requested but not available" in summary["fallback_reason"]


# ---------------------------------------------------------------------------- a short CPU run


@pytest.mark.slow
def test_short_run_lowers_training_loss(full_run):
    run = full_run[1]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # eval_interval 1: one object per evaluation
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val"]["loss"] < rows[0]["val"]["loss"]
    for r in rows:
        for key in VAL_METRICS:
            assert isinstance(r["val"][key], float), key


def sparse_eval_config(directory: Path) -> Path:
    """The tiny config with eval_interval 2, on the first lines of the pilot files (2 steps an epoch)."""
    for split, n in (("train", 200), ("val", 20)):
        lines = (REPO_ROOT / "data" / f"pilot_{split}.jsonl").read_text().splitlines()[:n]
        (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    config = write_tiny_config(directory, batch_size=100, eval_interval=2)
    raw = yaml.safe_load(config.read_text())
    raw["data"].update(train=str(directory / "train.jsonl"), val=str(directory / "val.jsonl"))
    config.write_text(yaml.safe_dump(raw))
    return config


def test_every_epoch_writes_its_training_row_and_evaluated_ones_their_validation(tmp_path):
    """eval_interval 2 of 3 epochs: a row for each epoch (training loss, lr, steps), `val` in epochs 2
    and 3 only; the readers and the training-curve figure take both kinds of row."""
    from src.report import figures
    from src.rundir.results import evaluated, metrics_row_problem, read_metrics

    assert train(sparse_eval_config(tmp_path), tmp_path / "run") == 0
    rows, problems = read_metrics(tmp_path / "run" / "metrics.jsonl", check=metrics_row_problem)
    assert problems == []
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [2, 4, 6]
    assert [r["epoch"] for r in evaluated(rows)] == [2, 3] and "val" not in rows[0]
    for r in rows:
        assert isinstance(r["train_loss"], float) and isinstance(r["lr"], float) and r["skipped_steps"] == 0
    assert figures.training_curves([("tiny", rows)]).startswith(b"\x89PNG")


@pytest.mark.slow
def test_resume_after_an_epoch_without_evaluation_writes_the_rows_of_an_uninterrupted_run(tmp_path):
    config = sparse_eval_config(tmp_path)
    assert train(config, tmp_path / "whole") == 0
    out = tmp_path / "resumed"
    assert train(config, out, "--stop-after-epoch", "1") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1: trained, not evaluated
    assert train(config, out, "--resume") == 0
    assert (out / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()


@pytest.mark.slow
def test_run_directory_holds_every_file(full_run, tiny_config):
    work, run, scratch_files, _ = full_run
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint_best.pt", "checkpoint_epoch_2.pt",  # save_interval 2 of 3 epochs
        "checkpoint_latest.pt", "config.yaml", "metrics.jsonl", "summary.json",
    ]
    assert load_config(run / "config.yaml") == load_config(tiny_config)
    # nothing outside the output directory: not in the working directory, not in the temp dir
    assert [p.name for p in work.iterdir()] == ["run"]
    assert [p.name for p in tiny_config.parent.iterdir()] == [tiny_config.name]
    assert scratch_files == []


@pytest.mark.slow
def test_trains_on_the_configured_pilot_files_only(full_run, tiny_config):
    """DESIGN.md section 2: the very files of the config, read as they are; nothing generated."""
    cfg = load_config(tiny_config)
    assert full_run[3] == [cfg.data.path("train"), cfg.data.path("val")]
    assert [p.name for p in full_run[3]] == ["pilot_train.jsonl", "pilot_val.jsonl"]


@pytest.mark.slow
def test_summary_has_the_fields_of_spec_section_7(full_run):
    run = full_run[1]
    summary = json.loads((run / "summary.json").read_text())
    for key in ("device", "gpu_name", "gpu_memory_gb", "precision", "peak_gpu_memory_mb", "steps",
                "wall_time_s", "best_epoch", "best_val_metrics", "device_fallback"):
        assert key in summary, key
    assert summary["device"] == "cpu" and summary["device_fallback"] is False
    assert summary["precision"] == "fp32" and summary["fp16"] is False
    assert summary["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert summary["wall_time_s"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["val"]["loss"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["best_val_metrics"] == best["val"]


@pytest.mark.slow
def test_make_checkpoint_builds_what_src_train_writes(full_run, tmp_path):
    """The one checkpoint builder: its entries are those of a trained run's checkpoint (which adds the
    training state), with the same model_config and config, and load_model reads it back."""
    from src.rundir.atomic import atomic_save
    from src.rundir.checkpoint import load_model, make_checkpoint

    trained = torch.load(full_run[1] / "checkpoint_latest.pt", weights_only=True)
    cfg = load_config(full_run[1] / "config.yaml")
    model = CompactTransformer(cfg.model)
    built = make_checkpoint(cfg, model, epoch=1, step=32, best=trained["best"], seed=42)
    assert set(built) < set(trained)
    assert built["model_config"] == trained["model_config"] and built["config"] == trained["config"]
    atomic_save(built, tmp_path / "checkpoint_best.pt")
    loaded, ckpt = load_model(tmp_path)
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    assert ckpt["seed"] == 42 and ckpt["epoch"] == 1


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(full_run):
    run = full_run[1]
    epochs = {}
    for path in sorted(run.glob("*.pt")):
        ckpt = torch.load(path, weights_only=True)
        for key in CHECKPOINT_KEYS:
            assert key in ckpt, (path.name, key)
        model = CompactTransformer(load_config(run / "config.yaml").model)
        model.load_state_dict(ckpt["model"])
        assert ckpt["step"] == ckpt["epoch"] * STEPS_PER_EPOCH
        epochs[path.name] = ckpt["epoch"]
    summary = json.loads((run / "summary.json").read_text())
    assert epochs == {"checkpoint_epoch_2.pt": 2, "checkpoint_latest.pt": EPOCHS,
                      "checkpoint_best.pt": summary["best_epoch"]}


# ---------------------------------------------------------------------------- determinism and resume


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(full_run, tiny_config, tmp_path):
    run = full_run[1]
    assert train(tiny_config, tmp_path / "again") == 0
    assert (tmp_path / "again" / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert_same_tensors(model_tensors(tmp_path / "again" / "checkpoint_latest.pt"),
                        model_tensors(run / "checkpoint_latest.pt"))


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run(full_run, tiny_config, tmp_path):
    """Dropout is 0.1 in this config, so this also checks that the RNG states are restored."""
    run = full_run[1]
    out = tmp_path / "run"
    assert train(tiny_config, out, "--stop-after-epoch", "1") == 0
    stopped = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    assert stopped["epoch"] == 1 and stopped["step"] == STEPS_PER_EPOCH
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert train(tiny_config, out, "--resume") == 0

    assert (out / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    resumed = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    uninterrupted = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert resumed["epoch"] == uninterrupted["epoch"] == EPOCHS
    assert_same_tensors(resumed["model"], uninterrupted["model"])
    for a, b in zip(resumed["optimizer"]["state"].values(), uninterrupted["optimizer"]["state"].values()):
        assert_same_tensors(a, b)
    assert_same_tensors(model_tensors(out / "checkpoint_best.pt"), model_tensors(run / "checkpoint_best.pt"))
    assert json.loads((out / "summary.json").read_text())["steps"] == EPOCHS * STEPS_PER_EPOCH


@pytest.mark.slow
def test_deterministic_run_equals_the_default_one_on_the_cpu_and_is_recorded(full_run, tmp_path, capsys):
    """training.deterministic switches PyTorch to deterministic kernels for the run's process and is
    recorded; the CPU's kernels are deterministic already, so the run equals the default one bit for
    bit. A later run without it switches the mode off again, and a resume cannot change it."""
    config = write_tiny_config(tmp_path, deterministic=True)
    out = tmp_path / "det"
    try:
        assert train(config, out, "--stop-after-epoch", "1") == 0
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["deterministic"] is True
    with pytest.raises(UserError, match="training.deterministic"):  # resume keeps the run's own config
        main(["--config", str(write_tiny_config(tmp_path / "off")), "--output-dir", str(out), "--resume",
              "--device", "cpu", "--no-progress"])
    assert train(config, out, "--resume") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accelerations"]["deterministic"] is True
    assert json.loads((full_run[1] / "summary.json").read_text())["accelerations"]["deterministic"] is False
    assert (out / "metrics.jsonl").read_bytes() == (full_run[1] / "metrics.jsonl").read_bytes()
    assert_same_tensors(model_tensors(out / "checkpoint_latest.pt"), model_tensors(full_run[1] / "checkpoint_latest.pt"))
    assert train(write_tiny_config(tmp_path / "plain"), tmp_path / "plain_run", "--stop-after-epoch", "1") == 0
    assert not torch.are_deterministic_algorithms_enabled()


def test_resume_with_nothing_to_resume_is_a_clean_error(tiny_config, tmp_path, capsys):
    out = tmp_path / "empty"
    rc = run_main(main, ["--config", str(tiny_config), "--output-dir", str(out), "--device", "cpu", "--resume"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "--resume: nothing to resume" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_existing_run_is_not_overwritten(full_run, tiny_config, capsys):
    run = full_run[1]
    before = file_bytes(run)
    rc = run_main(main, ["--config", str(tiny_config), "--output-dir", str(run), "--device", "cpu",
                         "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "already holds a run" in err and "--resume" in err
    assert file_bytes(run) == before


# ---------------------------------------------------------------------------- out of memory


def test_out_of_memory_ends_the_run_without_retry(tiny_config, tmp_path, monkeypatch, capsys):
    calls = []

    def run_step(self):
        calls.append((self.cfg.training.batch_size, self.data.batch_size, self.cfg.model))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "run_step", run_step)
    config_text = tiny_config.read_text()
    argv = ["--config", str(tiny_config), "--output-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]
    with pytest.raises(UserError) as err:
        main(argv)
    message = str(err.value)
    for key in ("training.batch_size", "model.d_model", "model.num_layers", "model.d_ff"):
        assert key in message, key
    assert "Nothing was retried" in message
    assert len(calls) == 1  # no second attempt
    cfg = load_config(tiny_config)
    assert calls[0] == (cfg.training.batch_size, cfg.training.batch_size, cfg.model)
    assert tiny_config.read_text() == config_text
    assert not list((tmp_path / "run").glob("*.pt"))

    # as the command line reports it: a message, a non-zero exit, no traceback
    capsys.readouterr()
    rc = run_main(main, ["--config", str(tiny_config), "--output-dir", str(tmp_path / "run2"), "--device", "cpu",
                         "--no-progress"])
    stderr = capsys.readouterr().err
    assert rc != 0 and "training.batch_size" in stderr and "Traceback" not in stderr
    assert len(calls) == 2  # one call for each of the two runs


# ---------------------------------------------------------------------------- fast path vs textbook loop


def reference_rows(records: list[dict], width: int, loss_on: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels built here from the records' text alone (no src.data batching, no
    DeviceData): the labels are the next tokens of `<BOS>expr = result<EOS>`, and with loss_on
    "answer" only those of the result's digits and <EOS> count."""
    inputs = torch.full((len(records), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(records), width), IGNORE_INDEX, dtype=torch.long)
    for i, rec in enumerate(records):
        prompt = [BOS_ID] + encode(rec["expr"] + " = ")
        seq = prompt + encode(str(rec["result"])) + [EOS_ID]
        inputs[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        for j in range(1, len(seq)):  # the label at input position j - 1 is token j
            if loss_on == "all" or j >= len(prompt):
                labels[i, j - 1] = seq[j]
    return inputs, labels


def test_reference_rows_by_hand():
    """The test's own labels, checked by hand on `12+3 = 15`: the prompt `<BOS>12+3 = ` is 8 tokens, so
    the labels of input positions 0-6 are ignored and positions 7, 8, 9 predict 1, 5, <EOS>."""
    record = {"expr": "12+3", "result": 15}
    _, answer = reference_rows([record], 12, "answer")
    assert answer[0].tolist() == [IGNORE_INDEX] * 7 + encode("15") + [EOS_ID] + [IGNORE_INDEX] * 2
    inputs, every = reference_rows([record], 12, "all")
    assert every[0].tolist() == encode("12+3 = 15") + [EOS_ID] + [IGNORE_INDEX] * 2
    assert inputs[0].tolist() == [BOS_ID] + encode("12+3 = 15") + [PAD_ID] * 2


@pytest.mark.parametrize("loss_on", ["all", "answer"])
def test_fast_step_equals_reference_training(tmp_path, loss_on):
    """Trainer's device-side step against the textbook loop, same seed, dropout 0.

    The pilot's learning rate (3e-4): at 3e-3 the rounding differences between the fused and the
    unfused AdamW kernels (1e-7 per step) grow chaotically to ~1e-5 within two epochs.
    The first 512 training lines (8 steps an epoch: past the 10 warm-up steps into the decay, and
    across an epoch's reshuffle); the comparison is step by step, so more steps would test nothing new."""
    config = write_tiny_config(tmp_path, loss_on=loss_on, learning_rate=3e-4)
    lines = (REPO_ROOT / "data" / "pilot_train.jsonl").read_text().splitlines()[:512]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load(config.read_text())
    raw["data"]["train"] = str(tmp_path / "train.jsonl")
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(config)
    cfg = type(cfg)(**{**cfg.__dict__, "model": type(cfg.model)(**{**cfg.model.__dict__, "dropout": 0.0})})
    batch = make_batch(load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len), cfg.model.max_seq_len)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    fast_model = CompactTransformer(cfg.model)
    torch.manual_seed(0)
    plain_model = CompactTransformer(cfg.model)
    assert_same_tensors(fast_model.state_dict(), plain_model.state_dict())

    trainer = Trainer(cfg, fast_model, DeviceData(batch, cfg, cpu), cpu, precision="fp32", seed=7, log=lambda *a: None)
    trainer.accelerate()  # eager on the CPU
    for _ in range(2):
        trainer.run_epoch()
    steps = 2 * trainer.data.steps_per_epoch
    assert int(trainer.step) == steps
    records = [json.loads(line) for line in Path(cfg.data.path("train")).read_text().splitlines()]
    inputs, labels = reference_rows(records, cfg.model.max_seq_len, loss_on)
    losses = reference_training(cfg, plain_model, inputs, labels, cpu, precision="fp32", seed=7, steps=steps)
    assert len(losses) == steps and losses[-1] < losses[0]

    for (name, a), b in zip(fast_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # the last epoch's mean loss is the mean of the reference losses over the same steps
    last = losses[trainer.data.steps_per_epoch:]
    assert trainer.mean_loss() == pytest.approx(sum(last) / len(last), rel=1e-4)


def test_non_finite_step_is_skipped_and_backs_off_the_loss_scale(tmp_path):
    """The dynamic loss scaling of --fp16, exercised on the CPU: a step whose loss (hence every
    gradient) is non-finite changes no weight and no optimizer state, is counted as skipped, and
    halves the scale, as torch.amp.GradScaler would; the next finite step trains again."""
    cfg = load_config(write_tiny_config(tmp_path))
    batch = make_batch(load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len), cfg.model.max_seq_len)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model)
    trainer = Trainer(cfg, model, DeviceData(batch, cfg, cpu), cpu, precision="fp16", seed=1, log=lambda *a: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale = float(trainer.scale)
    trainer.loss_fn = lambda inputs, labels: model(inputs, labels).loss * float("nan")
    trainer.start_epoch()
    trainer.run_step()
    assert int(trainer.skipped_steps) == 1 and int(trainer.good_steps) == 0
    assert float(trainer.scale) == scale / 2
    assert_same_tensors(model.state_dict(), before)
    assert all(int(s["step"]) == 0 for s in trainer.opt.state.values())

    trainer.loss_fn = trainer._plain_loss
    trainer.run_step()
    assert int(trainer.skipped_steps) == 1 and int(trainer.good_steps) == 1
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.gpu
def test_fp16_run_on_cuda(tmp_path, monkeypatch):
    """The 10M run's flags on a tiny model: fp16 in training and evaluation, recorded, no
    deprecated amp API."""
    import src.analysis.evaluate

    config = write_tiny_config(tmp_path, epochs=2)
    out = tmp_path / "run"
    eval_autocasts = []
    real_autocast = src.metrics.autocast

    def recording_autocast(device, precision):
        eval_autocasts.append((torch.device(device).type, precision))
        return real_autocast(device, precision)

    monkeypatch.setattr(src.metrics, "autocast", recording_autocast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["--config", str(config), "--output-dir", str(out), "--seed", "42", "--device", "cuda",
                   "--fp16", "--gpu-only", "--no-progress"])
    assert rc == 0
    amp_warnings = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))
                    and any(k in str(w.message) for k in ("amp", "autocast", "GradScaler"))]
    assert amp_warnings == []
    assert eval_autocasts and set(eval_autocasts) == {("cuda", "fp16")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["device_fallback"] is False
    assert summary["fp16"] is True and summary["precision"].startswith("fp16")
    assert summary["gpu_name"] and summary["gpu_memory_gb"] > 0 and summary["peak_gpu_memory_mb"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(r["peak_gpu_memory_mb"] > 0 for r in rows)
    ckpt = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    assert 0 < float(ckpt["scaler"]["scale"]) <= 2.0**16


# ---------------------------------------------------------------------------- launcher and --help


@needs_no_cuda
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.slow
def test_launcher_stops_before_training_without_cuda(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO_ROOT / "train_10m_scale.sh"), "--output-dir", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "[ERROR]" in text and "CUDA" in text
    assert "FP16 Mixed Precision" not in text  # src.train never started
    assert not out.exists()


def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ALL_FLAGS:
        assert flag in stdout, flag


# ---------------------------------------------------------------------------- the compiled step


def step_losses(trainer: Trainer, steps: int) -> list[float]:
    """The loss of each of the first `steps` steps of an epoch, read from the trainer's running sum."""
    trainer.start_epoch()
    losses, before = [], 0.0
    for _ in range(steps):
        trainer.run_step()
        total = float(trainer.loss_sum)
        losses.append(total - before)
        before = total
    return losses


def compiled_and_eager(tmp_path, device: torch.device, precision: str, steps: int):
    """Per-step losses and final weights of the same few steps, through the compiled loss and eagerly."""
    cfg = load_config(write_tiny_config(tmp_path, compile=False, cuda_graph=False, precision=precision))
    cfg = type(cfg)(**{**cfg.__dict__, "model": type(cfg.model)(**{**cfg.model.__dict__, "dropout": 0.0})})
    batch = make_batch(load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len), cfg.model.max_seq_len)
    out = {}
    for kind in ("eager", "compiled"):
        torch.manual_seed(0)
        model = CompactTransformer(cfg.model).to(device)
        trainer = Trainer(cfg, model, DeviceData(batch, cfg, device), device, precision=precision, seed=7,
                          log=lambda *a: None)
        if kind == "compiled":
            trainer.loss_fn = trainer._compiled_loss()  # the path training.compile takes (one compiled block)
        out[kind] = (step_losses(trainer, steps), {k: v.float().cpu() for k, v in model.state_dict().items()})
    return out


# measured on an H100: compiled minus eager loss 2.4e-7 in fp32 and 9.4e-4 in fp16
COMPILE_TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_compiled_step_matches_the_eager_step_on_cuda(tmp_path, precision):
    out = compiled_and_eager(tmp_path, torch.device("cuda"), precision, steps=8)
    (eager, w_eager), (compiled, w_compiled) = out["eager"], out["compiled"]
    tol = COMPILE_TOLERANCE[precision]
    for step, (a, b) in enumerate(zip(eager, compiled)):
        assert abs(a - b) <= tol * max(1.0, abs(a)), f"step {step}: eager {a} vs compiled {b} ({precision})"
    for name in w_eager:
        torch.testing.assert_close(w_compiled[name], w_eager[name], atol=10 * tol, rtol=10 * tol, msg=name)


def cpu_compile_unsupported() -> str | None:
    """Why this torch says it cannot compile for the CPU here, or None where it can: torch.compile's
    own platform check (Python version and build) and Inductor's search for the C++ compiler its
    CPU backend needs. Nothing else skips: any other failure of the compiled path fails the test."""
    from torch._dynamo.eval_frame import check_if_dynamo_supported
    from torch._inductor.exc import InvalidCxxCompiler
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # older torch keeps the search in codecache
        from torch._inductor.codecache import cpp_compiler as get_cpp_compiler
    try:
        check_if_dynamo_supported()
    except RuntimeError as err:
        return f"torch {torch.__version__} says torch.compile is unsupported here: {err}"
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as err:
        return f"Inductor's CPU backend finds no C++ compiler (torch {torch.__version__}): {err}"
    return None


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step_on_the_cpu(tmp_path):
    """The compile path of training.compile (Inductor, one compiled block reused by every layer),
    run on the CPU; skipped only where torch itself says it cannot compile here (see
    cpu_compile_unsupported), with that reason. A cold Inductor compile takes tens of seconds."""
    reason = cpu_compile_unsupported()
    if reason:
        pytest.skip(reason)
    out = compiled_and_eager(tmp_path, torch.device("cpu"), "fp32", steps=4)
    (eager, w_eager), (compiled, w_compiled) = out["eager"], out["compiled"]
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
    for name in w_eager:
        torch.testing.assert_close(w_compiled[name], w_eager[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_broken_compiled_path_fails_the_cpu_compile_test_rather_than_skipping(tmp_path, monkeypatch):
    """The slow test above, with the compiled loss broken: its error comes through, no skip hides it."""
    reason = cpu_compile_unsupported()
    if reason:
        pytest.skip(reason)

    def broken(self):
        raise RuntimeError("the compiled loss is broken")

    monkeypatch.setattr(Trainer, "_compiled_loss", broken)
    try:
        test_compiled_step_matches_the_eager_step_on_the_cpu(tmp_path)
    except pytest.skip.Exception as skipped:
        pytest.fail(f"a broken compiled path was reported as a skip: {skipped}")
    except RuntimeError as err:
        assert str(err) == "the compiled loss is broken"
    else:
        pytest.fail("the broken compiled loss was never called")


def test_cpu_compile_is_unsupported_only_where_torch_finds_no_compiler(monkeypatch):
    """The one reason besides torch.compile's platform check: Inductor's search for a C++ compiler fails."""
    import torch._inductor.config
    assert cpu_compile_unsupported() is None or "unsupported" in cpu_compile_unsupported()
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    reason = cpu_compile_unsupported()
    assert reason.startswith("Inductor's CPU backend finds no C++ compiler") or "torch.compile is unsupported" in reason


def test_device_data_cuts_the_all_padding_columns_and_the_loss_is_unchanged(tmp_path):
    """The columns where every row is padding are dropped (the model is causal: padding after a
    sequence never changes its outputs), and the loss over the cut tensors is the full width's."""
    cfg = load_config(write_tiny_config(tmp_path))
    records = load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len)
    batch = make_batch(records, cfg.model.max_seq_len)
    data = DeviceData(batch, cfg, torch.device("cpu"))
    longest = max(len(src.data.sequence_ids(r.expr, r.result)) for r in records)
    assert data.width == longest - 1 < cfg.model.max_seq_len
    assert data.inputs.shape == (len(records) + 1, data.width)
    # one byte per token on the device, the same ids
    assert data.inputs.dtype == data.labels.dtype == torch.int8
    assert torch.equal(data.inputs[:-1].long(), batch.inputs[:, : data.width])
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model).eval()
    with torch.no_grad():
        full = model(batch.inputs, batch.labels)
        cut = model(data.inputs[:-1].long(), data.labels[:-1].long())
    assert cut.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)
    torch.testing.assert_close(cut.logits, full.logits[:, : data.width], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- Ctrl-C at start-up


@pytest.mark.parametrize("command", [["-m", "src.train", "--help"], [str(REPO_ROOT / "verify_10m_config.py")]])
def test_ctrl_c_while_torch_imports_ends_in_one_line_and_exit_130(command, tmp_path):
    """A torch whose import is interrupted (as Ctrl-C during the seconds it takes): no traceback."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO_ROOT)]))
    result = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stderr.startswith("interrupted: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------- bad flags, output directories and resumes (docs/RELIABILITY.md)


def test_unknown_device(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", tiny["config"], "--output-dir", out, "--device", "tpu"]
    expect_error(cli(src.train.main, argv, capsys), "--device 'tpu'", "use cpu or cuda")
    assert not out.exists()


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


def _weights_only(tiny, tmp_path) -> bytes:
    ckpt = load_checkpoint(tiny["paused"] / "checkpoint_latest.pt")
    return saved_bytes(tmp_path, {"model": ckpt["model"], "model_config": ckpt["model_config"]})


# id -> (content of checkpoint_latest.pt, what the message must say)
BAD_LATEST = {
    "truncated": (lambda tiny, tmp: truncated_checkpoint(tiny), "not a readable checkpoint (truncated or corrupt"),
    "empty_file": (lambda tiny, tmp: b"", "not a readable checkpoint (truncated or corrupt"),
    "text_file": (lambda tiny, tmp: b"hello, not a checkpoint\n", "not a readable checkpoint (truncated or corrupt"),
    "pickled_code": (lambda tiny, tmp: pickled_code_checkpoint(tmp),
                     "refused by torch.load(weights_only=True): the file holds an object of class"),
    "not_a_checkpoint_dict": (lambda tiny, tmp: saved_bytes(tmp, torch.zeros(3)), "not a checkpoint of this project"),
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


# ---------------------------------------------------------------------------- signals, resume promises, damaged run files, precision (docs/RELIABILITY.md)


def signalled_run(crash, run, point: str, name: str):
    """A training subprocess that sends itself SIG`name` at `point` (tests/killpoint.py)."""
    return subprocess.run([sys.executable, "-m", "tests.killpoint", f"{point}:{name}", "--", "src.train",
                           *map(str, train_argv(crash["config"], run))],
                          cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_sigterm_and_sigint_save_checkpoint_latest_say_how_to_resume_and_exit_non_zero(name, crash, tmp_path):
    """The signal arrives just after epoch 3's metrics row is written (before its checkpoint): the
    epoch's checkpoint is written as checkpoint_latest.pt, the run stops, and --resume ends bit for
    bit where the uninterrupted run ends. (A signal in the middle of an epoch: the next test.)"""
    run = tmp_path / "signalled"
    proc = signalled_run(crash, run, "metrics.jsonl@3:after", name)
    signum = getattr(signal, f"SIG{name}")
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: interrupted by SIG{name} after epoch 3 (step 96)")
    assert f"Continue with: python -m src.train --output-dir {run} --resume" in last
    latest = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert latest["epoch"] == 3 and latest["epoch_step"] == 0
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()

    proc = subprocess.run([sys.executable, "-m", "src.train", "--output-dir", str(run), "--resume", "--device", "cpu",
                           "--no-progress"], cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_training(crash["reference"], run)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_mid_epoch_checkpoint_resumes_bit_for_bit(tiny, tmp_path, capsys, monkeypatch):
    """SIGTERM in the middle of epoch 3 (after its 5th step, in-process): the checkpoint holds the
    epoch's order and running sums, and the resumed run equals the one that never stopped."""
    run = tmp_path / "mid"
    real = src.training.trainer.Trainer.run_step
    count = {"steps": 0}

    def run_step(self):
        real(self)
        count["steps"] += 1
        if count["steps"] == 2 * 8 + 5:  # 8 steps per epoch
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(src.training.trainer.Trainer, "run_step", run_step)
    rc, out, err = train_entry(train_argv(tiny["config"], run), capsys)
    assert rc == 128 + signal.SIGTERM and "interrupted by SIGTERM in epoch 3 at step 21" in err, err
    latest = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert (latest["epoch"], latest["epoch_step"], latest["step"]) == (2, 5, 21)
    monkeypatch.undo()
    rc, out, err = train_entry(train_argv(tiny["config"], run, "--resume"), capsys)
    assert rc == 0, err
    assert "Resuming from epoch 2 (step 21), 5 steps into epoch 3" in out
    assert_same_training(tiny["finished"], run)


def test_resume_with_another_seed_is_an_error(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)  # trained with --seed 7
    before = snapshot(run)
    argv = [a if a != "7" else "42" for a in train_argv(tiny["config"], run, "--resume")]
    expect_error(train_entry(argv, capsys), "a resumed run keeps its own config and seed", "seed: run 7, --seed 42")
    assert snapshot(run) == before


def test_resume_without_config_or_seed_takes_the_runs_own(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    rc, out, err = train_entry(["--output-dir", run, "--resume", "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    assert "Seed: 7" in out
    assert json.loads((run / "summary.json").read_text())["seed"] == 7
    assert_same_training(tiny["finished"], run)


def test_resume_with_a_changed_config_lists_the_differences(tiny, tmp_path, capsys):
    raw = tiny_raw(tiny["data"], learning_rate=0.5, batch_size=4)
    config = write_yaml(tmp_path / "changed.yaml", raw)
    run = copy_run(tiny, "paused", tmp_path)
    before = snapshot(run)
    message = expect_error(train_entry(train_argv(config, run, "--resume"), capsys), "a resumed run keeps its own config",
                           f"training.batch_size: run 8, {config} 4", "training.learning_rate: run 0.0003")
    assert "only training.epochs may change" in message
    assert snapshot(run) == before
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["learning_rate"] != 0.5


def test_resume_may_change_the_number_of_epochs_and_records_it(tiny, tmp_path, capsys):
    config = write_yaml(tmp_path / "longer.yaml", tiny_raw(tiny["data"], epochs=6))
    run = copy_run(tiny, "finished", tmp_path)
    rc, out, err = train_entry(train_argv(config, run, "--resume"), capsys)
    assert rc == 0, err
    assert "training.epochs changes from 4 to 6 at epoch 4" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 6 and summary["epoch_changes"] == [{"at_epoch": 4, "from": 4, "to": 6}]
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["epochs"] == 6
    assert torch.load(run / "checkpoint_latest.pt", weights_only=True)["epoch_changes"] == summary["epoch_changes"]


def test_resume_records_precision_and_refuses_another(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    ckpt = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["precision"] == "fp32" and ckpt["seed"] == 7
    config = write_yaml(tmp_path / "fp16.yaml", {**tiny_raw(tiny["data"]),
                                                 "training": {**tiny_raw(tiny["data"])["training"], "precision": "bf16"}})
    expect_error(train_entry(train_argv(config, run, "--resume"), capsys), "training.precision: run 'fp32'")


@needs_no_cuda
def test_low_precision_without_cuda_is_an_error_before_anything_is_written(tiny, tmp_path, capsys):
    for precision in ("fp16", "bf16"):
        config = write_yaml(tmp_path / f"{precision}.yaml",
                            {**tiny_raw(tiny["data"]), "training": {**tiny_raw(tiny["data"])["training"],
                                                                    "precision": precision}})
        out = tmp_path / precision
        expect_error(train_entry(train_argv(config, out), capsys), "needs a CUDA device")
        assert not out.exists()


def test_damaged_metrics_lines_are_reported_and_the_run_goes_on(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + '{"epoch": 2, "st\n')  # row 2 cut short
    rc, out, err = train_entry(train_argv(tiny["config"], run, "--resume"), capsys)
    assert rc == 0, err
    assert f"{run / 'metrics.jsonl'}:2: not valid JSON" in err and "line skipped" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 3, 4]  # the damaged row is gone, the run went on from its checkpoint
    finished = load_all_checkpoints(run)["checkpoint_latest.pt"]
    assert finished["epoch"] == 4


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling_link", "missing"])
def test_missing_checkpoint_latest_advice_never_destroys_data(dangling, tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    (run / "checkpoint_latest.pt").unlink()
    if dangling:
        (run / "checkpoint_latest.pt").symlink_to(run / "gone.pt")
    before = snapshot(run)
    message = expect_error(train_entry(train_argv(tiny["config"], run, "--resume"), capsys),
                           "checkpoint_epoch_2.pt is in", f"cp {run / 'checkpoint_epoch_2.pt'} {run / 'checkpoint_latest.pt'}")
    assert ("link to a file that does not exist" in message) == dangling
    for destructive in ("delete", "rm ", "remove"):
        assert destructive not in message
    assert snapshot(run) == before


@pytest.mark.gpu
def test_bf16_run_on_cuda_has_no_loss_scaling_and_travels_with_the_run(tiny, tmp_path, capsys):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not support bfloat16")
    raw = tiny_raw(tiny["data"])
    raw["training"]["precision"] = "bf16"
    config = write_yaml(tmp_path / "bf16.yaml", raw)
    run = tmp_path / "bf16"
    rc, out, err = train_entry(["--config", config, "--output-dir", run, "--device", "cuda", "--no-progress"], capsys)
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"].startswith("bf16") and summary["fp16"] is False and summary["status"] == "completed"
    ckpt = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["precision"] == "bf16" and float(ckpt["scaler"]["scale"]) == 1.0  # no loss scaling
    import src.analysis.evaluate
    rc, out, err = cli(src.analysis.evaluate.main, ["--run", run, "--device", "cuda"], capsys)
    assert rc == 0, err
    assert json.loads((run / "eval.json").read_text())["precision"] == "bf16"  # the run's own, by default


@pytest.mark.parametrize("case", ["empty", "name_too_long", "dangling_symlink"])
def test_bad_output_dir_is_rejected_up_front(case, tiny, tmp_path, capsys, monkeypatch):
    """`--output-dir ""` used to write the run into the current directory (the repository root), a
    300-character name gave an ENAMETOOLONG traceback, a dangling symlink a wrong message."""
    monkeypatch.chdir(tmp_path)
    out, says = {
        "empty": ("", "--output-dir: the path is empty"),
        "name_too_long": (str(tmp_path / ("r" * 300)), "more than the 255 the file system allows"),
        "dangling_symlink": (str(tmp_path / "link"), "is a symlink to"),
    }[case]
    if case == "dangling_symlink":
        (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    expect_error(train_entry(train_argv(tiny["config"], out), capsys), says)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, here or anywhere under it
