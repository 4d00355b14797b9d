"""Result files committed compressed: X.json.gz is read where X.json is absent (src/rundir/results.py)."""

import gzip
import json

import pytest

from src.errors import UserError
from src.rundir.atomic import write_result
from src.rundir.results import read_result, result_file, stamp


def test_a_compressed_result_is_read_transparently(tmp_path):
    obj = stamp("patching", {"cells": list(range(1000))})
    written = write_result(tmp_path / "patching.json", obj, compress=True)
    assert written == tmp_path / "patching.json.gz" and not (tmp_path / "patching.json").exists()
    assert json.loads(gzip.decompress(written.read_bytes())) == obj
    assert read_result(tmp_path / "patching.json", "patching") == obj
    assert result_file(tmp_path / "patching.json") == written


def test_compressed_bytes_are_reproducible_and_replace_a_stale_plain_file(tmp_path):
    obj = stamp("ablation", {"x": 1.5})
    (tmp_path / "ablation.json").write_text(json.dumps(stamp("ablation", {"x": 0.0})))  # an earlier, plain one
    write_result(tmp_path / "ablation.json", obj, compress=True)
    first = (tmp_path / "ablation.json.gz").read_bytes()
    assert not (tmp_path / "ablation.json").exists()  # the reader must not find the stale plain file first
    write_result(tmp_path / "ablation.json", obj, compress=True)
    assert (tmp_path / "ablation.json.gz").read_bytes() == first  # no time stamp in the gzip header
    assert read_result(tmp_path / "ablation.json", "ablation")["x"] == 1.5


def test_the_plain_file_wins_and_errors_name_both_forms(tmp_path):
    write_result(tmp_path / "eval.json", stamp("eval", {"v": "plain"}))
    (tmp_path / "eval.json.gz").write_bytes(gzip.compress(json.dumps(stamp("eval", {"v": "gz"})).encode()))
    assert read_result(tmp_path / "eval.json", "eval")["v"] == "plain"
    with pytest.raises(UserError, match=r"probe.json: not found; make it with `python -m src.analysis.probe.*probe.json.gz in its place"):
        read_result(tmp_path / "probe.json", "probe")
    (tmp_path / "roles.json.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match=r"roles.json.gz: unreadable"):
        read_result(tmp_path / "roles.json", "roles")
    (tmp_path / "battery.json.gz").write_bytes(gzip.compress(b'{"schema": "battery/0"}'))
    with pytest.raises(UserError, match=r"battery.json.gz: schema 'battery/0', expected 'battery/1'"):
        read_result(tmp_path / "battery.json", "battery")


def test_the_report_readers_find_compressed_battery_files(tmp_path):
    from src.report import analyses, collect

    run = tmp_path / "run"
    write_result(run / "summary.json", stamp("summary", {"config": "tiny", "seed": 3}))
    write_result(run / "ablation.json", stamp("ablation", {"scan": None}), compress=True)
    write_result(run / "patching.json", stamp("patching", {"resid": {}}), compress=True)
    read = analyses.read_run(run)
    assert set(read["files"]) == {"ablation", "patching"} and "ablation.json" not in read["missing"]
    loaded = collect.load_run(run)
    assert loaded["ablation"]["schema"] == "ablation/2"
    assert not any("no ablation.json" in note for note in loaded["notes"])


def test_the_scripts_copy_large_json_results_compressed(tmp_path):
    """scripts/result_files.sh's copy_result (scripts/study.sh and scripts/reproduce_study.sh's keep() use it): a
    JSON result above 300 KB goes in as X.json.gz with no plain copy beside it (which the reader would find first),
    anything else plain, with a stale X.json.gz beside it removed; a large file that is not JSON stays plain."""
    import subprocess

    from tests.tiny import REPO_ROOT

    run, dest = tmp_path / "run", tmp_path / "results" / "pilot" / "seed42"
    run.mkdir()
    big = stamp("ablation", {"cells": list(range(60_000))})
    (run / "ablation.json").write_text(json.dumps(big))
    assert (run / "ablation.json").stat().st_size > 307_200
    (run / "eval.json").write_text(json.dumps(stamp("eval", {"v": 1})))
    (run / "train.log").write_text("x" * 400_000)
    dest.mkdir(parents=True)
    (dest / "ablation.json").write_text("stale")
    (dest / "eval.json.gz").write_bytes(gzip.compress(b"stale"))
    keep = f'eval "$(sed -n "/^keep() {{/,/^}}/p" scripts/reproduce_study.sh)"'
    done = subprocess.run(["bash", "-c", f'. scripts/result_files.sh && {keep} && keep "$1" "$2"', "_", str(run),
                           str(dest)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["ablation.json.gz", "eval.json", "train.log"]
    assert read_result(dest / "ablation.json", "ablation") == big
    assert read_result(dest / "eval.json", "eval")["v"] == 1
    # study.sh's way, each command through its printing runner: the same files, and a rerun copies nothing
    again = tmp_path / "again"
    again.mkdir()
    script = ('. scripts/result_files.sh; run() { echo "+ $*"; "$@"; }; RUN_PREFIX=run; '
              'for f in ablation.json eval.json; do copy_result "$1/$f" "$2"; done')
    for expect_commands in (True, False):
        done = subprocess.run(["bash", "-c", script, "_", str(run), str(again)], capture_output=True, text=True,
                              cwd=REPO_ROOT)
        assert done.returncode == 0, done.stderr
        assert ("+ sh -c gzip" in done.stdout and "+ cp" in done.stdout) == expect_commands, done.stdout
        assert done.stdout.strip() == "" or expect_commands
    assert sorted(p.name for p in again.iterdir()) == ["ablation.json.gz", "eval.json"]
