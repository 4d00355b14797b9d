"""The one error path of every entry point (src/errors.py: UserError and run_main): a bad input is one
line and exit status 2, --debug shows the traceback, Ctrl-C is one line and exit 130, and no
exception reaches the user as a traceback. docs/RELIABILITY.md lists the cases.
"""

import pytest

import src.analysis.evaluate
import src.train
from src.errors import run_main
from tests.runs import (
    GOOD_LINES,
    cli,
    pickled_code_checkpoint,
    run_cli,
    tiny_raw,
    write_yaml,
)

# ---------------------------------------------------------------------------- the real entry points


@pytest.mark.slow  # the command line's side; test_debug_raises_the_error_for_its_traceback is the fast check
def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "nope.yaml"
    proc = run_cli(["-m", "src.train", "--config", config, "--output-dir", tmp_path / "run", "--device", "cpu",
                    "--debug"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    assert f"{config}: config file not found" in proc.stderr


def test_debug_raises_the_error_for_its_traceback(tmp_path, capsys):
    """In-process: with --debug, run_main lets the UserError through, so Python prints its traceback."""
    from src.errors import UserError
    config = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="config file not found") as raised:
        run_main(src.train.main, [str(a) for a in ("--config", config, "--output-dir", tmp_path / "run",
                                                   "--device", "cpu", "--debug")])
    assert f"{config}: config file not found" in str(raised.value)
    assert capsys.readouterr().err == ""  # not the short message: the traceback replaces it


def _subprocess_cases(tiny, tmp_path):
    bad_data = tmp_path / "train.jsonl"
    bad_data.write_text(GOOD_LINES[0] + "\n{not json\n")
    raw = tiny_raw(tiny["data"])
    raw["data"]["train"] = str(bad_data)
    bad_data_config = write_yaml(tmp_path / "bad_data.yaml", raw)
    raw = tiny_raw(tiny["data"])
    raw["model"]["num_heads"] = 3
    bad_heads = write_yaml(tmp_path / "bad_heads.yaml", raw)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickled_code_checkpoint(tmp_path))
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    out = tmp_path / "run"
    return {
        "train_config_missing": (["-m", "src.train", "--config", tmp_path / "nope.yaml", "--output-dir", out,
                                  "--device", "cpu"], 2, f"{tmp_path / 'nope.yaml'}: config file not found"),
        "train_data_not_json": (["-m", "src.train", "--config", bad_data_config, "--output-dir", out,
                                 "--device", "cpu"], 2, f"{bad_data}:2: not valid JSON"),
        "evaluate_no_checkpoint": (["-m", "src.analysis.evaluate", "--run", empty_run, "--device", "cpu"], 2,
                                   "no best checkpoint in run directory"),
        "evaluate_pickled_code": (["-m", "src.analysis.evaluate", "--run", tiny["finished"], "--checkpoint", evil,
                                   "--device", "cpu"], 2, "refused by torch.load(weights_only=True)"),
        # verify_10m_config.py's contract (DESIGN.md section 7) is exit 1 with an [ERROR] line
        "verify_bad_config": (["verify_10m_config.py", "--config", bad_heads], 1,
                              "[ERROR] Invalid configuration: " + f"{bad_heads}: key 'model.d_model'"),
    }


# one real subprocess per entry point; the other cases run in-process, as the __main__ block runs them
SUBPROCESS_CASES = ["train_config_missing", "evaluate_no_checkpoint", "verify_bad_config"]

IN_PROCESS_CASES = ["train_data_not_json", "evaluate_pickled_code"]

MODULE_MAINS = {"src.train": src.train.main, "src.analysis.evaluate": src.analysis.evaluate.main}


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
@pytest.mark.slow
def test_real_entry_point_reports_bad_input_without_traceback(case, tiny, tmp_path):
    argv, code, says = _subprocess_cases(tiny, tmp_path)[case]
    proc = run_cli(argv)
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, output
    assert "Traceback" not in output
    assert says in output, output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", IN_PROCESS_CASES)
def test_entry_point_reports_bad_input_without_traceback_in_process(case, tiny, tmp_path, capsys):
    argv, code, says = _subprocess_cases(tiny, tmp_path)[case]
    assert argv[0] == "-m"
    rc, out, err = cli(MODULE_MAINS[argv[1]], argv[2:], capsys)
    output = out + err
    assert rc == code, output
    assert "Traceback" not in output
    assert says in output, output
    assert not (tmp_path / "run").exists()


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    """Ctrl-C ends with a short message, not a traceback; --debug re-raises."""
    from src.errors import run_main

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, []) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    with pytest.raises(KeyboardInterrupt):
        run_main(interrupted, ["--debug"])


# ---------------------------------------------------------------------------- no traceback without --debug


def test_run_main_never_prints_a_traceback_without_debug(capsys):
    """The last line of defence of every entry point: an untranslated OSError is its file and reason
    (exit 2), any other exception is called a bug in one line (exit 1), a message is bounded, and
    --debug re-raises."""
    import errno
    import os

    from src.errors import MAX_MESSAGE, UserError, run_main

    def raises(err):
        def main(argv):
            raise err
        return main

    assert run_main(raises(OSError(errno.EACCES, os.strerror(errno.EACCES), "/x/y.json")), []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /x/y.json: Permission denied") and len(err.strip().splitlines()) == 1
    assert run_main(raises(ValueError("something unforeseen")), []) == 1
    err = capsys.readouterr().err
    assert "internal error (ValueError: something unforeseen). This is a bug: rerun with --debug" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert run_main(raises(UserError("x" * 10**6 + "\n" + "y")), []) == 2
    err = capsys.readouterr().err
    assert len(err) < MAX_MESSAGE + 20 and "(1000002 characters)" in err
    with pytest.raises(ValueError):
        run_main(raises(ValueError("shown")), ["--debug"])
