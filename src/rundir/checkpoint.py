"""Checkpoints: serialized in memory, written atomically (src.rundir.atomic), read with `weights_only=True`,
one reader for every tool.

A checkpoint is a plain dict of tensors and Python scalars, so it loads without unpickling code:
    model_config, config, model       the architecture, the whole config, the weights
    epoch, step, skipped_steps, best  where the run is (epochs finished, optimizer steps)
    optimizer, scaler, rng            the rest of the training state
    seed, precision, epoch_changes    the run's identity, checked on --resume
    epoch_step, epoch_state           only in a checkpoint written mid-epoch (SIGTERM, Ctrl-C)

Every reader checks what it uses against this schema (keys, types, shapes, dtypes, ranges, finite
weights) before it is used, so a damaged or foreign file is a one-line error, never a crash later.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import sys
from pathlib import Path

import torch

from src.config import Config, ModelConfig, model_config_from_dict
from src.errors import UserError
from src.model import CompactTransformer, is_export_dir, load_pretrained

# what a checkpoint must hold, besides the model, to be resumed
TRAINING_STATE = ("optimizer", "scaler", "step", "skipped_steps", "rng", "epoch", "best", "seed", "precision",
                  "epoch_changes")


def make_checkpoint(cfg: Config, model: torch.nn.Module, *, epoch: int, step: int, best: dict, **state) -> dict:
    """The checkpoint dict of the schema above for `model`, trained with `cfg`: the architecture, the
    whole config and the weights, where the run is, and the entries of `state` (seed, precision and
    the trainer's state for a resumable checkpoint). The one place a checkpoint is put together."""
    return {"model_config": dataclasses.asdict(cfg.model), "config": cfg.to_dict(), "model": model.state_dict(),
            "epoch": epoch, "step": step, "best": best, **state}


def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict at `path`; a UserError that says why when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is long and suggests weights_only=False; keep only what the file holds
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"an object of class {found.group(1)}" if found else "objects"
        raise UserError(
            f"{path}: refused by torch.load(weights_only=True): the file holds {what}, which only "
            "unpickling code could rebuild; load only checkpoints written by src.train"
        ) from None
    except Exception as err:  # a damaged file fails in many ways: EOFError, KeyError, RuntimeError, ...
        detail = " ".join([type(err).__name__] + str(err).split(". ")[0].splitlines()[:1])[:160]
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {detail})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no 'model' and 'model_config' entries)")
    return ckpt


def model_from_checkpoint(ckpt: dict, path="checkpoint", expect: ModelConfig | None = None) -> CompactTransformer:
    """Rebuild the model a checkpoint describes and load its weights.

    With `expect`, a checkpoint of another architecture is an error that names the difference.
    """
    cfg = checked_model_config(ckpt.get("model_config"), path)
    if expect is not None and cfg != expect:
        diffs = [f"{k}: checkpoint {getattr(cfg, k)} vs config {getattr(expect, k)}"
                 for k in ModelConfig.__dataclass_fields__ if getattr(cfg, k) != getattr(expect, k)]
        raise UserError(f"{path}: checkpoint is from another architecture ({'; '.join(diffs)})")
    model = CompactTransformer(cfg)
    check_weights(ckpt["model"], model.state_dict(), path)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:  # torch's first line only names the class; the next ones say what differs
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise UserError(f"{path}: weights do not fit the model ({(lines[1:] or lines)[0][:200]})") from None
    return model


def resolve_checkpoint(run_dir, which: str = "best") -> Path:
    """`best`, `latest` or a path -> the checkpoint file of a run directory."""
    if which in ("best", "latest"):
        path = Path(run_dir) / f"checkpoint_{which}.pt"
        if not path.is_file():
            raise UserError(f"{path}: no {which} checkpoint in run directory {run_dir}; train it with python -m src.train")
        return path
    return Path(which)


def load_model(run_dir, which: str = "best", device="cpu") -> tuple[CompactTransformer, dict]:
    """The trained model of a run directory in eval mode on `device`, and its checkpoint dict.

    An export directory (python -m src.export: config.json and model.safetensors) is read too, as
    `run_dir` or as `which`: its one model, with the checkpoint entries the analysis commands read
    (config, epoch, step, seed, precision; `exported`, its config.json). See export_checkpoint."""
    if which in ("best", "latest") and is_export_dir(run_dir) and not (Path(run_dir) / f"checkpoint_{which}.pt").exists():
        return export_checkpoint(run_dir, which, device)
    if which not in ("best", "latest") and Path(which).is_dir() and is_export_dir(which):
        return export_checkpoint(which, "best", device)
    path = resolve_checkpoint(run_dir, which)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    return model, ckpt


def export_checkpoint(directory, which: str, device) -> tuple[CompactTransformer, dict]:
    """The model of an export directory and a checkpoint dict of what its config.json records.

    An export holds one model: `best` (the default of every command) reads it, `latest` only when it was
    exported from the latest checkpoint, so that a flag never names a model the directory does not hold."""
    model, config = load_pretrained(directory)
    exported = config.get("checkpoint") if isinstance(config.get("checkpoint"), dict) else {}
    if which != "best" and exported.get("selected") != which:
        raise UserError(f"--checkpoint {which}: {directory} is an export of the {exported.get('selected')} checkpoint "
                        "and holds no other; drop --checkpoint, or export the one you want with python -m src.export")
    if not isinstance(config.get("run_config"), dict):
        raise UserError(f"{directory}: config.json has no run_config (the run's whole config); write the directory "
                        "with python -m src.export")
    ckpt = {"model_config": config["model_config"], "config": config["run_config"], "model": model.state_dict(),
            "epoch": exported.get("epoch"), "step": exported.get("step"), "seed": config.get("seed"),
            "precision": config.get("trained_precision"), "exported": config}
    return model.to(device), ckpt


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def checked_model_config(raw, path) -> ModelConfig:
    """The ModelConfig a checkpoint names, validated like a config file's model section."""
    if not isinstance(raw, dict):
        raise UserError(f"{path}: model_config does not describe a CompactTransformer (not a mapping)")
    unknown = sorted(set(raw) - set(ModelConfig.__dataclass_fields__), key=str)
    if unknown:
        raise UserError(f"{path}: model_config does not describe a CompactTransformer (unexpected keyword argument "
                        f"{str(unknown[0])[:40]!r})")
    return model_config_from_dict(raw, f"{path} (model_config)")


def check_weights(weights, expected: dict, path) -> None:
    """Every weight a checkpoint holds: the names, shapes and dtypes of the model, and finite."""
    if not isinstance(weights, dict):
        raise UserError(f"{path}: 'model' is not a mapping of weight names to tensors")
    for name, want in expected.items():
        got = weights.get(name)
        if got is None:
            continue  # load_state_dict names the missing and unexpected keys
        if not isinstance(got, torch.Tensor):
            raise UserError(f"{path}: weight {name} is a {type(got).__name__}, not a tensor")
        if got.shape != want.shape:
            continue  # load_state_dict reports the size mismatch with both shapes
        if got.dtype != want.dtype:
            raise UserError(f"{path}: weight {name} has dtype {got.dtype}, expected {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise UserError(f"{path}: weight {name} holds non-finite values (NaN or inf): the model this checkpoint "
                            "saved had diverged; use an earlier checkpoint of the run")


def load_training_checkpoint(path) -> dict:
    """A checkpoint that src.train can resume from, with its training state checked."""
    ckpt = load_checkpoint(path)
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise UserError(f"{path}: holds weights but no training state (no '{missing[0]}' entry); "
                        "only a checkpoint written by src.train can be resumed")

    def bad(key, why):
        raise UserError(f"{path}: damaged training state: '{key}' {why}; resume from another checkpoint of the run "
                        "(copy checkpoint_epoch_N.pt to checkpoint_latest.pt)")

    for key in ("epoch", "step", "skipped_steps", "seed"):
        if not _is_int(ckpt[key]) or ckpt[key] < 0:
            bad(key, f"must be a whole number >= 0, got {str(ckpt[key])[:40]!r}")
    if ckpt["skipped_steps"] > ckpt["step"]:
        bad("skipped_steps", f"({ckpt['skipped_steps']}) exceeds 'step' ({ckpt['step']})")
    epoch_step = ckpt.get("epoch_step", 0)
    if not _is_int(epoch_step) or epoch_step < 0:
        bad("epoch_step", f"must be a whole number >= 0, got {str(epoch_step)[:40]!r}")
    if epoch_step and not (isinstance(ckpt.get("epoch_state"), dict)
                           and all(isinstance(ckpt["epoch_state"].get(k), torch.Tensor) for k in EPOCH_STATE)):
        bad("epoch_state", f"must hold the tensors {', '.join(EPOCH_STATE)} of the unfinished epoch")
    best = ckpt["best"]
    if not (isinstance(best, dict) and isinstance(best.get("val_loss"), (int, float))
            and (best.get("epoch") is None or _is_int(best.get("epoch")))):
        bad("best", "must be a mapping with val_loss (a number) and epoch")
    if not isinstance(ckpt.get("config"), dict):
        bad("config", "must be the mapping of the run's config")
    if not isinstance(ckpt["epoch_changes"], list):
        bad("epoch_changes", "must be the list of the run's changes of training.epochs")
    opt = ckpt["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and opt["param_groups"] and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                            for g in opt["param_groups"])):
        bad("optimizer", "must be an optimizer state (state, param_groups)")
    shapes = [w.shape for w in ckpt["model"].values()] if isinstance(ckpt["model"], dict) else []
    if sum(len(g["params"]) for g in opt["param_groups"]) != len(shapes):
        bad("optimizer", f"holds {sum(len(g['params']) for g in opt['param_groups'])} parameters, the model {len(shapes)}")
    for index, state in opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state.get(key) if isinstance(state, dict) else None
            if not (_is_int(index) and 0 <= index < len(shapes) and isinstance(moment, torch.Tensor)
                    and moment.shape == shapes[index] and bool(torch.isfinite(moment).all())):
                bad("optimizer", f"state of parameter {index}: {key} is missing, of the wrong shape or not finite")
    scaler = ckpt["scaler"]
    if not (isinstance(scaler, dict) and isinstance(scaler.get("scale"), torch.Tensor)
            and isinstance(scaler.get("growth_tracker"), torch.Tensor) and scaler["scale"].numel() == 1
            and bool(torch.isfinite(scaler["scale"])) and float(scaler["scale"]) > 0):
        bad("scaler", "must hold a positive finite scale and a growth_tracker tensor")
    rng = ckpt["rng"]
    if not (isinstance(rng, dict) and all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
                                          for k in ("cpu", "shuffle"))):
        bad("rng", "must hold the cpu and shuffle generator states (uint8 tensors)")
    return ckpt


# the state of an unfinished epoch, kept in a checkpoint written on SIGTERM or Ctrl-C
EPOCH_STATE = ("order", "loss_sum", "good_steps", "bad_streak", "max_bad_streak")


def _run_identity(run: Path) -> tuple[dict | None, object]:
    """(config mapping, seed) the run directory records (config.yaml, summary.json); None where absent."""
    import json

    import yaml

    config = seed = None
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        pass
    try:
        seed = json.loads((run / "summary.json").read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError, AttributeError, RecursionError):
        pass
    return (config if isinstance(config, dict) else None), seed


def foreign_checkpoint(run, ckpt: dict) -> str | None:
    """How a checkpoint differs from the run directory it is evaluated for (None: it is the run's own).
    Compared: the config's name and model section (the architecture) and the seed, as config.yaml and
    summary.json record them; what the run does not record is not compared."""
    config, seed = _run_identity(Path(run))
    theirs = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    diffs = []
    if config is not None:
        if config.get("name") != theirs.get("name"):
            diffs.append(f"config {str(theirs.get('name'))[:40]!r}, the run's {str(config.get('name'))[:40]!r}")
        ours_model, their_model = config.get("model"), ckpt.get("model_config")
        if isinstance(ours_model, dict) and isinstance(their_model, dict):
            keys = [k for k in sorted(set(ours_model) | set(their_model), key=str) if ours_model.get(k) != their_model.get(k)]
            diffs += [f"model.{k} {str(their_model.get(k))[:20]}, the run's {str(ours_model.get(k))[:20]}" for k in keys[:3]]
    if seed is not None and "seed" in ckpt and ckpt["seed"] != seed:
        diffs.append(f"seed {str(ckpt['seed'])[:24]}, the run's {str(seed)[:24]}")
    return "; ".join(diffs) or None


def check_own_checkpoint(run, ckpt: dict, path, which: str, explicit_out: bool) -> bool:
    """A --checkpoint PATH from another run (config or seed differ) is an error: its scores would be
    written as this run's. Evaluated on purpose, it writes only to an explicit --out, never RUN/'s
    files. Returns whether the checkpoint is foreign (and allowed: --out was given)."""
    if which in ("best", "latest"):
        return False
    diff = foreign_checkpoint(run, ckpt)
    if diff is None:
        return False
    if not explicit_out:
        raise UserError(f"--checkpoint {path}: not a checkpoint of --run {run} ({diff}); its results would be "
                        "written as this run's. Use the run the checkpoint belongs to, or, to evaluate it on purpose, "
                        "give --out PATH (then nothing in the run directory is written)")
    print(f"note: --checkpoint {path} is not a checkpoint of {run} ({diff}); writing only to --out", file=sys.stderr)
    return True
