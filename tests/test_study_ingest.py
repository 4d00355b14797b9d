"""scripts/study_ingest.sh: a group's files from a remote GPU machine come into the checkout, and nothing
already there is overwritten."""

import io
import os
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "study_ingest.sh"


def ingest(tmp_path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESULTS=str(tmp_path / "checkout" / "results" / "study"),
               MODELS=str(tmp_path / "checkout" / "models"))
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def tgz(path, files: dict[str, bytes], mode: str = "w:gz") -> None:
    """A tar archive (gzip-compressed unless mode says otherwise) of FILES at PATH, a path or a file object."""
    where = {"fileobj": path} if isinstance(path, io.BytesIO) else {"name": path}
    with tarfile.open(mode=mode, **where) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_complete_seeds_come_in_incomplete_ones_are_skipped_and_committed_ones_are_kept(tmp_path):
    here = tmp_path / "checkout" / "results" / "study" / "study_10m" / "seed42"
    here.mkdir(parents=True)
    (here / "summary.json").write_text("committed")
    (tmp_path / "checkout" / "models" / "study_10m").mkdir(parents=True)
    (tmp_path / "checkout" / "models" / "study_10m" / "model.safetensors").write_bytes(b"committed")
    dl = tmp_path / "dl"
    dl.mkdir()
    tgz(dl / "results.tgz", {
        "results/study_10m/seed42/summary.json": b"from the machine",
        "results/study_10m/seed42/battery.json": b"{}",
        "results/study_10m/seed7/summary.json": b"{}",
        "results/study_10m/seed7/battery.json.gz": b"gz",
        "results/study_10m/seed7/eval.json": b"{}",
        "results/study_pilot/seed1/summary.json": b"{}",  # its battery had not run yet
    })
    models = io.BytesIO()
    tgz(models, {"models/study_10m/model.safetensors": b"from the machine",
                 "models/study_pilot/model.safetensors": b"pilot", "models/study_pilot/config.json": b"{}"},
        mode="w")
    blob = models.getvalue()
    (dl / "models.tar.part_aa").write_bytes(blob[: len(blob) // 2])
    (dl / "models.tar.part_ab").write_bytes(blob[len(blob) // 2:])

    done = ingest(tmp_path, dl)
    assert done.returncode == 0, done.stderr
    res = tmp_path / "checkout" / "results" / "study"
    assert (res / "study_10m" / "seed42" / "summary.json").read_text() == "committed"
    assert not (res / "study_10m" / "seed42" / "battery.json").exists()
    assert sorted(p.name for p in (res / "study_10m" / "seed7").iterdir()) == ["battery.json.gz", "eval.json", "summary.json"]
    assert not (res / "study_pilot" / "seed1").exists()
    assert "skipped: study_pilot/seed1" in done.stdout and "1 seed(s) added" in done.stdout
    out = tmp_path / "checkout" / "models"
    assert (out / "study_10m" / "model.safetensors").read_bytes() == b"committed"
    assert (out / "study_pilot" / "model.safetensors").read_bytes() == b"pilot"
    assert (out / "study_pilot" / "config.json").exists()


def test_bad_input_ends_with_status_2_and_a_line_that_says_what_to_do(tmp_path):
    done = ingest(tmp_path, tmp_path / "missing")
    assert done.returncode == 2 and "is not a directory" in done.stderr
    dl = tmp_path / "dl"
    dl.mkdir()
    done = ingest(tmp_path, dl)
    assert done.returncode == 2 and "results.tgz not found" in done.stderr
    (dl / "results.tgz").write_bytes(b"not a tar file")
    done = ingest(tmp_path, dl)
    assert done.returncode == 2 and "does not unpack" in done.stderr and "copy it again" in done.stderr
    tgz(dl / "results.tgz", {"results/README": b"nothing"})
    done = ingest(tmp_path, dl)
    assert done.returncode == 2 and "holds no <config>/seed<S>/" in done.stderr
    assert not (tmp_path / "checkout").exists()
    done = ingest(tmp_path)
    assert done.returncode == 2 and "give DIR" in done.stderr
    assert ingest(tmp_path, "--help").returncode == 0
