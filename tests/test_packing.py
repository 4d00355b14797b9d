"""Packed training batches (training.packing): the layout, the mask and positions, and that packing
changes neither the batches, nor the loss, nor the gradients, nor resume. CPU and fp32 unless marked
gpu; tiny models on the pilot's data."""

import dataclasses
import json
import signal

import pytest
import torch
import torch.nn.functional as F
import yaml

import src.train
import src.training.trainer
from src.config import load_config
from src.data import load_jsonl, make_batch, make_record
from src.data.packing import pack_rows, packed_sources, row_width
from src.errors import UserError, run_main
from src.model import CompactTransformer, packed_attention_mask
from src.tokenizer import IGNORE_INDEX
from src.training.trainer import DeviceData, PackedLayout, StopAfterSteps, Trainer
from tests.test_train import REPO_ROOT, assert_same_tensors, write_tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(tmp_path, packing=True, **training):
    """The tiny config of tests/test_train.py, dropout 0 (packed and padded rows then compute the same
    function), batch 64 over the 2,000 pilot training examples (32 steps an epoch)."""
    cfg = load_config(write_tiny_config(tmp_path, packing=packing, **training))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0))


def pilot_data(cfg, records=None, device=CPU) -> DeviceData:
    records = records if records is not None else load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len)
    return DeviceData(make_batch(records, cfg.model.max_seq_len), cfg, device)


def trainer_for(cfg, data, seed=7, device=CPU, precision="fp32") -> Trainer:
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model).to(device)
    return Trainer(cfg, model, data, device, precision, seed, log=lambda *a: None)


# ---------------------------------------------------------------------------- the layout by hand


def test_first_fit_decreasing_by_hand():
    """Longest first, each to the first row with room: 7 -> row 0; 5 -> row 1; 3 -> row 0 (7 + 3 = 10);
    2 -> row 1 (after the 5); the empty place takes no room (it starts at the end of full row 0)."""
    start, rows = pack_rows(torch.tensor([[5, 3, 7, 2, 0]]), width=10)
    assert start.tolist() == [[10, 7, 0, 15, 10]]
    assert rows.tolist() == [2]
    # several steps at once, each packed on its own; a sequence as wide as a row fills it
    start, rows = pack_rows(torch.tensor([[5, 3, 7, 2, 0], [10, 10, 1, 1, 1]]), width=10)
    assert start.tolist() == [[10, 7, 0, 15, 10], [0, 10, 20, 21, 22]]
    assert rows.tolist() == [2, 3]
    with pytest.raises(ValueError, match="does not fit a row of 10"):
        pack_rows(torch.tensor([[11]]), width=10)


def test_row_width_is_twice_the_longest_rounded_to_16():
    assert [row_width(n) for n in (1, 8, 28, 29, 32, 33)] == [16, 16, 64, 64, 64, 80]


def test_positions_segments_and_mask_of_a_packed_row():
    """Three sequences of 4, 3 and 2 positions in rows of 8: FFD puts the 4 and the 3 in row 0 and the
    2 in row 1. Each position holds its sequence's token, counts from 0 in its sequence, and the mask
    lets a token see only the earlier tokens of its own sequence."""
    data_width, empty = 5, 3  # three examples of the data, then the all-padding row
    index = torch.tensor([2, 0, 1])  # the batch: data rows 2, 0, 1, in this order
    lengths = torch.tensor([4, 3, 2])
    start, rows = pack_rows(lengths.unsqueeze(0), width=8)
    assert start.tolist() == [[0, 4, 8]] and rows.tolist() == [2]
    source = packed_sources(index, start[0], lengths, data_width, rows=2, width=8, empty=empty).view(2, 8)
    pad = empty * data_width
    assert source.tolist() == [[10, 11, 12, 13, 0, 1, 2, pad], [5, 6, pad, pad, pad, pad, pad, pad]]
    positions, segments = source % data_width, source // data_width
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert segments.tolist() == [[2, 2, 2, 2, 0, 0, 0, 3], [1, 1, 3, 3, 3, 3, 3, 3]]
    mask = packed_attention_mask(segments)
    assert mask.shape == (2, 1, 8, 8)
    row0 = torch.zeros(8, 8, dtype=torch.bool)
    row0[:4, :4] = torch.ones(4, 4, dtype=torch.bool).tril()
    row0[4:7, 4:7] = torch.ones(3, 3, dtype=torch.bool).tril()
    row0[7, 7] = True
    assert torch.equal(mask[0, 0], row0)
    row1 = torch.zeros(8, 8, dtype=torch.bool)
    row1[:2, :2] = torch.ones(2, 2, dtype=torch.bool).tril()
    row1[2:, 2:] = torch.ones(6, 6, dtype=torch.bool).tril()  # the padding sees only padding
    assert torch.equal(mask[1, 0], row1)
    assert mask.diagonal(dim1=-2, dim2=-1).all()  # no empty softmax row


def test_a_hand_made_batch_packs_its_tokens_and_labels(tmp_path):
    """Four expressions through DeviceData and the trainer's packed step: each example's tokens and
    labels sit whole and in order in one row, the rest is padding without labels."""
    cfg = tiny_cfg(tmp_path, batch_size=4, epochs=1)
    records = [make_record(e) for e in ("1+2", "(3*4)-5", "6", "7-8*9")]
    data = pilot_data(cfg, records)
    trainer = trainer_for(cfg, data)
    trainer.start_epoch()
    inputs, labels, packed = trainer.step_batch()
    assert inputs.shape == (trainer.layout.rows, trainer.layout.width) == labels.shape
    idx = trainer.order[:4]
    seen = 0
    for example in idx.tolist():
        where = packed["segments"] == example
        n = int(data.lengths[example])
        assert int(where.sum()) == n
        (row,) = where.any(1).nonzero()[0].tolist()  # one row
        cols = where[row].nonzero().flatten()
        assert cols.tolist() == list(range(int(cols[0]), int(cols[0]) + n))  # contiguous, in order
        assert packed["positions"][row, cols].tolist() == list(range(n))
        assert torch.equal(inputs[row, cols], data.inputs[example, :n].long())
        assert torch.equal(labels[row, cols], data.labels[example, :n].long())
        seen += n
    rest = ~torch.isin(packed["segments"], idx)
    assert int(rest.sum()) == inputs.numel() - seen
    assert (labels[rest] == IGNORE_INDEX).all()


# ---------------------------------------------------------------------------- the same batches and loss


def per_token_losses(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none")


def test_packed_batch_gives_the_padded_losses_and_gradients(tmp_path):
    """One batch of 64, packed and padded, fp32: every example's loss, the batch loss and every
    gradient agree within 1e-6; so does one example's own gradient."""
    cfg = tiny_cfg(tmp_path)
    data = pilot_data(cfg)
    padded_cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, packing=False))
    packed, padded = trainer_for(cfg, data), trainer_for(padded_cfg, data)
    for t in (packed, padded):
        t.start_epoch()
        t.epoch_step.fill_(3)
    assert torch.equal(packed.order, padded.order)
    x, y, extra = packed.step_batch()
    px, py, none = padded.step_batch()
    assert none == {} and px.shape == (64, data.width) and x.shape[0] * x.shape[1] < px.numel()
    model = packed.model
    torch.testing.assert_close(model.state_dict(), padded.model.state_dict(), rtol=0, atol=0)

    out_packed, out_padded = model(x, y, **extra), model(px, py)
    # each token's loss, matched by its example and position
    idx = padded.order[3 * 64: 4 * 64]
    slot = torch.full((len(data.lengths),), -1, dtype=torch.long)
    slot[idx] = torch.arange(64)
    source = extra["segments"].flatten() * data.width + extra["positions"].flatten()
    supervised = y.flatten() != IGNORE_INDEX
    flat_padded = slot[source // data.width] * data.width + source % data.width
    tok_packed = per_token_losses(out_packed.logits, y)[supervised]
    tok_padded = per_token_losses(out_padded.logits, py)[flat_padded[supervised]]
    assert len(tok_packed) == int((py != IGNORE_INDEX).sum())
    torch.testing.assert_close(tok_packed, tok_padded, atol=1e-6, rtol=1e-6)
    examples = slot[source // data.width][supervised]
    per_example = lambda v: torch.zeros(64).index_add_(0, examples, v)
    torch.testing.assert_close(per_example(tok_packed), per_example(tok_padded), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out_packed.loss, out_padded.loss, atol=1e-6, rtol=1e-6)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    g_packed, g_padded = grads(out_packed.loss), grads(model(px, py).loss)
    for k in g_packed:
        torch.testing.assert_close(g_packed[k], g_padded[k], atol=1e-6, rtol=1e-5, msg=k)
    # one example alone (the 10th of the batch): its labels kept, every other label ignored
    one = int(idx[9])
    y_one = y.masked_fill(extra["segments"] != one, IGNORE_INDEX)
    py_one = py.clone()
    py_one[torch.arange(64) != 9] = IGNORE_INDEX
    g_packed, g_padded = grads(model(x, y_one, **extra).loss), grads(model(px, py_one).loss)
    for k in g_packed:
        torch.testing.assert_close(g_packed[k], g_padded[k], atol=1e-6, rtol=1e-5, msg=k)


def test_packing_keeps_the_batches_of_the_padded_path(tmp_path):
    """For one seed, every step of two epochs holds the same examples in the same order, packed or
    padded (the last step of 2,000 / 64 is short: its empty places hold no tokens)."""
    cfg = tiny_cfg(tmp_path, epochs=2)
    data = pilot_data(cfg)
    padded_cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, packing=False))
    packed, padded = trainer_for(cfg, data, seed=11), trainer_for(padded_cfg, data, seed=11)
    for _ in range(2):
        packed.start_epoch()
        padded.start_epoch()
        assert torch.equal(packed.order, padded.order)
        for step in range(data.steps_per_epoch):
            packed.epoch_step.fill_(step)
            padded.epoch_step.fill_(step)
            x, y, extra = packed.step_batch()
            px, py, _ = padded.step_batch()
            idx = packed.order[step * 64: (step + 1) * 64]
            for j, example in enumerate(idx.tolist()):
                where = extra["segments"] == example
                n = int(data.lengths[example])
                if example == data.n:  # the all-padding row that fills the short last step
                    assert n == 0 and (y[where] == IGNORE_INDEX).all()
                    continue
                assert torch.equal(x[where], px[j, :n]) and torch.equal(y[where], py[j, :n])
            assert x.shape == (packed.layout.rows, packed.layout.width)


def test_packed_training_equals_padded_training(tmp_path):
    """Two epochs (20 steps of 64 over 640 examples) of the trainer, packed and padded, from the same
    weights and seed: the same weights within float tolerance, the same mean losses."""
    cfg = tiny_cfg(tmp_path, epochs=2)
    data = pilot_data(cfg, load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len)[:640])
    padded_cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, packing=False))
    packed, padded = trainer_for(cfg, data), trainer_for(padded_cfg, data)
    for _ in range(2):
        packed.run_epoch()
        padded.run_epoch()
        assert packed.mean_loss() == pytest.approx(padded.mean_loss(), rel=1e-6)
    assert int(packed.step) == int(padded.step) == 2 * data.steps_per_epoch
    for (name, a), b in zip(packed.model.named_parameters(), padded.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert packed.accelerations["packing"]["rows"] == packed.layout.rows
    assert padded.accelerations["packing"] is False


def test_rows_cover_every_step_of_the_schedule_and_are_shared_by_seeds(tmp_path):
    """The rows per step: at least the most any step of the seed's whole schedule fills (every epoch
    is checked again at its start), the reference schedule's most plus the margin otherwise; and the
    same for a resumed run, which makes the layout again from the seed alone."""
    cfg = tiny_cfg(tmp_path, epochs=3)
    data = pilot_data(cfg)
    layouts = [PackedLayout(data, seed, 3) for seed in (1, 2, 3)]
    for seed, layout in zip((1, 2, 3), layouts):
        generator = torch.Generator().manual_seed(seed + 1)
        most = max(int(layout.plan(data, data.epoch_order(generator))[1].max()) for _ in range(3))
        assert layout.own == most <= layout.rows
        assert layout.rows == max(layout.reference + src.training.trainer.PACK_MARGIN_ROWS, most)
    assert len({layout.rows for layout in layouts}) == 1
    assert PackedLayout(data, 2, 3).rows == layouts[1].rows
    tokens = int(data.lengths.sum())
    padded = tokens / (data.steps_per_epoch * 64 * data.width)
    assert padded == pytest.approx(0.62, abs=0.01)  # 2,000 examples of 17.9 positions in rows of 28, batch 64
    assert tokens / (data.steps_per_epoch * layouts[0].rows * layouts[0].width) > 0.78


# ---------------------------------------------------------------------------- config and resume


def test_packing_is_off_by_default_and_checked(tmp_path):
    assert load_config(REPO_ROOT / "configs" / "pilot.yaml").training.packing is False
    path = write_tiny_config(tmp_path, packing="yes")
    with pytest.raises(UserError, match="key 'training.packing' must be bool"):
        load_config(path)


def small_run_config(tmp_path, epochs: int):
    """A tiny packed run over the first 192 pilot training examples (3 steps of 64 an epoch), validated
    on 40 examples every 3 epochs."""
    path = write_tiny_config(tmp_path, packing=True, epochs=epochs, save_interval=2, eval_interval=3)
    raw = yaml.safe_load(path.read_text())
    for split, n in (("train", 192), ("val", 40)):
        lines = (REPO_ROOT / "data" / f"pilot_{split}.jsonl").read_text().splitlines()[:n]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        raw["data"][split] = str(tmp_path / f"{split}.jsonl")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_train(config, out, *extra):
    return src.train.main(["--config", str(config), "--output-dir", str(out), "--seed", "5", "--device", "cpu",
                           "--no-progress", *extra])


def test_a_packed_trainer_resumes_bit_for_bit_in_the_middle_of_an_epoch(tmp_path):
    """Stopped after 2 steps of epoch 2 of 3 (dropout 0.1, packed), its state put into a new trainer:
    the weights, the optimizer state and the epoch's mean loss equal those of a trainer that never
    stopped, bit for bit."""
    cfg = load_config(write_tiny_config(tmp_path, packing=True, epochs=3))  # dropout 0.1
    data = pilot_data(cfg, load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len)[:320])  # 5 steps an epoch
    whole = trainer_for(cfg, data)
    for _ in range(3):
        whole.run_epoch()
    first = trainer_for(cfg, data)
    first.run_epoch()
    assert first.run_epoch(stop=StopAfterSteps(2)) is False and int(first.epoch_step) == 2
    state, weights = first.state_dict(), {k: v.clone() for k, v in first.model.state_dict().items()}
    resumed = trainer_for(cfg, data)
    resumed.model.load_state_dict(weights)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.place, first.place)  # the epoch's layout, made again from its order
    resumed.run_epoch()
    resumed.run_epoch()
    assert int(resumed.step) == int(whole.step) == 15
    assert_same_tensors(resumed.model.state_dict(), whole.model.state_dict())
    for a, b in zip(resumed.opt.state.values(), whole.opt.state.values()):
        assert_same_tensors(a, b)
    assert resumed.mean_loss() == whole.mean_loss()


@pytest.mark.slow
def test_packed_run_resumes_bit_for_bit_from_the_middle_of_a_long_schedule(tmp_path, monkeypatch, capsys):
    """SIGTERM after step 2 of epoch 5 of 6 (dropout 0.1, packed): the resumed run's metrics and
    weights equal, bit for bit, those of the run that never stopped."""
    config = small_run_config(tmp_path, epochs=6)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_train(config, whole) == 0
    real, count = Trainer.run_step, {"steps": 0}

    def run_step(self):
        real(self)
        count["steps"] += 1
        if count["steps"] == 4 * 3 + 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "run_step", run_step)
    rc = run_main(src.train.main, ["--config", str(config), "--output-dir", str(part), "--seed", "5", "--device", "cpu",
                                   "--no-progress"])
    assert rc == 128 + signal.SIGTERM
    latest = torch.load(part / "checkpoint_latest.pt", weights_only=True)
    assert (latest["epoch"], latest["epoch_step"], latest["step"]) == (4, 2, 14)
    monkeypatch.undo()
    assert run_train(config, part, "--resume") == 0
    assert "Resuming from epoch 4 (step 14), 2 steps into epoch 5" in capsys.readouterr().out
    assert (part / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        a = torch.load(part / name, weights_only=True)
        b = torch.load(whole / name, weights_only=True)
        assert_same_tensors(a["model"], b["model"])
    summary = json.loads((part / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["accelerations"]["packing"]["width"] == 64


# ---------------------------------------------------------------------------- on CUDA


def gradient_vector(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for p in model.parameters()])


def loss_and_grads(model, batch, precision):
    from src.device import autocast

    inputs, labels, packed = batch
    model.zero_grad()
    with autocast(inputs.device, precision):
        loss = model(inputs, labels, **packed).loss
    (loss * 1024).backward()  # a fixed loss scale: float16 gradients this small would underflow
    return float(loss.detach()), gradient_vector(model) / 1024


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_packed_batch_matches_the_padded_batch_on_cuda(tmp_path, precision):
    """On CUDA, the memory-efficient attention kernel alone (no fallback), after one epoch of training
    (weights that attend to something): the packed batch's loss and gradients in float16 / bfloat16
    differ from the padded batch's no more than the low precision itself differs from fp32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = tiny_cfg(tmp_path)
    data = pilot_data(cfg, device=device)
    padded_cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, packing=False))
    packed, padded = trainer_for(cfg, data, device=device), trainer_for(padded_cfg, data, device=device)
    padded.run_epoch()
    packed.model.load_state_dict(padded.model.state_dict())
    padded.start_epoch()
    packed.order.copy_(padded.order)  # the padded trainer's next batch, packed
    packed.plan_epoch()
    batch_packed, batch_padded = packed.step_batch(), padded.step_batch()
    model = padded.model
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        exact_loss, exact_grad = loss_and_grads(model, batch_padded, "fp32")
        low_loss, low_grad = loss_and_grads(model, batch_padded, precision)
        pk_loss, pk_grad = loss_and_grads(model, batch_packed, precision)
        pk32_loss, pk32_grad = loss_and_grads(model, batch_packed, "fp32")
    assert pk32_loss == pytest.approx(exact_loss, rel=1e-5)
    assert (pk32_grad - exact_grad).norm() <= 1e-4 * exact_grad.norm()
    floor = {"fp16": 2e-3, "bf16": 1e-2}[precision]
    assert abs(pk_loss - low_loss) <= 3 * abs(low_loss - exact_loss) + floor * exact_loss, (pk_loss, low_loss, exact_loss)
    error = (pk_grad - low_grad).norm() / exact_grad.norm()
    noise = (low_grad - exact_grad).norm() / exact_grad.norm()
    assert error <= 3 * noise + floor, (float(error), float(noise))


@pytest.mark.gpu
def test_compiled_and_captured_packed_step_trains_on_cuda(tmp_path):
    """training.compile and training.cuda_graph with packing, float16 with its loss scale: the step
    compiles and is captured, its first epoch's loss is the eager packed step's, and it falls."""
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = tiny_cfg(tmp_path, compile=True, cuda_graph=True, epochs=3)
    data = pilot_data(cfg, device=device)
    torch._dynamo.reset()
    fast = trainer_for(cfg, data, device=device, precision="fp16")
    fast.accelerate()
    assert fast.accelerations["compile"] == "blocks" and fast.accelerations["cuda_graph"] is True
    assert fast.graph is not None
    eager_cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, compile=False, cuda_graph=False))
    eager = trainer_for(eager_cfg, data, device=device, precision="fp16")
    losses = []
    for _ in range(3):
        fast.run_epoch()
        losses.append(fast.mean_loss())
    eager.run_epoch()
    assert losses[0] == pytest.approx(eager.mean_loss(), rel=2e-2)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[2] < losses[1] < losses[0]
    assert int(fast.step) == 3 * data.steps_per_epoch
    assert int(fast.skipped_steps) <= 3  # at most the loss scale's first back-offs
