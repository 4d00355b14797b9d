"""data.train_kind: which generated training set a config names (plain train_N.jsonl or the near-twin-free
train_nt_N.jsonl), resolved alike by the trainer, the analyses and the evaluation's near-twin subsets."""

from pathlib import Path

import pytest
import yaml

import src.config
import src.train
from src.analysis import bracket_cost
from src.config import load_config
from src.data import make_record, trainsets
from src.errors import UserError
from tests.runs import PILOT, write_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def sized_raw() -> dict:
    raw = yaml.safe_load(PILOT.read_text(encoding="utf-8"))
    del raw["data"]["train"]
    raw["data"]["train_size"] = 5
    return raw


def test_the_default_kind_is_plain_and_the_existing_configs_load_unchanged():
    cfg = load_config(REPO_ROOT / "configs" / "extension" / "ext_10m_n2000000.yaml")
    assert cfg.data.train_kind == "plain" and cfg.data.path("train").name == "train_2000000.jsonl"
    assert load_config(PILOT).data.train_kind == "plain"
    assert "train_kind" not in src.config.DataConfig.splits()


def test_near_twin_free_resolves_to_the_nt_file_the_generator_writes(tmp_path, sized_raw):
    sized_raw["data"]["train_kind"] = "near_twin_free"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", sized_raw))
    assert cfg.data.path("train") == trainsets.training_set_path(5, kind="near_twin_free")
    assert cfg.data.path("train").name == "train_nt_5.jsonl"
    assert trainsets.KINDS == src.config.TRAIN_KINDS


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(train_kind="twin_free"), "must be one of plain, near_twin_free"),
    (lambda d: (d.update(train_kind="near_twin_free", train="data/pilot_train.jsonl"), d.pop("train_size")),
     "needs data.train_size"),
])
def test_a_bad_kind_is_an_error_naming_the_key(tmp_path, sized_raw, change, fragment):
    change(sized_raw["data"])
    path = write_yaml(tmp_path / "c.yaml", sized_raw)
    with pytest.raises(UserError, match="data.train_kind") as info:
        load_config(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("scale, precision", [("pilot", "fp32"), ("10m", "fp16")])
def test_the_study_configs_are_the_extension_configs_on_the_near_twin_free_set(scale, precision):
    study = load_config(REPO_ROOT / "configs" / "study" / f"study_{scale}.yaml")
    ext = load_config(REPO_ROOT / "configs" / "extension" / f"ext_{scale}_n2000000.yaml")
    assert study.data.train_kind == "near_twin_free" and study.data.train_size == 2_000_000
    assert study.data.answer_format == "plain" and study.training.loss_on == "answer"
    assert study.training.packing and study.training.precision == precision and study.training.epochs == 32
    assert study.model == ext.model
    same = {k: v for k, v in vars(ext.training).items() if k not in ("precision", "packing", "epochs")}
    assert same == {k: v for k, v in vars(study.training).items() if k in same}
    text = (REPO_ROOT / "configs" / "study" / f"study_{scale}.yaml").read_text()
    assert "chosen on validation exact_match" in text and "before any run of the study read a test file" in text


def test_the_trainer_asks_for_the_configured_kind(tmp_path, sized_raw, monkeypatch, capsys):
    sized_raw["data"]["train_kind"] = "near_twin_free"
    sized_raw["training"].update(compile=False, cuda_graph=False)
    asked = []

    def stop(n, **kwargs):
        asked.append((n, kwargs.get("kind")))
        raise UserError("stopped here")

    monkeypatch.setattr(src.train, "ensure_training_set", stop)
    config = write_yaml(tmp_path / "c.yaml", sized_raw)
    with pytest.raises(UserError, match="stopped here"):
        src.train.main(["--config", str(config), "--output-dir", str(tmp_path / "run"), "--device", "cpu",
                        "--no-progress"])
    assert asked == [(5, "near_twin_free")]


def test_the_near_twin_subsets_read_the_run_s_own_kind_of_set(tmp_path, sized_raw, monkeypatch):
    monkeypatch.setattr(src.config, "GENERATED_DIR", tmp_path)
    sized_raw["data"]["train_kind"] = "near_twin_free"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", sized_raw))
    (tmp_path / "train_nt_5.jsonl").write_text("".join(make_record(e).to_json() + "\n" for e in ["3+5", "2*7"]))
    (tmp_path / "train_5.jsonl").write_text(make_record("9-1").to_json() + "\n")  # the plain set: not read
    out = bracket_cost.near_twin_free(cfg, {}, None, {"extra": (["5+3", "9-1"], [True, False])})
    assert out["training_set"] == str(tmp_path / "train_nt_5.jsonl") and out["training_forms"] == 2
    assert out["splits"]["extra"]["near_twins_seen"] == 1
