"""Reliability: config files: hostile or careless YAML is one clear line, exit 2.

Each case goes through the real entry point, in-process through `run_main(main, argv)` as
`python -m src.train` runs it (the helpers are those of tests/test_reliability.py), and checks the
exit status, that the message names the file (and line) and the config key, that it is short, that
no traceback is printed, and that nothing was written. The cases: duplicate keys at any level, a
"billion laughs" alias bomb, a file too large or nested too deep (10,000 levels included), numbers
too large for the code that uses them, a data path that is a directory, and `training.precision`.
docs/RELIABILITY.md lists every case, what the user sees, and the test that checks it.
"""

import time
from pathlib import Path

import pytest
import yaml

import src.train
import verify_10m_config
from tests.test_reliability import cli, expect_error, tiny_raw, train_argv, write_data, write_yaml

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
    result = cli(src.train.main, train_argv(config, out), capsys)
    return config, out, result


def expect_config_error(result, out: Path, *fragments) -> str:
    message = expect_error(result, *fragments)
    assert len(message) < MAX_MESSAGE, f"{len(message)} characters:\n{message[:2000]}"
    assert not out.exists(), "a run that failed on its config must write nothing"
    return message


# ============================================================================ 1. duplicate keys


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


# ============================================================================ 2. alias bomb


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


# ============================================================================ every message is short


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
    message = expect_config_error(cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: ", says)
    assert "..." in message


def test_integer_too_long_to_convert_is_a_clean_error(data_dir, tmp_path, capsys):
    """Python refuses int() of more than 4300 digits (ValueError): the YAML loader must not crash."""
    lines = tiny_text(data_dir)
    at = line_of(lines, "  epochs:")
    lines[at - 1] = "  epochs: " + "9" * 10_000
    config, out, result = run_text(tmp_path, "\n".join(lines) + "\n", capsys)
    expect_config_error(result, out, f"{config}:{at}: ", "training.epochs", "10000 digits")


# ============================================================================ 3. size and depth caps


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


# ============================================================================ 4. numbers too large


def _set(section, key, value):
    def change(raw):
        (raw if section is None else raw[section])[key] = value
    return change


def _model(**values):
    def change(raw):
        raw["model"].update(values)
    return change


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
    expect_config_error(cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: ", says)


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


# ============================================================================ 5. data path is a directory


@pytest.mark.parametrize("split", ["train", "val"])
def test_data_path_that_is_a_directory(split, data_dir, tmp_path, capsys):
    folder = tmp_path / f"{split}_folder"
    folder.mkdir()
    raw = tiny_raw(data_dir)
    raw["data"][split] = str(folder)
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_config_error(cli(src.train.main, train_argv(config, out), capsys), out,
                        f"{config}: key 'data.{split}' points to {folder}, which is a directory, not a .jsonl file")


def test_data_path_too_long_for_the_file_system(data_dir, tmp_path, capsys):
    """A path longer than the OS allows (ENAMETOOLONG) is a clean error, its path shortened."""
    raw = tiny_raw(data_dir)
    raw["data"]["train"] = str(tmp_path / ("x" * 5000 + ".jsonl"))
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_config_error(cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: key 'data.train' points to ",
                        "cannot be read")


# ============================================================================ 6. training.precision


@pytest.mark.parametrize("value, says", [
    ("fp8", "must be one of fp32, fp16, bf16, got 'fp8'"),
    ("FP16", "must be one of fp32, fp16, bf16, got 'FP16'"),
    (16, "must be str, got 16 (int)"),
])
def test_bad_precision_names_key_and_allowed_values(value, says, data_dir, tmp_path, capsys):
    raw = tiny_raw(data_dir)
    raw["training"]["precision"] = value
    config, out = write_yaml(tmp_path / "c.yaml", raw), tmp_path / "run"
    expect_config_error(cli(src.train.main, train_argv(config, out), capsys), out, f"{config}: key 'training.precision' ",
                        says)
