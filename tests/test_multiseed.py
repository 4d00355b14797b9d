"""Several seeds in one process (`python -m src.train --seeds 42,7`).

Each seed writes OUTPUT_DIR/seedS in the format of a single run and trains exactly as it would
alone: on the CPU bit for bit (weights, optimizer state, every metrics row), here; on CUDA with
captured graphs on separate streams, in tests/test_gpu.py. The tiny config has dropout 0.1, so the
seeds' own random states are exercised, not only their initial weights.
"""

import json
from pathlib import Path

import pytest
import torch

import src.train
import src.training.trainer
from src.config import load_config
from src.data import load_jsonl, make_batch
from src.model import CompactTransformer
from src.training.trainer import DeviceData, SeedRNG, Trainer, run_epochs
from tests.runs import (  # noqa: F401  (one_thread is an autouse fixture; tiny comes from conftest.py)
    assert_same_training, cli, expect_error, one_thread, snapshot, tiny_raw, write_yaml)

SEEDS = (42, 7)


def train(argv, capsys):
    return cli(src.train.main, argv, capsys)


def argv(config, out, *extra):
    return ["--config", config, "--output-dir", out, "--device", "cpu", "--no-progress", *extra]


def tree(root):
    """Relative path -> bytes of every file under `root` (to prove a refused command changed nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def alone(tiny, tmp_path_factory):
    """Each seed of SEEDS trained alone, in a run directory of its own."""
    root = tmp_path_factory.mktemp("alone")
    for seed in SEEDS:
        rc = src.train.run_main(src.train.main, [str(a) for a in argv(tiny["config"], root / f"seed{seed}",
                                                                      "--seed", seed)])
        assert rc == 0
    return root


@pytest.fixture(scope="module")
def together(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("together") / "runs"
    rc = src.train.run_main(src.train.main, [str(a) for a in argv(tiny["config"], root, "--seeds",
                                                                  ",".join(map(str, SEEDS)))])
    assert rc == 0
    return root


# ---------------------------------------------------------------------------- equal to alone


def test_each_seed_trained_side_by_side_equals_training_it_alone(alone, together):
    for seed in SEEDS:
        assert_same_training(alone / f"seed{seed}", together / f"seed{seed}")
    # and the seeds did differ from each other (a shared random state would make this fail too)
    a = torch.load(together / "seed42" / "checkpoint_latest.pt", weights_only=True)["model"]
    b = torch.load(together / "seed7" / "checkpoint_latest.pt", weights_only=True)["model"]
    assert not torch.equal(a["embed.weight"], b["embed.weight"])


def test_the_seed_directories_have_the_format_of_a_single_run(alone, together):
    for seed in SEEDS:
        single, side = alone / f"seed{seed}", together / f"seed{seed}"
        assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in side.iterdir())
        assert (single / "config.yaml").read_bytes() == (side / "config.yaml").read_bytes()
        s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (single, side))
        assert s1.keys() == s2.keys()
        assert s1["seed"] == s2["seed"] == seed and s1["status"] == s2["status"] == "completed"
        assert s1["seeds_side_by_side"] == [seed] and s2["seeds_side_by_side"] == list(SEEDS)
        c1, c2 = (torch.load(d / "checkpoint_latest.pt", weights_only=True) for d in (single, side))
        assert c1.keys() == c2.keys() and c1["seed"] == c2["seed"] == seed
    assert sorted(p.name for p in together.iterdir()) == sorted(f"seed{s}" for s in SEEDS)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trainers_side_by_side_equal_trainers_alone(tiny, precision):
    """At the level of the Trainer, in both settings the CPU runs: fp32, and fp16's loss-scaling
    bookkeeping (the CPU computes in float32; fp16 arithmetic itself is CUDA's, tests/test_gpu.py)."""
    cfg = load_config(tiny["config"])
    batch = make_batch(load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len), cfg.model.max_seq_len)
    cpu = torch.device("cpu")
    data = DeviceData(batch, cfg, cpu)

    def trainer(seed):
        rng = SeedRNG(seed, cpu)
        with rng:
            model = CompactTransformer(cfg.model)
        return Trainer(cfg, model, data, cpu, precision, seed, log=lambda *a: None, rng=rng)

    alone = {}
    for seed in SEEDS:
        t = trainer(seed)
        for _ in range(2):
            t.run_epoch()
        alone[seed] = (t.mean_loss(), [p.detach().clone() for p in t.params])
    side = {seed: trainer(seed) for seed in SEEDS}
    for _ in range(2):
        finished, stopped = run_epochs(list(side.values()))
        assert finished and not stopped
    for seed, t in side.items():
        assert t.mean_loss() == alone[seed][0]
        assert all(torch.equal(p, q) for p, q in zip(t.params, alone[seed][1]))


# ---------------------------------------------------------------------------- resume, per seed


@pytest.mark.slow
def test_a_killed_multi_seed_run_resumes_per_seed(tiny, alone, tmp_path, capsys, monkeypatch):
    """SIGTERM in the middle of epoch 3: every seed saves a mid-epoch checkpoint. Seed 7 is then
    resumed on its own, seed 42 through --seeds; each equals its run alone."""
    import signal

    root = tmp_path / "runs"
    real, count = src.training.trainer.Trainer.run_step, {"steps": 0}

    def run_step(self):
        real(self)
        count["steps"] += 1
        if count["steps"] == len(SEEDS) * (2 * 8 + 5):  # 8 steps per epoch, the seeds interleaved
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(src.training.trainer.Trainer, "run_step", run_step)
    rc, out, err = train(argv(tiny["config"], root, "--seeds", "42,7"), capsys)
    assert rc == 128 + signal.SIGTERM, err
    assert "in epoch 3 at step 21" in err and "--seeds 42,7 --resume" in err
    for seed in SEEDS:
        latest = torch.load(root / f"seed{seed}" / "checkpoint_latest.pt", weights_only=True)
        assert (latest["epoch"], latest["epoch_step"], latest["step"]) == (2, 5, 21)
    monkeypatch.undo()
    rc, out, err = train(["--output-dir", root / "seed7", "--resume", "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    rc, out, err = train(["--output-dir", root, "--seeds", "42,7", "--resume", "--device", "cpu", "--no-progress"],
                         capsys)
    assert rc == 0, err
    assert "[seed 7] the run in" in out and "already finished" in out  # skipped, not trained again
    assert "[seed 42] Resuming from epoch 2 (step 21), 5 steps into epoch 3" in out
    for seed in SEEDS:
        assert_same_training(alone / f"seed{seed}", root / f"seed{seed}")


# ---------------------------------------------------------------------------- a seed that diverges


def test_a_diverging_seed_stops_alone_and_the_others_go_on(tiny, alone, tmp_path, capsys, monkeypatch):
    real = src.training.trainer.Trainer._plain_loss

    def loss(self, inputs, labels):
        value = real(self, inputs, labels)
        return value * float("nan") if self.seed == 7 and int(self.step) >= 20 else value

    monkeypatch.setattr(src.training.trainer.Trainer, "_plain_loss", loss)
    root = tmp_path / "runs"
    rc, out, err = train(argv(tiny["config"], root, "--seeds", "42,7"), capsys)
    assert rc == 3, err
    assert "[seed 7] error: stopped: 4 consecutive steps had a non-finite loss"  # steps 20-23, read at the epoch end in err
    assert "1 of 2 seeds stopped: seed 7 (stopped_non_finite" in err and "the others (42) trained to the end" in err
    assert "[seed 42] Done" in out
    stopped = json.loads((root / "seed7" / "summary.json").read_text())
    assert stopped["status"] == "stopped_non_finite" and stopped["epochs"] == 2
    assert json.loads((root / "seed42" / "summary.json").read_text())["status"] == "completed"
    assert_same_training(alone / "seed42", root / "seed42")


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("seeds, fragment", [
    ("42,42", "'42' is listed twice"),
    ("42,x", "'x': not an integer"),
    ("", "an empty item"),
    ("42,,7", "an empty item"),
    ("42,-1", "out of range"),
])
def test_bad_seeds_are_refused_before_anything_is_written(seeds, fragment, tiny, tmp_path, capsys):
    root = tmp_path / "runs"
    expect_error(train(argv(tiny["config"], root, "--seeds", seeds), capsys), "--seeds", fragment, usage=True)
    assert not root.exists()


def test_seed_and_seeds_together_are_refused(tiny, tmp_path, capsys):
    expect_error(train(argv(tiny["config"], tmp_path / "runs", "--seeds", "1,2", "--seed", "3"), capsys),
                 "--seed and --seeds", usage=True)


def test_an_output_dir_holding_one_seeds_run_is_refused_and_nothing_is_touched(tiny, alone, tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "seed7").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint_latest.pt"):
        (root / "seed7" / name).write_bytes((alone / "seed7" / name).read_bytes())
    before = tree(root)
    message = expect_error(train(argv(tiny["config"], root, "--seeds", "42,7,123"), capsys), "already holds a run")
    assert str(root / "seed7") in message
    assert tree(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["seed7"]  # seed42 and seed123 were not created


def test_a_locked_seed_directory_leaves_no_other_seed_directory_behind(tiny, tmp_path, capsys):
    from src.rundir.directory import RunDir

    root = tmp_path / "runs"
    held = RunDir(str(root / "seed7"), resume=False)  # another training holds seed 7's directory
    try:
        expect_error(train(argv(tiny["config"], root, "--seeds", "42,7"), capsys), "is in use by PID")
        assert sorted(p.name for p in root.iterdir()) == ["seed7"]
        assert not (root / "seed42").exists()
    finally:
        held.release()


def test_resume_of_seeds_without_runs_is_refused(tiny, tmp_path, capsys):
    root = tmp_path / "runs"
    expect_error(train(["--output-dir", root, "--seeds", "1,2", "--resume", "--device", "cpu"], capsys),
                 "nothing to resume")
    assert not (root / "seed1").exists() and not (root / "seed2").exists()


# ---------------------------------------------------------------------------- CUDA: graphs on streams


def max_weight_difference(run_a, run_b) -> float:
    a = torch.load(run_a / "checkpoint_latest.pt", weights_only=True)["model"]
    b = torch.load(run_b / "checkpoint_latest.pt", weights_only=True)["model"]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.gpu
def test_side_by_side_on_cuda_equals_alone_within_the_noise_of_a_rerun(tiny, tmp_path, capsys):
    """fp16, compiled blocks, each seed's step captured as a CUDA graph replayed on a stream of its
    own, dropout 0.1. Some CUDA kernels add in a varying order (atomics), so two runs of one seed
    alone may differ in the last bits; the tolerance is that rerun noise: seeds side by side may
    differ from their runs alone by no more than ten times the difference between two runs alone
    (or 1e-6 where reruns agree exactly). Dropout masks drawn from a shared generator would put the
    difference orders of magnitude above that."""
    config = write_yaml(tmp_path / "gpu.yaml", tiny_raw(tiny["data"], compile=True, cuda_graph=True, precision="fp16"))
    gpu = ["--device", "cuda", "--gpu-only"]

    def run(out, *extra):
        rc, _, err = train(["--config", config, "--output-dir", out, "--no-progress", *gpu, *extra], capsys)
        assert rc == 0, err

    for seed in SEEDS:
        run(tmp_path / "alone" / f"seed{seed}", "--seed", seed)
    run(tmp_path / "rerun" / "seed42", "--seed", 42)
    run(tmp_path / "side", "--seeds", ",".join(map(str, SEEDS)))
    noise = max_weight_difference(tmp_path / "alone" / "seed42", tmp_path / "rerun" / "seed42")
    tolerance = max(10 * noise, 1e-6)
    for seed in SEEDS:
        diff = max_weight_difference(tmp_path / "alone" / f"seed{seed}", tmp_path / "side" / f"seed{seed}")
        print(f"seed {seed}: side by side vs alone, max weight difference {diff:.3g} (rerun noise {noise:.3g})")
        assert diff <= tolerance, (seed, diff, noise)
        summary = json.loads((tmp_path / "side" / f"seed{seed}" / "summary.json").read_text())
        assert summary["accelerations"]["cuda_graph"] and summary["seeds_side_by_side"] == list(SEEDS)
    assert max_weight_difference(tmp_path / "side" / "seed42", tmp_path / "side" / "seed7") > 1e-3


def trained_weights(cfg, data, seeds, device, epochs=1):
    """Each seed's weights after `epochs` epochs, the seeds side by side when there are several
    (each graph captured and replayed on a stream of its own, as src.train --seeds runs them)."""
    trainers = []
    for seed in seeds:
        rng = SeedRNG(seed, device)
        with rng:
            model = CompactTransformer(cfg.model).to(device)
        trainer = Trainer(cfg, model, data, device, cfg.training.precision, seed, log=lambda *a: None, rng=rng)
        if len(seeds) > 1:
            trainer.stream = torch.cuda.Stream(device)
        with rng:
            trainer.accelerate()
        trainers.append(trainer)
    for _ in range(epochs):
        run_epochs(trainers)
    return {seed: [p.detach().float().cpu() for p in t.params] for seed, t in zip(seeds, trainers)}


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["configs/pilot.yaml", "configs/scale_10m.yaml"])
def test_side_by_side_at_batch_256_equals_alone_within_rerun_noise(config):
    """The extension's path (batch 256, dropout 0, fp16, compiled blocks + graph), where the matrix
    products are large enough for cuBLAS to use its workspace: three seeds side by side against
    seed 42 alone, and seed 42 alone against itself (the rerun noise)."""
    import dataclasses

    device = torch.device("cuda")
    cfg = load_config(config)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0),
                              training=dataclasses.replace(cfg.training, batch_size=256, precision="fp16",
                                                           compile=True, cuda_graph=True))
    records = load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len) * 10
    data = DeviceData(make_batch(records, cfg.model.max_seq_len), cfg, device)
    first = trained_weights(cfg, data, [42], device)[42]
    rerun = trained_weights(cfg, data, [42], device)[42]
    side = trained_weights(cfg, data, [42, 123, 7], device)[42]
    noise = max(float((a - b).abs().max()) for a, b in zip(first, rerun))
    diff = max(float((a - b).abs().max()) for a, b in zip(first, side))
    print(f"{config} batch 256: seed 42 side by side vs alone {diff:.3g}, alone vs alone {noise:.3g}")
    assert diff <= max(10 * noise, 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("config", ["configs/extension/ext_pilot_n2000000.yaml",
                                    "configs/extension/ext_10m_n2000000.yaml"])
def test_training_at_batch_256_repeats_bit_for_bit(config, deterministic):
    """The extension's path (batch 256, compiled blocks + CUDA graph; the pilot in fp32, 10M in fp16),
    on the shipped training set tiled: two runs of seed 42 alone, and seed 42 beside two others, give
    the same weights bit for bit, by default (the embedding's backward in a fixed order,
    src.model.embed_lookup; with nn.Embedding's own backward they drift apart,
    benchmarks/rerun_noise.py) and with training.deterministic."""
    import dataclasses

    from src.device import set_deterministic

    device = torch.device("cuda")
    cfg = load_config(config)
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, deterministic=deterministic))
    records = load_jsonl(Path(__file__).resolve().parent.parent / "data" / "pilot_train.jsonl",
                         cfg.model.max_seq_len) * 10
    set_deterministic(deterministic)
    try:
        data = DeviceData(make_batch(records, cfg.model.max_seq_len), cfg, device)
        first = trained_weights(cfg, data, [42], device)[42]
        rerun = trained_weights(cfg, data, [42], device)[42]
        side = trained_weights(cfg, data, [42, 123, 7], device)[42]
    finally:
        set_deterministic(False)
    assert all(torch.equal(a, b) for a, b in zip(first, rerun))
    assert all(torch.equal(a, b) for a, b in zip(first, side))


@pytest.mark.gpu
@pytest.mark.parametrize("config,scope", [("configs/study/study_pilot.yaml", "blocks"),
                                          ("configs/study/study_10m.yaml", "blocks"),
                                          ("configs/study/study_10m.yaml", "model")],
                         ids=["study_pilot", "study_10m", "study_10m-whole_loss_compiled"])
def test_the_study_s_path_repeats_bit_for_bit(config, scope):
    """The study's configs as they train (packed rows, compiled blocks + CUDA graph; the pilot in fp32, 10M in
    fp16), and the 10M one with the whole loss compiled (training.compile_scope: model), on the shipped
    training set tiled: seed 42 alone twice and beside two others give the same weights bit for bit, so a
    study run repeats on the GPU kind that trained it."""
    import dataclasses

    device = torch.device("cuda")
    cfg = load_config(config)
    assert cfg.training.packing and cfg.training.compile_scope == "blocks"  # as the study trains
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, compile_scope=scope))
    records = load_jsonl(Path(__file__).resolve().parent.parent / "data" / "pilot_train.jsonl",
                         cfg.model.max_seq_len) * 10
    data = DeviceData(make_batch(records, cfg.model.max_seq_len), cfg, device)
    first = trained_weights(cfg, data, [42], device)[42]
    rerun = trained_weights(cfg, data, [42], device)[42]
    side = trained_weights(cfg, data, [42, 123, 7], device)[42]
    assert all(torch.equal(a, b) for a, b in zip(first, rerun))
    assert all(torch.equal(a, b) for a, b in zip(first, side))


@pytest.mark.gpu
def test_a_deterministic_run_on_cuda_trains_evaluates_and_repeats(tiny, tmp_path, capsys):
    """The whole command with training.deterministic (tiny fp16 config, compiled + graph, dropout
    0.1): training, the evaluations after each epoch and the checkpoints run under deterministic
    kernels without an error, and a second run equals the first bit for bit."""
    config = write_yaml(tmp_path / "det.yaml", tiny_raw(tiny["data"], compile=True, cuda_graph=True,
                                                        precision="fp16", deterministic=True))
    try:
        for out in ("a", "b"):
            rc, _, err = train(["--config", config, "--output-dir", tmp_path / out, "--no-progress", "--device",
                                "cuda", "--gpu-only"], capsys)
            assert rc == 0, err
    finally:
        torch.use_deterministic_algorithms(False)
    assert max_weight_difference(tmp_path / "a", tmp_path / "b") == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["accelerations"]["deterministic"] is True and summary["accelerations"]["cuda_graph"]


def test_resume_of_seeds_with_different_configs_is_refused(tiny, tmp_path, capsys):
    root = tmp_path / "runs"
    other = write_yaml(tmp_path / "other.yaml", tiny_raw(tiny["data"], learning_rate=1e-3))
    for seed, config in ((42, tiny["config"]), (7, other)):
        rc, _, err = train(argv(config, root / f"seed{seed}", "--seed", seed, "--stop-after-epoch", "1"), capsys)
        assert rc == 0, err
    message = expect_error(train(["--output-dir", root, "--seeds", "42,7", "--resume", "--device", "cpu"], capsys),
                           "different configs", "resume each on its own")
    assert str(root / "seed42") in message and str(root / "seed7") in message
