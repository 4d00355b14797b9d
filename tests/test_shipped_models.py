"""The study models shipped under models/ are the ones whose results are committed: on the first items of
the redundant-bracket pairs (test_flat line i against test_paren_matched line i), the export's greedy
answers on the CPU are, item for item, the outcomes the GPU battery committed in
results/study/<config>/seed<S>/eval.json. The 10M export holds float16 weights of a model trained and
evaluated under float16 autocast; the CPU runs them in float32, and on the first 256 items of both files
its answers were those of the GPU battery, item for item, so the same exact comparison holds for it."""

import json

import pytest

from src.data import load_jsonl, make_batch
from src.metrics import per_example_scores
from src.model import load_pretrained
from tests.tiny import REPO_ROOT

MODELS = sorted(p.parent for p in (REPO_ROOT / "models").glob("*/model.safetensors"))
FIRST = 32  # items of each file: under a second for the pilot, about a second for the 10M model


@pytest.mark.parametrize("directory", MODELS, ids=[p.name for p in MODELS])
def test_a_shipped_model_answers_as_its_committed_results_say(directory):
    model, meta = load_pretrained(directory)
    committed = REPO_ROOT / "results" / "study" / directory.name / f"seed{meta['seed']}" / "eval.json"
    outcomes = json.loads(committed.read_text())["bracket_cost_by_kind"]["redundant"]["outcomes"]
    max_len = meta["model_config"]["max_seq_len"]
    for kind, split in (("flat", "test_flat"), ("bracketed", "test_paren_matched")):
        records = load_jsonl(REPO_ROOT / "data" / f"pilot_{split}.jsonl", max_len)[:FIRST]
        correct = per_example_scores(model, make_batch(records, max_len))["exact_match"]
        assert "".join("01"[bool(x)] for x in correct) == outcomes[kind][:FIRST], f"{directory.name}: {split}"


def test_models_are_shipped():
    assert MODELS, "models/ holds no export"
