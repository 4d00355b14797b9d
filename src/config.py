"""YAML config -> typed, validated config.

Every key is required and every unknown key is an error: a typo in a config must never fall
back silently to a default. The exceptions are the keys of options a config may leave out, each
with the default that leaves the option off (training.select_on, training.deterministic,
data.train_size, data.train_kind, data.answer_format; data.train where data.train_size names a generated set).
Errors name the file and the key (`training.batch_size`).

A config file is also checked as a file before its values are: at most MAX_CONFIG_BYTES, nested at
most MAX_DEPTH levels (checked on the parser's events, before PyYAML's recursive composer runs), no
anchors or aliases (no "billion laughs"), and no key given twice at any level. Every number has an
upper bound where the code would otherwise overflow or ask for absurd memory, and every message
shows values shortened, so that no config, however large or hostile, gives a long message.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from src.errors import UserError
from src.tokenizer import ANSWER_FORMATS

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
    precision: str  # fp32, fp16 or bf16
    # the checkpoint_best.pt rule: "val_loss", lowest validation loss; or "val_exact_match",
    # highest validation exact_match, ties broken by the lower validation answer loss (DESIGN.md section 8)
    select_on: str = "val_loss"
    # PyTorch's deterministic kernels only, an error where one has none: a guarantee that two
    # trainings of one seed repeat bit for bit, at 9-17% of the batch-256 speed (src/device.py, BENCHMARKS.md)
    deterministic: bool = False
    # several training sequences per row (src/data/packing.py), with attention kept within each and the
    # same batches and loss as padded rows, fewer positions computed (added later: older configs lack it)
    packing: bool = False
    # what training.compile compiles on CUDA: "blocks", each transformer block (one compiled code object,
    # reused by every block), or "model", the whole loss: 1.07x the 10M step on packed rows at twice the
    # compile time, with the rounding of every step changed (BENCHMARKS.md, "Where a packed 10M step goes")
    compile_scope: str = "blocks"


@dataclass(frozen=True)
class DataConfig:
    # the training file; or left out when train_size names a generated set
    train: str = dataclasses.field(default="", kw_only=True)
    val: str
    test_flat: str
    test_paren: str
    test_depth3: str
    test_paren_matched: str
    # the learnability extension (docs/DESIGN.md section 8):
    train_size: int = 0  # train on the generated set of this many expressions (src/data/trainsets.py), not `train`
    # which generated set: "plain", train_N.jsonl; or "near_twin_free", train_nt_N.jsonl, the same stream without
    # the expressions whose canonical form is that of a held-out item (src/data/trainsets.py)
    train_kind: str = "plain"
    answer_format: str = "plain"  # "plain", or "reversed": the answer's digits least significant first

    @staticmethod
    def splits() -> tuple[str, ...]:
        """The keys that name data files: train, val and the test sets."""
        return tuple(f.name for f in dataclasses.fields(DataConfig) if f.name not in ("train_size", "train_kind", "answer_format"))

    def path(self, split: str) -> Path:
        if split == "train" and self.train_size:
            return generated_training_set(self.train_size, kind=self.train_kind)
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


def generated_training_set(n: int, directory=None, kind: str = "plain") -> Path:
    """Where the generated training set of `n` expressions lives: `directory` (default GENERATED_DIR,
    read when called) / train_N.jsonl, or train_nt_N.jsonl for the near_twin_free kind."""
    if kind not in TRAIN_KINDS:
        raise ValueError(f"training set kind {kind!r}: expected one of {', '.join(TRAIN_KINDS)}")
    prefix = "train_nt_" if kind == "near_twin_free" else "train_"
    return Path(GENERATED_DIR if directory is None else directory) / f"{prefix}{n}.jsonl"


LOSS_ON = ("all", "answer")
SELECT_ON = ("val_loss", "val_exact_match")
TRAIN_KINDS = ("plain", "near_twin_free")  # the kinds of generated training set (src/data/trainsets.py)
GENERATED_DIR = REPO_ROOT / "data" / "generated"  # the extension's generated training sets (src/data/trainsets.py)
MAX_TRAIN_SIZE = 20_000_000  # 10 x 2,000,000: 1.7 GB of JSONL, 3.6 GB of memory, 8 minutes on two cores

PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_SCOPES = ("blocks", "model")

MAX_CONFIG_BYTES = 64 * 1024  # a real config is about 1 KiB
MAX_DEPTH = 4  # levels of mappings and lists; a config has 2 (top level, sections)
MAX_SHOWN = 80  # characters of a value or key shown in a message
MAX_MODEL_NUMBERS = 2**34  # weights plus rotary tables: 64 GiB in fp32
# key -> (smallest, largest) allowed value, for the integers that size memory or loops
INT_RANGES = {
    "target_parameters": (1, 10**12),
    "model.vocab_size": (1, 2**20),
    "model.d_model": (1, 65536),
    "model.num_layers": (1, 1024),
    "model.num_heads": (1, 4096),
    "model.d_ff": (1, 4 * 65536),
    "model.max_seq_len": (1, 65536),
    "training.batch_size": (1, 2**20),
    "training.warmup_steps": (0, 10**9),
    "training.epochs": (1, 10**6),
    "training.eval_interval": (1, 10**6),
    "training.save_interval": (1, 10**6),
    "training.max_bad_steps": (1, 10**9),
}


def _short(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` with control characters escaped, cut to `limit` characters with '...'."""
    if len(text) > 4 * limit:
        text = text[:4 * limit]
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value) -> str:
    """repr(value), shortened; an integer too long for repr() is described by its size."""
    try:
        return _short(repr(value))
    except ValueError:  # int -> str is refused beyond sys.get_int_max_str_digits() digits
        return f"an integer of about {_digits(value)} digits"


def _digits(value: int) -> int:
    return int(abs(value).bit_length() * math.log10(2)) + 1


def _key(key) -> str:
    """A mapping key as a message shows it (keys of any YAML type, shortened)."""
    return _short(key if isinstance(key, str) else repr(key))


def _build(cls, raw, where: str, source: str):
    """Instance of dataclass `cls` from mapping `raw`, checking keys and types."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: '{where or 'top level'}' must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    unknown = sorted(set(raw) - set(fields), key=_key)  # keys of any YAML type: sorted as shown
    if unknown:
        raise UserError(f"{source}: unknown key '{prefix}{_key(unknown[0])}'; allowed keys: {', '.join(fields)}")
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
                f"{source}: key '{key}' must be {hint.__name__}, got {_show(value)} ({type(value).__name__})"
                + _number_hint(value, hint)
            )
        if hint is float:
            number = float(value) if abs(value) < 2**1023 else math.inf  # float() of a huge int overflows
            if not math.isfinite(number):
                raise UserError(f"{source}: key '{key}' must be a finite number, got {_show(value)}")
            value = number
        values[name] = value
    return cls(**values)


def _number_hint(value, hint) -> str:
    """For a number that YAML read as text ('8', or 3e-4: YAML 1.1 wants 3.0e-4), how to write it."""
    if hint not in (int, float) or not isinstance(value, str):
        match = None
    else:
        match = re.fullmatch(r"\s*([-+]?(?:\d+\.?\d*|\.\d+))(?:[eE]([-+]?)(\d+))?\s*", value[:MAX_SHOWN + 1])
    if not match:
        return ""
    mantissa, sign, exponent = match.groups()
    if exponent is None:
        return "; write the number without quotes"
    if hint is int:
        return "; write the integer out in digits"
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    return f"; YAML reads {value.strip()} as text: write {mantissa}e{sign or '+'}{exponent}"


def _model_numbers(m: ModelConfig) -> int:
    """About how many numbers the model holds: its weights and its rotary tables."""
    d, ff = m.d_model, m.d_ff
    per_layer = 4 * d * d + 2 * d * ff + 9 * d + ff  # attention, feed-forward, biases, two layer norms
    return m.vocab_size * d + m.num_layers * per_layer + 2 * d + m.max_seq_len * (d // m.num_heads)


def _range_checks(values: dict, source: str) -> None:
    """Each number of `values` ({dotted key: value}) positive where it must be, and within INT_RANGES."""
    for key, value in values.items():
        if key in POSITIVE and value <= 0:
            raise UserError(f"{source}: key '{key}' must be positive, got {_show(value)}")
    for key, value in values.items():
        low_high = INT_RANGES.get(key)
        if low_high and value > low_high[1]:
            raise UserError(f"{source}: key '{key}' must be at most {low_high[1]} (allowed: {low_high[0]} to "
                            f"{low_high[1]}), got {_show(value)}")


# the numbers that must be positive
POSITIVE = ("target_parameters", "model.vocab_size", "model.d_model", "model.num_layers", "model.num_heads",
            "model.d_ff", "model.max_seq_len", "model.rope_base", "training.batch_size", "training.learning_rate",
            "training.epochs", "training.grad_clip", "training.eval_interval", "training.save_interval",
            "training.max_bad_steps")


def _check_model(m: ModelConfig, source: str) -> None:
    """The model section's values: sizes, head size, vocabulary, dropout, and the model as a whole."""
    def bad(key, why):
        raise UserError(f"{source}: key '{key}' {why}")

    _range_checks({f"model.{k}": v for k, v in dataclasses.asdict(m).items() if not isinstance(v, str)}, source)
    if m.d_model % m.num_heads:
        bad("model.d_model", f"({m.d_model}) must be divisible by model.num_heads ({m.num_heads})")
    if m.head_dim % 2:
        bad("model.d_model", f"/ model.num_heads gives head size {m.head_dim}; rotary embedding needs an even one")
    from src.tokenizer import VOCAB_SIZE

    if m.vocab_size != VOCAB_SIZE:
        bad("model.vocab_size", f"must be {VOCAB_SIZE}, the size of the tokenizer's vocabulary, got {m.vocab_size}")
    if not 0 <= m.dropout < 1:
        bad("model.dropout", f"must be in [0, 1), got {_show(m.dropout)}")
    numbers = _model_numbers(m)
    if numbers > MAX_MODEL_NUMBERS:
        raise UserError(
            f"{source}: keys model.d_model ({m.d_model}), model.num_layers ({m.num_layers}), model.d_ff ({m.d_ff}) "
            f"and model.max_seq_len ({m.max_seq_len}) make a model of about {numbers:.3g} numbers (weights and "
            f"rotary tables); at most {MAX_MODEL_NUMBERS} (64 GiB in fp32) are allowed: lower one of them")


def _check_values(cfg: Config, source: str) -> None:
    t = cfg.training

    def bad(key, why):
        raise UserError(f"{source}: key '{key}' {why}")

    numbers = {"target_parameters": cfg.target_parameters}
    numbers.update({f"training.{k}": v for k, v in dataclasses.asdict(t).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    _range_checks(numbers, source)
    _check_model(cfg.model, source)
    if t.warmup_steps < 0:
        bad("training.warmup_steps", f"must be zero or positive, got {_show(t.warmup_steps)}")
    if t.weight_decay < 0:
        bad("training.weight_decay", f"must be zero or positive, got {_show(t.weight_decay)}")
    for key, beta in (("training.beta1", t.beta1), ("training.beta2", t.beta2)):
        if not 0 <= beta < 1:
            bad(key, f"must be in [0, 1), got {_show(beta)}")
    if t.loss_on not in LOSS_ON:
        bad("training.loss_on", f"must be one of {', '.join(LOSS_ON)}, got {_show(t.loss_on)}")
    if t.select_on not in SELECT_ON:
        bad("training.select_on", f"must be one of {', '.join(SELECT_ON)}, got {_show(t.select_on)}")
    if t.compile_scope not in COMPILE_SCOPES:
        bad("training.compile_scope", f"must be one of {', '.join(COMPILE_SCOPES)}, got {_show(t.compile_scope)}")
    d = cfg.data
    if d.train and d.train_size:
        bad("data.train_size", f"names a generated training set, and data.train names the file {_show(d.train)}: "
                               "give one of them")
    if not d.train and not d.train_size:
        raise UserError(f"{source}: missing key 'data.train'; give the training file, or data.train_size for a "
                        "generated set (python -m src.data --train-size N)")
    if d.train_size and not 1 <= d.train_size <= MAX_TRAIN_SIZE:
        bad("data.train_size", f"must be in [1, {MAX_TRAIN_SIZE:,}], got {_show(d.train_size)}")
    if d.train_kind not in TRAIN_KINDS:
        bad("data.train_kind", f"must be one of {', '.join(TRAIN_KINDS)}, got {_show(d.train_kind)}")
    if d.train_kind != "plain" and not d.train_size:
        bad("data.train_kind", f"is {_show(d.train_kind)}, a kind of generated set: it needs data.train_size, "
                               "not the file data.train")
    if d.answer_format not in ANSWER_FORMATS:
        bad("data.answer_format", f"must be one of {', '.join(ANSWER_FORMATS)}, got {_show(d.answer_format)}")
    if t.precision not in PRECISIONS:
        bad("training.precision", f"must be one of {', '.join(PRECISIONS)}, got {_show(t.precision)} "
                                  "(--fp16 on the command line also sets fp16)")


def model_config_from_dict(raw, source: str) -> ModelConfig:
    """A model section on its own (a checkpoint's model_config), checked as in a config file."""
    m = _build(ModelConfig, raw, "model", source)
    _check_model(m, source)
    return m


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in a mapping, at any level, naming it dotted
    (`training.learning_rate`) with the lines of both occurrences; also merge keys (`<<`), and
    integers too long for Python to convert (a ValueError inside PyYAML otherwise)."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self.paths = {}  # id(node) -> dotted prefix of the keys in it ("training.")

    def _fail(self, node, what: str) -> UserError:
        return UserError(f"{self.source}:{node.start_mark.line + 1}: {what}")

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, got {node.id}", node.start_mark)
        prefix = self.paths.get(id(node), "")
        mapping, lines = {}, {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self._fail(key_node, "merge keys (<<) are not allowed in a config; write each key out")
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            dotted = f"{prefix}{_key(key)}"
            if key in mapping:
                raise self._fail(key_node, f"duplicate key '{dotted}' (first at line {lines[key]}); a key may appear "
                                           "once in a section: delete one of them")
            lines[key] = key_node.start_mark.line + 1
            self._set_path(value_node, dotted)
            try:
                mapping[key] = self.construct_object(value_node, deep=deep)
            except ValueError as err:  # a date like 2024-13-45, or an int too long to convert
                if value_node.tag == "tag:yaml.org,2002:int":
                    digits = sum(c.isdigit() for c in str(value_node.value))
                    raise self._fail(value_node, f"key '{dotted}' has a number of {digits} digits, far too large "
                                                 "for any config value") from None
                raise self._fail(value_node, f"key '{dotted}' has a value YAML cannot read "
                                             f"({_short(str(err))})") from None
        return mapping

    def construct_sequence(self, node, deep=False):
        prefix = self.paths.get(id(node), "").rstrip(".")
        for i, child in enumerate(node.value):
            self._set_path(child, f"{prefix}[{i}]")
        return super().construct_sequence(node, deep=deep)

    def _set_path(self, node, dotted: str) -> None:
        if isinstance(node, yaml.MappingNode):
            self.paths[id(node)] = f"{dotted}."
        elif isinstance(node, yaml.SequenceNode):
            self.paths[id(node)] = dotted


def _check_structure(text: str, source: str) -> None:
    """No anchors or aliases, and at most MAX_DEPTH levels of nesting: checked on the parser's
    events, which come from a loop (PyYAML's composer, which builds the nodes, recurses)."""
    loader = yaml.SafeLoader(text)
    depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise UserError(f"{source}:{line}: YAML anchors and aliases (&name, *name) are not allowed in a "
                                "config; write each value out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise UserError(f"{source}:{line}: nested more than {MAX_DEPTH} levels deep (mappings and "
                                    "lists); a config is a mapping of sections, each a mapping of keys to values")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    finally:
        loader.dispose()


def _read_yaml(path: Path):
    """The YAML document in config file `path`, checked as a file: size, nesting, anchors, duplicates."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise UserError(f"{path}: config file cannot be read ({err.strerror or err}); check the path") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config file is {max(size, len(data))} bytes; a config is at most "
                        f"{MAX_CONFIG_BYTES} bytes (the shipped ones are about 1 KiB): is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a YAML config (not UTF-8 text: byte {err.start} cannot be decoded)") from None
    try:
        _check_structure(text, str(path))
        loader = _ConfigLoader(text, str(path))
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({_short(str(getattr(err, 'problem', None) or err), 160)})") from None
    except ValueError as err:  # a value in a list that YAML cannot construct (see construct_mapping)
        raise UserError(f"{path}: not valid YAML ({_short(str(err))})") from None


def load_config(path) -> Config:
    """The validated config in YAML file `path`; any problem is a UserError naming file and key."""
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError:  # a name too long for the file system, say
        is_file = False
    if not is_file:
        raise UserError(f"{path}: config file not found; the shipped ones are configs/pilot.yaml and configs/scale_10m.yaml")
    raw = _read_yaml(path)
    cfg = _build(Config, raw, "", str(path))
    _check_values(cfg, str(path))
    return cfg


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    cfg = _build(Config, raw, "", source)
    _check_values(cfg, source)
    return cfg


CONFIG_SUFFIXES = (".yaml", ".yml")


def find_configs(directory, what: str = "config directory") -> list[Path]:
    """The config files (`*.yaml`, `*.yml`) of `directory`, sorted by name, each naming a config by its
    file stem; a UserError (starting with `what`) when there are none or two share a stem."""
    path = Path(directory)
    if not path.is_dir():
        problem = "is a file, not a directory" if path.exists() else "no such directory"
        raise UserError(f"{what} {directory}: {problem}; give a directory of YAML configs, e.g. configs/extension/")
    files = sorted(p for p in path.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{what} {directory}: no configs in it (no *.yaml or *.yml file); "
                        "put one src.train config per file there")
    stems = [p.stem for p in files]
    for i, stem in enumerate(stems):
        if stem in stems[:i]:
            raise UserError(f"{what} {directory}: {files[stems.index(stem)].name} and {files[i].name} "
                            "name the same config; keep one of them")
    return files


def check_data_paths(cfg: Config, source: str, splits=("train", "val")) -> None:
    """UserError naming the config key of the first data file that does not exist or is not a file."""
    for split in splits:
        path = cfg.data.path(split)
        shown = _short(str(path), 3 * MAX_SHOWN)
        try:
            if path.is_file():
                continue
            is_dir, exists = path.is_dir(), path.exists()
        except OSError as err:  # a name too long for the file system, say
            raise UserError(f"{source}: key 'data.{split}' points to {shown}, which cannot be read "
                            f"({err.strerror or err}); fix the path") from None
        if is_dir:
            raise UserError(f"{source}: key 'data.{split}' points to {shown}, which is a directory, not a .jsonl file")
        if exists:
            raise UserError(f"{source}: key 'data.{split}' points to {shown}, which is not a regular file, "
                            "not a .jsonl file")
        raise UserError(f"{source}: key 'data.{split}' points to {shown}, which does not exist")


def flat(d: dict, prefix: str = "") -> dict:
    """{"training": {"epochs": 4}} -> {"training.epochs": 4}"""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
