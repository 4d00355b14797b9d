"""Config: the shipped configs load with the design.s values; every mistake is a UserError naming the key."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.config import check_data_paths, config_from_dict, load_config
from src.errors import UserError

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
