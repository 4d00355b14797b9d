"""Config: the shipped configs load with the design.s values; every mistake is a UserError naming the key."""

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import src.train
import verify_10m_config
from src.config import check_data_paths, config_from_dict, load_config
from src.errors import UserError
from tests.runs import cli as entry_cli
from tests.runs import expect_error as expect_entry_error
from tests.runs import tiny_raw, train_argv, write_data, write_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PILOT = REPO_ROOT / "configs" / "pilot.yaml"
SCALE_10M = REPO_ROOT / "configs" / "scale_10m.yaml"


@pytest.fixture(scope="module")
def pilot_raw() -> dict:
    return yaml.safe_load(PILOT.read_text(encoding="utf-8"))


def write_config(tmp_path, raw, name="config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def expect_error(path) -> str:
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_pilot_config_loads_with_spec_values():
    cfg = load_config(PILOT)
    m, t = cfg.model, cfg.training
    assert cfg.name == "pilot"
    assert (m.vocab_size, m.d_model, m.num_layers, m.num_heads, m.d_ff, m.max_seq_len) == (35, 128, 4, 4, 384, 32)
    assert m.dropout == 0.1 and m.rope_base == 10000 and m.head_dim == 32
    assert (t.batch_size, t.learning_rate, t.warmup_steps, t.epochs) == (32, 3e-4, 100, 50)
    assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip) == (0.9, 0.95, 0.01, 1.0)
    assert t.loss_on == "all"
    assert isinstance(t.learning_rate, float) and isinstance(m.rope_base, float)


def test_scale_10m_config_loads_with_spec_values():
    cfg = load_config(SCALE_10M)
    m, t = cfg.model, cfg.training
    assert cfg.name == "scale_10m"
    assert (m.vocab_size, m.d_model, m.num_layers, m.num_heads, m.d_ff, m.max_seq_len) == (35, 384, 6, 6, 1536, 32)
    assert m.dropout == 0.1 and m.head_dim == 64
    assert (t.batch_size, t.learning_rate, t.warmup_steps, t.epochs) == (8, 1e-4, 500, 50)
    assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip) == (0.9, 0.95, 0.01, 1.0)
    assert t.save_interval == 5 and t.loss_on == "all"


def test_both_configs_train_on_the_pilot_data():
    pilot, big = load_config(PILOT), load_config(SCALE_10M)
    assert pilot.data == big.data
    assert pilot.data.train == "data/pilot_train.jsonl" and pilot.data.val == "data/pilot_val.jsonl"
    splits = ("train", "val", "test_flat", "test_paren", "test_paren_matched", "test_depth3")
    check_data_paths(big, str(SCALE_10M), splits)  # every file exists; raises otherwise
    assert big.data.path("train") == REPO_ROOT / "data" / "pilot_train.jsonl"


def test_config_from_dict_matches_load_config(pilot_raw):
    assert config_from_dict(copy.deepcopy(pilot_raw)) == load_config(PILOT)


def test_to_dict_round_trips():
    cfg = load_config(PILOT)
    assert config_from_dict(cfg.to_dict()) == cfg


def _set(section, key, value):
    def change(raw):
        (raw[section] if section else raw)[key] = value

    return change


def _delete(section, key):
    def change(raw):
        del (raw[section] if section else raw)[key]

    return change


def _model(**values):
    def change(raw):
        raw["model"].update(values)

    return change


@pytest.mark.parametrize(
    "change, expected",
    [
        (_set("model", "d_modle", 128), ["unknown key", "model.d_modle"]),
        (_set(None, "seed", 1), ["unknown key", "seed"]),
        (_delete("training", "batch_size"), ["missing key", "training.batch_size"]),
        (_delete(None, "target_parameters"), ["missing key", "target_parameters"]),
        (_delete("data", "test_depth3"), ["missing key", "data.test_depth3"]),
        (_set("training", "batch_size", "32"), ["training.batch_size", "int"]),
        (_set("model", "num_layers", True), ["model.num_layers", "int"]),
        (_set("training", "batch_size", 32.0), ["training.batch_size", "int"]),
        (_set("training", "learning_rate", "fast"), ["training.learning_rate", "float"]),
        (_set("training", "compile", "yes"), ["training.compile", "bool"]),
        (_set("training", "loss_on", 1), ["training.loss_on", "str"]),
        (_set(None, "model", 5), ["'model'", "mapping"]),
        (_set("model", "d_model", 0), ["model.d_model", "positive"]),
        (_set("training", "batch_size", -1), ["training.batch_size", "positive"]),
        (_set("training", "epochs", 0), ["training.epochs", "positive"]),
        (_set(None, "target_parameters", 0), ["target_parameters", "positive"]),
        (_model(d_model=130), ["model.d_model", "model.num_heads"]),
        (_model(d_model=12, num_heads=4), ["model.d_model", "even"]),
        (_set("model", "vocab_size", 36), ["model.vocab_size", "35"]),
        (_set("model", "dropout", 1.0), ["model.dropout"]),
        (_set("training", "beta2", 1.0), ["training.beta2"]),
        (_set("training", "warmup_steps", -1), ["training.warmup_steps"]),
        (_set("training", "loss_on", "answers"), ["training.loss_on", "all", "answer"]),
        (_set("training", "precision", "fp64"), ["training.precision", "fp32, fp16, bf16", "'fp64'"]),
        (_set("training", "precision", True), ["training.precision", "str"]),
        (_set("training", "batch_size", 2**20 + 1), ["training.batch_size", "at most 1048576"]),
        (_set("model", "d_model", 2**17), ["model.d_model", "at most 65536"]),
        (_set("training", "epochs", 10**6 + 1), ["training.epochs", "at most 1000000"]),
    ],
)
def test_bad_config_names_the_key(tmp_path, pilot_raw, change, expected):
    raw = copy.deepcopy(pilot_raw)
    change(raw)
    message = expect_error(write_config(tmp_path, raw))
    for text in expected:
        assert text in message


@pytest.mark.parametrize("section, key", [("data", "test_paren_matched"), ("training", "precision")])
def test_a_config_without_the_matched_split_or_the_precision_is_refused(tmp_path, pilot_raw, section, key):
    """Neither key has a default: every config states them (checkpoints carry their whole config)."""
    raw = copy.deepcopy(pilot_raw)
    del raw[section][key]
    with pytest.raises(UserError, match=f"missing key '{section}.{key}'; every key must be given"):
        load_config(write_config(tmp_path, raw))
    for shipped in (PILOT, SCALE_10M):
        assert load_config(shipped).data.test_paren_matched == "data/pilot_test_paren_matched.jsonl"


def test_shipped_configs_give_their_precision():
    assert load_config(PILOT).training.precision == "fp32"
    assert load_config(SCALE_10M).training.precision == "fp16"  # DESIGN.md section 2: the 10M run is FP16


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_every_precision_is_accepted(tmp_path, pilot_raw, precision):
    raw = copy.deepcopy(pilot_raw)
    raw["training"]["precision"] = precision
    assert load_config(write_config(tmp_path, raw)).training.precision == precision


def test_largest_allowed_values_load(tmp_path, pilot_raw):
    """The upper bounds are allowed values, not off by one."""
    raw = copy.deepcopy(pilot_raw)
    raw["model"].update(d_model=4096, num_heads=4096 // 64, num_layers=8, max_seq_len=65536)
    raw["training"].update(batch_size=2**20, epochs=10**6, warmup_steps=10**9, eval_interval=10**6,
                           save_interval=10**6, max_bad_steps=10**9)
    cfg = load_config(write_config(tmp_path, raw))
    assert (cfg.training.batch_size, cfg.training.epochs, cfg.model.max_seq_len) == (2**20, 10**6, 65536)


def test_loss_on_answer_is_accepted(tmp_path, pilot_raw):
    raw = copy.deepcopy(pilot_raw)
    raw["training"]["loss_on"] = "answer"
    assert load_config(write_config(tmp_path, raw)).training.loss_on == "answer"


def test_integer_for_float_is_accepted(tmp_path, pilot_raw):
    raw = copy.deepcopy(pilot_raw)
    raw["model"]["dropout"] = 0
    cfg = load_config(write_config(tmp_path, raw))
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)


def test_missing_config_file(tmp_path):
    assert "not found" in expect_error(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: pilot\nmodel: [1, 2\n", encoding="utf-8")
    assert "YAML" in expect_error(path)


def test_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    assert "top level" in expect_error(path)


def test_check_data_paths_names_the_missing_key(tmp_path, pilot_raw):
    raw = copy.deepcopy(pilot_raw)
    raw["data"]["train"] = str(tmp_path / "no_such_train.jsonl")
    path = write_config(tmp_path, raw)
    cfg = load_config(path)  # loading does not look at the data files
    with pytest.raises(UserError) as info:
        check_data_paths(cfg, str(path))
    assert "data.train" in str(info.value) and "no_such_train.jsonl" in str(info.value)
    check_data_paths(cfg, str(path), splits=("val",))  # the other files are still there


@pytest.mark.slow
def test_find_configs_lists_a_directory_of_configs_and_the_report_needs_no_sweep_runner(tmp_path):
    """find_configs lives with the configs: src.report.scaling lists a grid without importing src.sweep."""
    from src.config import find_configs

    for name in ("b.yaml", "a.yml", "notes.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in find_configs(tmp_path)] == ["a.yml", "b.yaml"]
    (tmp_path / "a.yaml").write_text("")
    with pytest.raises(UserError, match="a.yaml and a.yml name the same config"):
        find_configs(tmp_path)
    with pytest.raises(UserError, match=f"config directory {tmp_path / 'none'}: no such directory"):
        find_configs(tmp_path / "none")
    code = "import sys, src.report.scaling; print('src.sweep' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------------------- bad configs, through python -m src.train (docs/RELIABILITY.md)


# id -> (change to the tiny config, config key named, what the message must say)
BAD_CONFIGS = {
    "unknown_key": (_set("training", "learning_rat", 1e-3), "training.learning_rat", "unknown key"),
    "missing_key": (_delete("training", "max_bad_steps"), "training.max_bad_steps", "missing key"),
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
    expect_entry_error(entry_cli(src.train.main, train_argv(config, out), capsys), f"{config}: ", key, says)
    assert not out.exists(), "a run that failed on its config must write nothing"


def test_config_missing(tmp_path, capsys):
    config, out = tmp_path / "nope.yaml", tmp_path / "run"
    expect_entry_error(entry_cli(src.train.main, train_argv(config, out), capsys), f"{config}: config file not found",
                 "configs/pilot.yaml")
    assert not out.exists()


@pytest.mark.parametrize("name, content, says", [
    ("broken.yaml", b"name: tiny\nmodel: [1, 2\ntraining: {}\n", ":3: not valid YAML"),
    ("binary.yaml", b"name: \xff\xfe\x00\n", ": not a YAML config (not UTF-8"),
    ("list.yaml", b"- model\n- training\n", ": 'top level' must be a mapping"),
], ids=["not_yaml", "not_utf8", "not_a_mapping"])
def test_config_file_that_is_no_config(tmp_path, capsys, name, content, says):
    config, out = tmp_path / name, tmp_path / "run"
    config.write_bytes(content)
    expect_entry_error(entry_cli(src.train.main, train_argv(config, out), capsys), f"{config}{says}")
    assert not out.exists()


def test_config_data_path_does_not_exist(tiny, tmp_path, capsys):
    raw = tiny_raw(tiny["data"])
    raw["data"]["val"] = str(tmp_path / "nope_val.jsonl")
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_entry_error(entry_cli(src.train.main, train_argv(config, out), capsys),
                 f"{config}: key 'data.val' points to {tmp_path / 'nope_val.jsonl'}, which does not exist")
    assert not out.exists()


# ---------------------------------------------------------------------------- config files as files: duplicate keys, aliases, size and depth caps, bounds (docs/RELIABILITY.md)


MAX_MESSAGE = 500  # characters: every config error, whatever the file holds

MAX_CONFIG_BYTES = 65536  # the caps of src/config.py, spelled out: the messages must state them

MAX_DEPTH = 4

MAX_MODEL_NUMBERS = 2**34


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "data")


def tiny_text(data_dir: Path) -> list[str]:
    """The lines of the tiny config as YAML text (block style, sections in file order)."""
    return yaml.safe_dump(tiny_raw(data_dir), sort_keys=False).splitlines()


def line_of(lines: list[str], prefix: str) -> int:
    """1-based number of the first line starting with `prefix`."""
    return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))


def run_text(tmp_path, text: str, capsys, name="bad.yaml"):
    config, out = tmp_path / name, tmp_path / "run"
    config.write_text(text, encoding="utf-8")
    result = entry_cli(src.train.main, train_argv(config, out), capsys)
    return config, out, result


def expect_config_error(result, out: Path, *fragments) -> str:
    message = expect_entry_error(result, *fragments)
    assert len(message) < MAX_MESSAGE, f"{len(message)} characters:\n{message[:2000]}"
    assert not out.exists(), "a run that failed on its config must write nothing"
    return message


def _duplicate_nested(lines):
    """learning_rate given twice in the training section: the second right after the first."""
    first = line_of(lines, "  learning_rate:")
    return lines[:first] + ["  learning_rate: 0.1"] + lines[first:], "training.learning_rate", first, first + 1


def _duplicate_top_level(lines):
    return lines + ["name: again"], "name", line_of(lines, "name:"), len(lines) + 1


def _duplicate_section(lines):
    """A second `model:` section at the end (its keys are all valid: only the repeat is wrong)."""
    start = line_of(lines, "model:")
    section = lines[start - 1:line_of(lines, "training:") - 1]
    return lines + section, "model", start, len(lines) + 1


def _duplicate_in_flow_mapping(lines):
    """data written as a flow mapping on one line, with train twice."""
    data = line_of(lines, "data:")
    kept = lines[:data - 1]
    return kept + ["data: {train: a.jsonl, val: b.jsonl, train: c.jsonl}"], "data.train", len(kept) + 1, len(kept) + 1


DUPLICATES = {
    "nested_key": _duplicate_nested,
    "top_level_key": _duplicate_top_level,
    "whole_section": _duplicate_section,
    "flow_mapping": _duplicate_in_flow_mapping,
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicate_key_names_dotted_key_and_line_of_second(case, data_dir, tmp_path, capsys):
    lines, key, first, second = DUPLICATES[case](tiny_text(data_dir))
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}:{second}: duplicate key '{key}' (first at line {first})",
                        "delete one of them")


def billion_laughs(lines: list[str]) -> tuple[str, int]:
    """The tiny config with a "billion laughs" as target_parameters: nine levels of nine aliases,
    9**9 strings if expanded; the first anchor is on the line returned."""
    levels = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    at = line_of(lines, "target_parameters:")
    lines = lines[:at - 1] + ["target_parameters:"] + levels + lines[at:]
    return "\n".join(lines) + "\n", at + 1


def test_billion_laughs_is_rejected_quickly_with_a_short_message(data_dir, tmp_path, capsys):
    text, first_anchor = billion_laughs(tiny_text(data_dir))
    assert yaml.compose(text) is not None  # valid YAML: only its expansion is the problem
    tic = time.perf_counter()
    config, out, result = run_text(tmp_path, text, capsys)
    assert time.perf_counter() - tic < 5
    expect_config_error(result, out, f"{config}:{first_anchor}: YAML anchors and aliases (&name, *name) are not "
                        "allowed in a config")


def test_an_alias_alone_is_rejected(data_dir, tmp_path, capsys):
    lines = tiny_text(data_dir)
    at = line_of(lines, "  beta1:")
    lines[at - 1] = "  beta1: &b 0.9"
    lines[at] = "  beta2: *b"
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}:{at}: YAML anchors and aliases")


def _long_value(section, key, value):
    def change(raw):
        (raw if section is None else raw[section])[key] = value
    return change


# id -> (change to the tiny config, what the message must say)
LONG_VALUES = {
    "long_string_for_int": (_long_value("training", "batch_size", "8" * 20_000),
                            "key 'training.batch_size' must be int, got '88888888"),
    "long_unknown_key": (_long_value("training", "x" * 20_000, 1), "unknown key 'training.xxxxxxxx"),
    "long_list_for_float": (_long_value("training", "learning_rate", list(range(5000))),
                            "key 'training.learning_rate' must be float, got [0, 1, 2"),
    "long_int_for_float": (_long_value("training", "learning_rate", 10**1000),
                           "key 'training.learning_rate' must be a finite number, got 1000000"),
    "long_string_for_choice": (_long_value("training", "loss_on", "a" * 20_000),
                               "key 'training.loss_on' must be one of all, answer, got 'aaaa"),
    "long_mapping_for_int": (_long_value("model", "d_model", {f"k{i}": i for i in range(3000)}),
                             "key 'model.d_model' must be int, got {'k0': 0, 'k1': 1"),
}


@pytest.mark.parametrize("case", list(LONG_VALUES))
def test_config_error_messages_are_bounded(case, data_dir, tmp_path, capsys):
    change, says = LONG_VALUES[case]
    raw = tiny_raw(data_dir)
    change(raw)
    config, out = write_yaml(tmp_path / "bad.yaml", raw), tmp_path / "run"
    message = expect_config_error(entry_cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: ", says)
    assert "..." in message


def test_integer_too_long_to_convert_is_a_clean_error(data_dir, tmp_path, capsys):
    """Python refuses int() of more than 4300 digits (ValueError): the YAML loader must not crash."""
    lines = tiny_text(data_dir)
    at = line_of(lines, "  epochs:")
    lines[at - 1] = "  epochs: " + "9" * 10_000
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}:{at}: ", "training.epochs", "10000 digits")


def test_config_larger_than_the_cap_is_rejected_before_parsing(data_dir, tmp_path, capsys):
    """A valid config padded with comments past the cap: the size alone is the error."""
    padding = ["# " + "x" * 98] * (MAX_CONFIG_BYTES // 100 + 1)
    config, out, result = run_text(tmp_path, "\n".join(tiny_text(data_dir) + padding) + "\n", capsys)
    expect_config_error(result, out, f"{config}: config file is ", f"at most {MAX_CONFIG_BYTES} bytes")


def _nested_mapping(depth):
    return "name: " + "{a: " * (depth - 1) + "1" + "}" * (depth - 1)


@pytest.mark.parametrize("document, line", [
    pytest.param("[" * 10_000 + "]" * 10_000 + "\n", 1, id="10000_levels_of_lists"),
    pytest.param("name: tiny\nmodel: " + "[" * 10_000 + "]" * 10_000 + "\n", 2, id="10000_levels_as_a_value"),
    pytest.param("name: tiny\nmodel:\n  d_model: {a: {b: {c: 1}}}\n", 3, id="5_levels_of_mappings"),
    pytest.param("name: tiny\nmodel:\n  d_model:\n    a:\n      b:\n        c: 1\n", 6, id="5_levels_block_style"),
    pytest.param(_nested_mapping(10_000) + "\n", 1, id="10000_levels_of_mappings"),
])
def test_config_nested_too_deep_is_a_clean_error(document, line, tmp_path, capsys):
    tic = time.perf_counter()
    config, out, result = run_text(tmp_path, document, capsys)
    assert time.perf_counter() - tic < 5
    expect_config_error(result, out, f"{config}:{line}: nested more than {MAX_DEPTH} levels deep")


def test_four_levels_of_nesting_are_allowed_by_the_depth_check(data_dir, tmp_path, capsys):
    """Depth 4 passes the depth check and fails later, on the key's type, like any other mistake."""
    lines = tiny_text(data_dir)
    lines[line_of(lines, "  d_model:") - 1] = "  d_model: {a: [1]}"
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}: key 'model.d_model' must be int, got {{'a': [1]}} (dict)")


# id -> (change to the tiny config, what the message must say)
HUGE_NUMBERS = {
    "batch_size": (_set("training", "batch_size", 99999999999999999999999999),
                   "key 'training.batch_size' must be at most 1048576 (allowed: 1 to 1048576), "
                   "got 99999999999999999999999999"),
    "epochs_huge_int": (_set("training", "epochs", 10**30),
                        "key 'training.epochs' must be at most 1000000 (allowed: 1 to 1000000), got 1" + "0" * 30),
    "epochs_inf": (_set("training", "epochs", float("inf")), "key 'training.epochs' must be int, got inf (float)"),
    "learning_rate_inf": (_set("training", "learning_rate", float("inf")),
                          "key 'training.learning_rate' must be a finite number, got inf"),
    "d_model": (_model(d_model=2**20), "key 'model.d_model' must be at most 65536 (allowed: 1 to 65536), got 1048576"),
    "num_layers": (_set("model", "num_layers", 10**12), "key 'model.num_layers' must be at most 1024"),
    "num_heads": (_model(d_model=65536, num_heads=65536), "key 'model.num_heads' must be at most 4096"),
    "d_ff": (_set("model", "d_ff", 10**12), "key 'model.d_ff' must be at most 262144"),
    "max_seq_len": (_set("model", "max_seq_len", 10**12), "key 'model.max_seq_len' must be at most 65536"),
    "warmup_steps": (_set("training", "warmup_steps", 10**30),
                     "key 'training.warmup_steps' must be at most 1000000000 (allowed: 0 to 1000000000)"),
    "eval_interval": (_set("training", "eval_interval", 10**30), "key 'training.eval_interval' must be at most 1000000"),
    "save_interval": (_set("training", "save_interval", 10**30), "key 'training.save_interval' must be at most 1000000"),
    "max_bad_steps": (_set("training", "max_bad_steps", 10**30),
                      "key 'training.max_bad_steps' must be at most 1000000000"),
    "target_parameters": (_set(None, "target_parameters", 10**400),
                          "key 'target_parameters' must be at most 1000000000000 (allowed: 1 to 1000000000000), "
                          "got 1000000000"),
    "model_too_large_together": (_model(d_model=65536, num_layers=1024, num_heads=2, d_ff=262144),
                                 f"at most {MAX_MODEL_NUMBERS}"),
}


@pytest.mark.parametrize("case", list(HUGE_NUMBERS))
def test_number_too_large_names_key_value_and_range(case, data_dir, tmp_path, capsys):
    change, says = HUGE_NUMBERS[case]
    raw = tiny_raw(data_dir)
    change(raw)
    config, out = write_yaml(tmp_path / "bad.yaml", raw), tmp_path / "run"
    expect_config_error(entry_cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: ", says)


@pytest.mark.parametrize("text, key", [("epochs: 1.0e+400", "training.epochs"),
                                        ("learning_rate: 1.0e+400", "training.learning_rate"),
                                        ("learning_rate: -.inf", "training.learning_rate")])
def test_yaml_infinity_is_rejected(text, key, data_dir, tmp_path, capsys):
    lines = tiny_text(data_dir)
    at = line_of(lines, "  " + text.split(":")[0] + ":")
    lines[at - 1] = "  " + text
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}: key '{key}' must be ", "inf")


def test_float_written_without_a_decimal_point_gets_a_hint(data_dir, tmp_path, capsys):
    """YAML 1.1 reads 3e-4 as text: the message says how to write the number."""
    lines = tiny_text(data_dir)
    at = line_of(lines, "  learning_rate:")
    lines[at - 1] = "  learning_rate: 3e-4"
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}: key 'training.learning_rate' must be float, got '3e-4' (str)",
                        "3.0e-4")


def test_verify_script_reports_a_huge_target_instead_of_overflowing(data_dir, tmp_path, capsys):
    """verify_10m_config.py divides by target_parameters as a float: 10**400 used to overflow."""
    raw = tiny_raw(data_dir)
    raw["target_parameters"] = 10**400
    config = write_yaml(tmp_path / "bad.yaml", raw)
    rc = verify_10m_config.main(["--config", str(config)])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out + err
    assert "[ERROR] Invalid configuration: " in out and "target_parameters" in out and len(out) < MAX_MESSAGE


@pytest.mark.parametrize("split", ["train", "val"])
def test_data_path_that_is_a_directory(split, data_dir, tmp_path, capsys):
    folder = tmp_path / f"{split}_folder"
    folder.mkdir()
    raw = tiny_raw(data_dir)
    raw["data"][split] = str(folder)
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_config_error(entry_cli(src.train.main, train_argv(config, out), capsys), out,
                        f"{config}: key 'data.{split}' points to {folder}, which is a directory, not a .jsonl file")


def test_data_path_too_long_for_the_file_system(data_dir, tmp_path, capsys):
    """A path longer than the OS allows (ENAMETOOLONG) is a clean error, its path shortened."""
    raw = tiny_raw(data_dir)
    raw["data"]["train"] = str(tmp_path / ("x" * 5000 + ".jsonl"))
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_config_error(entry_cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: key 'data.train' points to ",
                        "cannot be read")


@pytest.mark.parametrize("value, says", [
    ("fp8", "must be one of fp32, fp16, bf16, got 'fp8'"),
    ("FP16", "must be one of fp32, fp16, bf16, got 'FP16'"),
    (16, "must be str, got 16 (int)"),
])
def test_bad_precision_names_key_and_allowed_values(value, says, data_dir, tmp_path, capsys):
    raw = tiny_raw(data_dir)
    raw["training"]["precision"] = value
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_config_error(entry_cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: key 'training.precision' ",
                        says)
