"""The learnability extension's settings (DESIGN.md section 8): a training set named by its
size, the reversed answer format, model selection on validation exact_match, and the checks that
keep training expressions apart from the held-out ones."""

import copy
import re
import json

import pytest
import torch
import yaml

import src.train
from src.config import load_config
from src.data import make_batch
from src.errors import UserError
from src.tokenizer import ANSWER_FORMATS, answer_text, decode, sequence_ids
from src.train import selection_key
from src.data.trainsets import training_set_path
from tests.runs import (  # noqa: F401  (one_thread is an autouse fixture; tiny comes from conftest.py)
    GOOD_LINES, PILOT, cli, expect_error, one_thread, tiny_raw, write_yaml)


@pytest.fixture(scope="module")
def pilot_raw() -> dict:
    return yaml.safe_load(PILOT.read_text(encoding="utf-8"))


def config_error(tmp_path, raw) -> str:
    path = write_yaml(tmp_path / "c.yaml", raw)
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------- config keys


def test_a_training_set_named_by_size_resolves_to_the_generated_file(tmp_path, pilot_raw):
    raw = copy.deepcopy(pilot_raw)
    del raw["data"]["train"]
    raw["data"]["train_size"] = 200000
    cfg = load_config(write_yaml(tmp_path / "c.yaml", raw))
    assert cfg.data.path("train") == training_set_path(200000)
    assert cfg.data.path("train").name == "train_200000.jsonl"


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(train_size=20000), "give one of them"),  # a file and a size
    (lambda d: d.pop("train"), "missing key 'data.train'"),
    (lambda d: (d.pop("train"), d.update(train_size=0)), "missing key 'data.train'"),
    (lambda d: (d.pop("train"), d.update(train_size=-5)), "data.train_size"),
    (lambda d: (d.pop("train"), d.update(train_size=10**9)), "data.train_size"),
    (lambda d: (d.pop("train"), d.update(train_size="many")), "data.train_size"),
    (lambda d: d.update(answer_format="backwards"), "data.answer_format"),
])
def test_bad_extension_data_keys_are_named(tmp_path, pilot_raw, change, fragment):
    raw = copy.deepcopy(pilot_raw)
    change(raw["data"])
    assert fragment in config_error(tmp_path, raw)


def test_bad_select_on_is_named(tmp_path, pilot_raw):
    raw = copy.deepcopy(pilot_raw)
    raw["training"]["select_on"] = "val_accuracy"
    message = config_error(tmp_path, raw)
    assert "training.select_on" in message and "val_exact_match" in message


def test_bad_compile_scope_is_named(tmp_path, pilot_raw):
    raw = copy.deepcopy(pilot_raw)
    raw["training"]["compile_scope"] = "layers"
    message = config_error(tmp_path, raw)
    assert "training.compile_scope" in message and "blocks, model" in message


def test_the_trainer_compiles_what_the_config_names_unless_told(tiny):
    import dataclasses

    from src.data import load_jsonl
    from src.model import CompactTransformer
    from src.training.trainer import DeviceData, Trainer

    base = load_config(tiny["config"])
    batch = make_batch(load_jsonl(base.data.path("train"), base.model.max_seq_len), base.model.max_seq_len)
    cpu = torch.device("cpu")
    for scope, other in (("blocks", "model"), ("model", "blocks")):
        cfg = dataclasses.replace(base, training=dataclasses.replace(base.training, compile_scope=scope))
        data, model = DeviceData(batch, cfg, cpu), CompactTransformer(cfg.model)
        assert Trainer(cfg, model, data, cpu, "fp32", 0, log=lambda *_: None).compile_scope == scope
        assert Trainer(cfg, model, data, cpu, "fp32", 0, log=lambda *_: None, compile_scope=other).compile_scope == other


def test_the_shipped_configs_keep_their_defaults():
    for name in ("pilot", "scale_10m"):
        cfg = load_config(PILOT.parent / f"{name}.yaml")
        assert cfg.data.train_size == 0 and cfg.data.answer_format == "plain"
        assert cfg.training.select_on == "val_loss" and cfg.training.compile_scope == "blocks"


# ---------------------------------------------------------------------------- selection


def test_selection_on_exact_match_breaks_ties_by_answer_loss():
    a = {"loss": 1.0, "exact_match": 0.50, "answer_loss": 0.30}
    b = {"loss": 0.9, "exact_match": 0.50, "answer_loss": 0.20}  # same exact_match, lower answer loss
    c = {"loss": 2.0, "exact_match": 0.51, "answer_loss": 0.90}  # higher exact_match, worse losses
    rank = lambda v: selection_key(v, "val_exact_match")  # noqa: E731
    assert rank(b) > rank(a) and rank(c) > rank(b)
    assert max([a, b, c], key=rank) is c
    assert max([a, b, c], key=lambda v: selection_key(v, "val_loss")) is b


def test_a_run_selected_on_exact_match_keeps_the_epoch_with_the_best_exact_match(tiny, tmp_path, capsys,
                                                                                  monkeypatch):
    """Validation results are made up per epoch (exact_match rises then falls, the loss falls all
    along): checkpoint_best.pt is the epoch of the highest exact_match, not of the lowest loss."""
    made_up = iter([
        {"exact_match": 0.10, "answer_loss": 2.0, "loss": 3.0},
        {"exact_match": 0.30, "answer_loss": 1.5, "loss": 2.5},
        {"exact_match": 0.30, "answer_loss": 1.4, "loss": 2.0},  # a tie, broken by the lower answer loss
        {"exact_match": 0.20, "answer_loss": 1.0, "loss": 1.0},
    ])
    real = src.train.evaluate_batch

    def evaluate_batch(*args, **kwargs):
        return {**real(*args, **kwargs), **next(made_up)}

    monkeypatch.setattr(src.train, "evaluate_batch", evaluate_batch)
    config = write_yaml(tmp_path / "em.yaml", tiny_raw(tiny["data"], select_on="val_exact_match"))
    rc, out, err = cli(src.train.main, ["--config", config, "--output-dir", tmp_path / "run", "--device", "cpu",
                                        "--no-progress"], capsys)
    assert rc == 0, err
    best = torch.load(tmp_path / "run" / "checkpoint_best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["best"]["metrics"]["exact_match"] == 0.30
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_epoch"] == 3


# ---------------------------------------------------------------------------- reversed answers


@pytest.mark.parametrize("result, text", [(0, "0"), (7, "7"), (120, "021"), (-123, "-321"), (-10, "-01"),
                                          (96059601, "10695069")])
def test_reversed_answers_round_trip_through_the_tokenizer(result, text):
    assert answer_text(result, "reversed") == text
    ids = sequence_ids("1+2", result, "reversed")
    assert decode(ids) == f"1+2 = {text}"
    assert answer_text(result, "plain") == str(result)
    assert ANSWER_FORMATS == ("plain", "reversed")


def test_a_batch_in_the_reversed_format_supervises_the_reversed_digits():
    from src.data import make_record

    records = [make_record("12*10"), make_record("3-45")]  # 120 and -42
    plain, rev = make_batch(records, 32), make_batch(records, 32, answer_format="reversed")
    for batch, texts in ((plain, ["120", "-42"]), (rev, ["021", "-24"])):
        for row, text in enumerate(texts):
            answer = batch.labels[row][batch.answer_mask[row]].tolist()
            assert decode(answer + [2]) == text  # the answer's tokens, then <EOS> ends it


# ---------------------------------------------------------------------------- held out, at training time


def test_training_refuses_a_training_file_that_shares_an_expression_with_a_held_out_file(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(GOOD_LINES[:64]) + "\n")
    (data / "val.jsonl").write_text("\n".join(GOOD_LINES[64:80]) + "\n")
    raw = tiny_raw(data)
    raw["data"]["test_depth3"] = str(data / "test.jsonl")
    (data / "test.jsonl").write_text("\n".join(GOOD_LINES[80:90] + [GOOD_LINES[5]]) + "\n")
    config = write_yaml(tmp_path / "c.yaml", raw)
    run = tmp_path / "run"
    message = expect_error(cli(src.train.main, ["--config", config, "--output-dir", run, "--device", "cpu"], capsys),
                           "train.jsonl:6:", "is held out", "test.jsonl")
    assert "line 11" in message
    assert not run.exists()


def test_training_refuses_a_repeated_training_expression(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(GOOD_LINES[:64] + [GOOD_LINES[3]]) + "\n")
    (data / "val.jsonl").write_text("\n".join(GOOD_LINES[64:80]) + "\n")
    config = write_yaml(tmp_path / "c.yaml", tiny_raw(data))
    expect_error(cli(src.train.main, ["--config", config, "--output-dir", tmp_path / "run", "--device", "cpu"], capsys),
                 "train.jsonl:65:", "also on line 4")


# ---------------------------------------------------------------------------- evaluation by class


def test_eval_json_breaks_exact_match_down_by_class(tiny, tmp_path, capsys):
    import shutil

    from src.analysis import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny["finished"], run)
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cpu", "--limit", "12"], capsys)
    assert rc == 0, err
    res = json.loads((run / "eval.limit12.json").read_text())  # a --limit run: its own file
    for split, metrics in res["metrics"].items():
        by_class = res["exact_match_by_class"][split]
        n = metrics["n_examples"]
        assert by_class["all"]["n"] == n == 12
        assert by_class["all"]["exact_match"] == pytest.approx(metrics["exact_match"])
        for group in ("by_operands", "by_operators", "by_depth", "by_class"):
            assert sum(cell["n"] for cell in by_class[group].values()) == n, (split, group)


def test_the_extension_configs_are_what_the_script_writes_and_load():
    import subprocess
    import sys

    from tests.runs import REPO_ROOT

    result = subprocess.run([sys.executable, "scripts/make_extension_configs.py", "--check"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    configs = sorted((REPO_ROOT / "configs" / "extension").glob("*.yaml"))
    assert len(configs) == 12
    steps = set()
    for path in configs:
        cfg = load_config(path)
        assert cfg.model.dropout == 0.0 and cfg.training.select_on == "val_exact_match"
        assert cfg.data.train_size in (2_000, 20_000, 200_000, 2_000_000)
        steps.add(cfg.training.epochs * -(-cfg.data.train_size // cfg.training.batch_size))
    assert max(steps) - min(steps) <= 0.002 * max(steps)  # one step budget for every N (whole epochs: within 0.12%)


# ---------------------------------------------------------------------------- the batch, built at once


def reference_batch(records, max_seq_len, answer_format="plain"):
    """make_batch's tensors built record by record, from sequence_ids and prompt_ids."""
    from src.tokenizer import IGNORE_INDEX, PAD_ID, prompt_ids

    n = len(records)
    inputs = torch.full((n, max_seq_len), PAD_ID, dtype=torch.long)
    labels = torch.full((n, max_seq_len), IGNORE_INDEX, dtype=torch.long)
    answer_mask = torch.zeros((n, max_seq_len), dtype=torch.bool)
    depth = torch.full((n, max_seq_len), -1, dtype=torch.long)
    eos_pos, prompt_len = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for i, r in enumerate(records):
        seq = sequence_ids(r.expr, r.result, answer_format)
        m, p = len(seq) - 1, len(prompt_ids(r.expr))
        inputs[i, :m], labels[i, :m] = torch.tensor(seq[:-1]), torch.tensor(seq[1:])
        answer_mask[i, p - 1: m] = True
        eos_pos[i], prompt_len[i] = m - 1, p
        depth[i, 1: 1 + len(r.expr)] = torch.tensor(r.depth)
    return inputs, labels, answer_mask, eos_pos, prompt_len, depth


@pytest.mark.parametrize("answer_format", ["plain", "reversed"])
def test_make_batch_equals_the_record_by_record_construction(answer_format):
    from src.data import load_jsonl
    from tests.runs import REPO_ROOT

    for name in ("pilot_train", "pilot_test_depth3", "pilot_test_paren_matched"):
        records = load_jsonl(REPO_ROOT / "data" / f"{name}.jsonl", 32)
        batch = make_batch(records, 32, answer_format)
        for got, want in zip((batch.inputs, batch.labels, batch.answer_mask, batch.eos_pos, batch.prompt_len,
                              batch.depth), reference_batch(records, 32, answer_format)):
            assert got.dtype == want.dtype and torch.equal(got, want), name
        assert batch.results == [r.result for r in records]


def test_make_batch_refuses_a_sequence_longer_than_max_seq_len():
    from src.data import make_record

    with pytest.raises(UserError, match="needs 16 tokens, more than max_seq_len 12"):
        make_batch([make_record("1+2"), make_record("12*34+56")], 12)


@pytest.mark.slow
def test_a_config_naming_its_training_set_by_size_generates_it_and_trains(tiny, tmp_path, capsys, monkeypatch):
    """data.train_size 2,100: the pilot's 2,000 training lines and 100 generated ones, made on the
    first run (into a temporary directory here), verified and reused on the next."""
    import src.config
    from tests.runs import REPO_ROOT

    monkeypatch.setattr(src.config, "GENERATED_DIR", tmp_path / "generated")
    raw = tiny_raw(tiny["data"], epochs=1, batch_size=64, eval_interval=1)
    raw["data"] = {k: str(REPO_ROOT / "data" / f"pilot_{k}.jsonl") for k in
                   ("val", "test_flat", "test_paren", "test_depth3", "test_paren_matched")}
    raw["data"]["train_size"] = 2100
    config = write_yaml(tmp_path / "n2100.yaml", raw)
    for run in ("a", "b"):
        rc, out, err = cli(src.train.main, ["--config", config, "--output-dir", tmp_path / run, "--device", "cpu",
                                            "--no-progress"], capsys)
        assert rc == 0, err
        assert "train_2100.jsonl (2100 examples)" in out
    generated = (tmp_path / "generated" / "train_2100.jsonl").read_text().splitlines()
    assert generated[:2000] == (REPO_ROOT / "data" / "pilot_train.jsonl").read_text().splitlines()
    assert len(generated) == 2100
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["steps"] == 33  # ceil(2100 / 64)


def test_the_sweep_refuses_a_config_whose_name_and_training_set_size_disagree(tmp_path, pilot_raw, capsys):
    from src import sweep

    raw = copy.deepcopy(pilot_raw)
    del raw["data"]["train"]
    raw["data"]["train_size"] = 20000
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    write_yaml(sweep_dir / "ext_pilot_n200000.yaml", raw)
    message = expect_error(cli(sweep.main, [sweep_dir, "--seeds", "1", "--device", "cpu", "--dry-run"], capsys),
                           "ext_pilot_n200000.yaml", "N = 200,000", "data.train_size 20000")
    assert "rename the config" in message


@pytest.mark.slow
def test_the_report_tool_appends_the_extension_section_with_its_figures_linked(tmp_path, capsys):
    from src.report.cli import main as report_main
    from tests.runs import REPO_ROOT

    runs = [REPO_ROOT / "results" / config / f"seed{seed}" for config in ("pilot", "scale_10m") for seed in (42, 123, 7)]
    out = tmp_path / "REPORT.md"
    rc, _, err = cli(report_main, [*runs, "--out", out, "--extension", REPO_ROOT / "results" / "extension"], capsys)
    assert rc == 0, err
    text = out.read_text()
    section = text[text.index("## Extension: when the models compute"):]
    assert "| 10m | 2,000,000 |" in section
    for link in re.findall(r"\]\(([^)]+\.png)\)", section):
        assert (out.parent / link).resolve().is_file(), link
    rc, _, err = cli(report_main, [*runs, "--out", tmp_path / "b" / "REPORT.md", "--extension", tmp_path], capsys)
    assert rc == 2 and "extension.json" in err and "python -m src.report.scaling" in err
