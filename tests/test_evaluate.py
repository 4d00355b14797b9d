"""The metrics of DESIGN.md section 5 against models whose answers we know."""

import json
import math

import pytest
import torch

import src.analysis.evaluate
from src import stats
from src.data import make_batch, make_record
from src.metrics import greedy_decode, per_example_scores, summarize
from src.rundir.checkpoint import load_checkpoint
from src.tokenizer import VOCAB_SIZE, sequence_ids
from tests.runs import cli, expect_error, truncated_checkpoint

EXPRS = ["1+2", "(3*4)-5", "99*99*99*99", "7-(8+9)", "((2+3)*4)"]


class Oracle(torch.nn.Module):
    """Predicts the true next token of each known sequence, optionally wrong on chosen examples.

    It looks at its input's prefix (up to the prompt) to find which example it is, so it behaves
    like a real causal model under batched greedy decoding.
    """

    def __init__(self, records, wrong_digit=(), wrong_eos=()):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seqs = {r.expr: sequence_ids(r.expr, r.result) for r in records}
        self.wrong_digit, self.wrong_eos = set(wrong_digit), set(wrong_eos)

    def forward(self, tokens, hooks=None):
        from src.model import ModelOutput
        from src.tokenizer import EOS_ID, encode

        B, T = tokens.shape
        logits = torch.zeros(B, T, VOCAB_SIZE)
        for i in range(B):
            expr = next(e for e, s in self.seqs.items() if tokens[i, : len(e) + 1].tolist() == s[: len(e) + 1])
            seq = self.seqs[expr]
            for j in range(min(T, len(seq) - 1)):
                target = seq[j + 1]
                answer_start = len(expr) + 3
                if expr in self.wrong_digit and j == answer_start:
                    target = encode("0")[0] if target != encode("0")[0] else encode("1")[0]
                if expr in self.wrong_eos and target == EOS_ID:
                    target = encode("5")[0]
                logits[i, j, target] = 20.0
        return ModelOutput(logits)


@pytest.fixture
def batch():
    return make_batch([make_record(e) for e in EXPRS], 32)


def test_oracle_scores_perfectly(batch):
    model = Oracle([make_record(e) for e in EXPRS])
    result = summarize(per_example_scores(model, batch))
    assert result["exact_match"] == 1.0
    assert result["end_of_answer_acc"] == 1.0
    assert result["answer_token_acc"] == 1.0
    assert result["answer_loss"] < 1e-3
    assert result["n_examples"] == len(EXPRS)
    assert math.isclose(result["perplexity"], math.exp(result["loss"]))


def test_greedy_decode_writes_answers_after_each_prompt(batch):
    model = Oracle([make_record(e) for e in EXPRS])
    out = greedy_decode(model, batch)
    for i, e in enumerate(EXPRS):
        seq = sequence_ids(e, make_record(e).result)
        assert out[i, : len(seq)].tolist() == seq


def test_a_wrong_digit_costs_exact_match_but_not_the_end_of_answer(batch):
    records = [make_record(e) for e in EXPRS]
    model = Oracle(records, wrong_digit={"1+2"})
    scores = per_example_scores(model, batch)
    assert scores["exact_match"].tolist() == [0, 1, 1, 1, 1]
    # teacher-forced: <EOS> is still predicted right after the true answer
    assert scores["eos_correct"].tolist() == [1, 1, 1, 1, 1]
    assert scores["answer_correct"][0] == scores["n_answer"][0] - 1


def test_end_of_answer_acc_is_only_the_eos_position(batch):
    records = [make_record(e) for e in EXPRS]
    model = Oracle(records, wrong_eos={"(3*4)-5", "7-(8+9)"})
    result = summarize(per_example_scores(model, batch))
    assert result["end_of_answer_acc"] == pytest.approx(3 / 5)
    assert result["exact_match"] == pytest.approx(3 / 5)
    lo, hi = result["end_of_answer_acc_ci95"]
    assert lo < 0.6 < hi


def test_wilson_interval_known_values():
    lo, hi = stats.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert stats.wilson_interval(0, 10)[0] == 0.0


def test_paired_bootstrap_sees_a_real_difference_and_not_a_null_one():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(500, generator=gen)
    ones = torch.ones(500)
    shifted = stats.paired_bootstrap(base, ones, base + 0.05, ones)
    assert shifted["ci95"][0] > 0 and shifted["p_value"] < 0.01
    same = stats.paired_bootstrap(base, ones, base.clone(), ones)
    assert same["estimate"] == 0 and same["p_value"] == 1.0


def test_mcnemar_exact():
    a = torch.tensor([1] * 20 + [0] * 80)
    b = torch.tensor([0] * 20 + [0] * 80)
    assert stats.mcnemar_exact(a, b)["p_value"] < 1e-4
    assert stats.mcnemar_exact(a, a)["p_value"] == 1.0


@pytest.mark.parametrize("wrong", [dict(), dict(wrong_digit={"1+2", "((2+3)*4)"}), dict(wrong_eos={"7-(8+9)"}),
                                   dict(wrong_digit={"99*99*99*99"}, wrong_eos={"(3*4)-5", "99*99*99*99"})])
def test_teacher_forced_exact_match_equals_greedy_decoding(batch, wrong):
    model = Oracle([make_record(e) for e in EXPRS], **wrong)
    greedy = per_example_scores(model, batch, exact_match="greedy")["exact_match"]
    forced = per_example_scores(model, batch, exact_match="teacher_forced")["exact_match"]
    wrong_exprs = set().union(*wrong.values()) if wrong else set()
    assert greedy.tolist() == [float(e not in wrong_exprs) for e in EXPRS]
    assert forced.tolist() == greedy.tolist()


def test_exact_match_can_be_left_out_and_an_unknown_method_is_refused(batch):
    model = Oracle([make_record(e) for e in EXPRS])
    assert torch.isnan(per_example_scores(model, batch, exact_match=None)["exact_match"]).all()
    with pytest.raises(ValueError, match="exact_match='beam'"):
        per_example_scores(model, batch, exact_match="beam")


# ---------------------------------------------------------------------------- the command on a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.tiny import tiny_config, write_data, write_run

    root = tmp_path_factory.mktemp("evaluate")
    write_data(root / "data")
    write_run(root / "run", tiny_config(root / "data"))
    return root / "run"


def test_a_limit_run_shows_progress_says_its_limit_and_keeps_the_full_file(tiny_run, capsys, monkeypatch):
    import sys

    from src.analysis import evaluate

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on a terminal only
    full = tiny_run / "eval.json"
    full.write_text('{"schema": "eval/2", "full": true}\n')
    capsys.readouterr()
    assert evaluate.main(["--run", str(tiny_run), "--device", "cpu", "--limit", "6"]) == 0
    out, err = capsys.readouterr()
    assert "evaluating" in err and "ex/s" in err  # a progress bar over the examples, on stderr
    assert "first 6 examples of each split" in out and "n: examples scored" in out  # the table's columns defined
    res = json.loads((tiny_run / "eval.limit6.json").read_text())
    assert res["limit"] == 6 and res["seed"] == 0 and res["metrics"]["test_flat"]["n_examples"] == 6
    assert json.loads(full.read_text()) == {"schema": "eval/2", "full": True}  # never replaced by a --limit run
    assert evaluate.main(["--run", str(tiny_run), "--device", "cpu", "--limit", "6", "--no-progress"]) == 0
    assert "evaluating" not in capsys.readouterr().err


def test_no_bar_reaches_a_stderr_that_is_not_a_terminal(tiny_run, capsys):
    from src.analysis import evaluate

    capsys.readouterr()
    assert evaluate.main(["--run", str(tiny_run), "--device", "cpu", "--limit", "3"]) == 0
    assert capsys.readouterr().err == ""  # a log file or a captured message holds no progress bar


# ---------------------------------------------------------------------------- bad inputs of python -m src.analysis.evaluate (docs/RELIABILITY.md)


def test_data_file_missing_at_evaluation(tiny, tmp_path, capsys):
    """src.analysis.evaluate reads the test files named in the checkpoint's config; one has been deleted."""
    ckpt = load_checkpoint(tiny["finished"] / "checkpoint_best.pt")
    missing = tmp_path / "moved" / "test_depth3.jsonl"
    ckpt["config"]["data"]["test_depth3"] = str(missing)
    path = tmp_path / "checkpoint_moved_data.pt"
    torch.save(ckpt, path)
    result = cli(src.analysis.evaluate.main, ["--run", tiny["finished"], "--checkpoint", path, "--device", "cpu"], capsys)
    expect_error(result, f"{missing}: data file not found", "python -m src.data")


def test_unknown_device_evaluate(tiny, capsys):
    argv = ["--run", tiny["finished"], "--device", "tpu"]
    expect_error(cli(src.analysis.evaluate.main, argv, capsys), "--device 'tpu'", "use cpu or cuda")


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
    path.write_bytes(truncated_checkpoint(tiny))
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
