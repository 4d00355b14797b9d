"""YAML config -> typed, validated config.

Every key is required and every unknown key is an error: a typo in a config must never fall
back silently to a default. The one exception is a key added after checkpoints were saved with
configs that lack it: it has a default, so that those checkpoints still load. Errors name the
file and the key (`training.batch_size`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from src.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    max_seq_len: int
    dropout: float
    rope_base: float

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int
    learning_rate: float
    warmup_steps: int
    epochs: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eval_interval: int
    save_interval: int
    loss_on: str  # "all": every label position; "answer": answer digits and <EOS> only
    compile: bool  # torch.compile the training step (CUDA only)
    cuda_graph: bool  # capture the whole training step as a CUDA graph (CUDA only)
    max_bad_steps: int  # stop after this many consecutive steps with a non-finite loss


@dataclass(frozen=True)
class DataConfig:
    train: str
    val: str
    test_flat: str
    test_paren: str
    test_depth3: str
    test_paren_matched: str = "data/pilot_test_paren_matched.jsonl"  # added later; older configs lack it

    def path(self, split: str) -> Path:
        p = Path(getattr(self, split))
        return p if p.is_absolute() else REPO_ROOT / p


@dataclass(frozen=True)
class Config:
    name: str
    target_parameters: int
    model: ModelConfig
    training: TrainingConfig
    data: DataConfig

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LOSS_ON = ("all", "answer")


def _build(cls, raw, where: str, source: str):
    """Instance of dataclass `cls` from mapping `raw`, checking keys and types."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: '{where or 'top level'}' must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown key '{prefix}{unknown[0]}'; allowed keys: {', '.join(fields)}")
    missing = [k for k, f in fields.items() if k not in raw and f.default is dataclasses.MISSING]
    if missing:
        raise UserError(f"{source}: missing key '{prefix}{missing[0]}'; every key must be given")
    values = {}
    for name, hint in hints.items():
        if name not in raw:
            continue  # a key with a default, omitted
        key, value = f"{prefix}{name}", raw[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key, source)
            continue
        ok = {
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            bool: isinstance(value, bool),
            str: isinstance(value, str),
        }[hint]
        if not ok:
            raise UserError(
                f"{source}: key '{key}' must be {hint.__name__}, got {value!r} ({type(value).__name__})"
            )
        if hint is float:
            number = float(value) if abs(value) < 2**1023 else math.inf  # float() of a huge int overflows
            if not math.isfinite(number):
                raise UserError(f"{source}: key '{key}' must be a finite number, got {value!r}")
            value = number
        values[name] = value
    return cls(**values)


def _check_values(cfg: Config, source: str) -> None:
    m, t = cfg.model, cfg.training

    def bad(key, why):
        raise UserError(f"{source}: key '{key}' {why}")

    for key, value in [
        ("target_parameters", cfg.target_parameters),
        ("model.vocab_size", m.vocab_size), ("model.d_model", m.d_model), ("model.num_layers", m.num_layers),
        ("model.num_heads", m.num_heads), ("model.d_ff", m.d_ff), ("model.max_seq_len", m.max_seq_len),
        ("model.rope_base", m.rope_base), ("training.batch_size", t.batch_size),
        ("training.learning_rate", t.learning_rate), ("training.epochs", t.epochs),
        ("training.grad_clip", t.grad_clip), ("training.eval_interval", t.eval_interval),
        ("training.save_interval", t.save_interval), ("training.max_bad_steps", t.max_bad_steps),
    ]:
        if value <= 0:
            bad(key, f"must be positive, got {value}")
    if m.d_model % m.num_heads:
        bad("model.d_model", f"({m.d_model}) must be divisible by model.num_heads ({m.num_heads})")
    if m.head_dim % 2:
        bad("model.d_model", f"/ model.num_heads gives head size {m.head_dim}; rotary embedding needs an even one")
    from src.tokenizer import VOCAB_SIZE

    if m.vocab_size != VOCAB_SIZE:
        bad("model.vocab_size", f"must be {VOCAB_SIZE}, the size of the tokenizer's vocabulary, got {m.vocab_size}")
    if not 0 <= m.dropout < 1:
        bad("model.dropout", f"must be in [0, 1), got {m.dropout}")
    if t.warmup_steps < 0:
        bad("training.warmup_steps", f"must be zero or positive, got {t.warmup_steps}")
    if t.weight_decay < 0:
        bad("training.weight_decay", f"must be zero or positive, got {t.weight_decay}")
    for key, beta in (("training.beta1", t.beta1), ("training.beta2", t.beta2)):
        if not 0 <= beta < 1:
            bad(key, f"must be in [0, 1), got {beta}")
    if t.loss_on not in LOSS_ON:
        bad("training.loss_on", f"must be one of {', '.join(LOSS_ON)}, got {t.loss_on!r}")


def load_config(path) -> Config:
    """The validated config in YAML file `path`; any problem is a UserError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; the shipped ones are configs/pilot.yaml and configs/scale_10m.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a YAML config (not UTF-8 text: byte {err.start} cannot be decoded)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    cfg = _build(Config, raw, "", str(path))
    _check_values(cfg, str(path))
    return cfg


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    cfg = _build(Config, raw, "", source)
    _check_values(cfg, source)
    return cfg


def check_data_paths(cfg: Config, source: str, splits=("train", "val")) -> None:
    """UserError naming the config key of the first data file that does not exist."""
    for split in splits:
        if not cfg.data.path(split).is_file():
            raise UserError(f"{source}: key 'data.{split}' points to {cfg.data.path(split)}, which does not exist")
