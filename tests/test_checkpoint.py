"""The checkpoint files of src/rundir/checkpoint.py: a checkpoint_latest.pt whose contents do not match
the schema is refused when a run resumes, naming the file and what is wrong, and nothing changes.
docs/RELIABILITY.md lists the cases.
"""

import pytest
import torch

from tests.runs import copy_run, expect_error, snapshot, train_argv, train_entry

# ---------------------------------------------------------------------------- checkpoint contents, checked when a run resumes


def damage(ckpt: dict, case: str) -> None:
    if case == "negative_step":
        ckpt["step"] = -1
    elif case == "epoch_not_a_number":
        ckpt["epoch"] = "two"
    elif case == "skipped_beyond_step":
        ckpt["skipped_steps"] = ckpt["step"] + 1
    elif case == "optimizer_moment_wrong_shape":
        ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    elif case == "optimizer_too_few_params":
        ckpt["optimizer"]["param_groups"][0]["params"] = ckpt["optimizer"]["param_groups"][0]["params"][:-1]
    elif case == "scale_not_finite":
        ckpt["scaler"]["scale"] = torch.tensor(float("nan"))
    elif case == "rng_wrong_dtype":
        ckpt["rng"]["cpu"] = torch.zeros(8)
    elif case == "best_not_a_mapping":
        ckpt["best"] = 1.5
    elif case == "weights_wrong_dtype":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = ckpt["model"][name].half()
    elif case == "weights_not_finite":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = ckpt["model"][name].clone().fill_(float("nan"))
    elif case == "model_config_zero_heads":  # was a ZeroDivisionError
        ckpt["model_config"]["num_heads"] = 0
    elif case == "model_config_wrong_type":  # was a TypeError
        ckpt["model_config"]["d_model"] = "32"
    elif case == "epoch_state_missing":
        ckpt["epoch_step"] = 3
    elif case == "seed_missing":  # was resumed with seed 42 and a note
        del ckpt["seed"]
    elif case == "seed_not_a_number":
        ckpt["seed"] = "42"


DAMAGE = {
    "negative_step": "'step' must be a whole number >= 0, got '-1'",
    "epoch_not_a_number": "'epoch' must be a whole number >= 0, got 'two'",
    "skipped_beyond_step": "'skipped_steps'",
    "optimizer_moment_wrong_shape": "exp_avg is missing, of the wrong shape or not finite",
    "optimizer_too_few_params": "'optimizer' holds",
    "scale_not_finite": "'scaler' must hold a positive finite scale",
    "rng_wrong_dtype": "'rng' must hold the cpu and shuffle generator states",
    "best_not_a_mapping": "'best' must be a mapping",
    "weights_wrong_dtype": "has dtype torch.float16, expected torch.float32",
    "weights_not_finite": "holds non-finite values (NaN or inf)",
    "model_config_zero_heads": "key 'model.num_heads' must be positive, got 0",
    "model_config_wrong_type": "key 'model.d_model' must be int, got '32'",
    "epoch_state_missing": "'epoch_state' must hold the tensors",
    "seed_missing": "no training state (no 'seed' entry)",
    "seed_not_a_number": "'seed' must be a whole number >= 0, got '42'",
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_checkpoint_contents_are_checked_against_the_schema(case, tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    latest = run / "checkpoint_latest.pt"
    ckpt = torch.load(latest, weights_only=True)
    damage(ckpt, case)
    latest.unlink()  # a new file: the hard links of the other names keep the good checkpoint
    torch.save(ckpt, latest)
    before = snapshot(run)
    expect_error(train_entry(train_argv(tiny["config"], run, "--resume"), capsys), str(latest), DAMAGE[case])
    assert snapshot(run) == before
