"""src.report identifies runs by what they are: config, seed and the checksums of the data they were fed."""

import shutil

import pytest
import yaml

from src.errors import UserError
from src.report.collect import collect

from tests.quickrun import quick_run


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    return root, [quick_run(root / "runs" / f"seed{s}", root / "data", seed=s) for s in (1, 2)]


def test_a_copy_of_a_run_is_dropped_with_a_note_not_counted_as_a_seed(two_seeds, tmp_path):
    root, (a, b) = two_seeds
    backup = tmp_path / "seed1.bak"
    shutil.copytree(a, backup)  # cp -r
    groups, notes = collect([a, b, backup])
    assert [r["seed"] for r in groups["tiny"]] == [1, 2]
    assert any(f"{backup}: the same run as {a}" in n and "a copy, counted once" in n for n in notes), notes


def test_runs_of_one_config_fed_different_data_are_an_error_naming_them(two_seeds, tmp_path):
    root, (a, b) = two_seeds
    other_data = tmp_path / "data"
    shutil.copytree(root / "data", other_data)
    lines = (other_data / "pilot_train.jsonl").read_text().splitlines()
    (other_data / "pilot_train.jsonl").write_text("\n".join(lines[1:]) + "\n")  # one line fewer
    c = tmp_path / "seed3"
    shutil.copytree(b, c)
    raw = yaml.safe_load((c / "config.yaml").read_text())
    raw["data"]["train"] = str(other_data / "pilot_train.jsonl")
    (c / "config.yaml").write_text(yaml.safe_dump(raw))
    (c / "summary.json").write_text((c / "summary.json").read_text().replace('"seed": 2', '"seed": 3'))
    with pytest.raises(UserError, match=rf"runs {a} and {c} were not fed the same data \(trained train"):
        collect([a, b, c])


def test_the_same_data_in_two_places_is_one_data_set(two_seeds, tmp_path):
    root, (a, b) = two_seeds
    moved = tmp_path / "data"
    shutil.copytree(root / "data", moved)
    c = tmp_path / "seed3"
    shutil.copytree(b, c)
    raw = yaml.safe_load((c / "config.yaml").read_text())
    raw["data"] = {k: str(moved / v.rsplit("/", 1)[-1]) for k, v in raw["data"].items()
                   if isinstance(v, str)}
    (c / "config.yaml").write_text(yaml.safe_dump(raw))
    (c / "summary.json").write_text((c / "summary.json").read_text().replace('"seed": 2', '"seed": 3'))
    groups, _ = collect([a, b, c])
    assert [r["seed"] for r in groups["tiny"]] == [1, 2, 3]
