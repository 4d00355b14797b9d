"""Attention roles (src.analysis.roles): role keys, shares, cross-run matching and the CLI, CPU only.

Role keys and shares are checked on hand-made sequences and hand-built attention patterns, where
the right answer is known exactly; the CLI runs end to end on a tiny untrained run directory in the
format src.train writes, and its shares are checked against the model's own patterns.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from src.analysis import roles
from src.config import DataConfig, config_from_dict
from src.rundir.checkpoint import make_checkpoint
from src.errors import run_main
from src.analysis.common import load_split_batches
from src.model import CompactTransformer, Hooks
from src.tokenizer import PAD_ID, sequence_ids

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_SPLITS = list(DataConfig.splits())
# the matched-pairs split is being added to the config and data; until it is, the CLI runs on test_paren
MATCHED = "test_paren_matched" in DATA_SPLITS and (REPO_ROOT / "data" / "pilot_test_paren_matched.jsonl").is_file()
SPLITS = ["--splits"] + (["test_paren_matched", "test_paren"] if MATCHED else ["test_paren"])
N_EXAMPLES = 40


def inputs_of(expr: str, result: int, width: int = 20) -> list[int]:
    """Model inputs <BOS>expr = result, padded to `width`."""
    ids = sequence_ids(expr, result)[:-1]
    return ids + [PAD_ID] * (width - len(ids))


# ---------------------------------------------------------------------------- role keys


def test_role_keys_of_nested_brackets():
    # positions: 0 <BOS>, 1 (, 2 1, 3 +, 4 (, 5 2, 6 *, 7 3, 8 ), 9 ), 10 ' ', 11 =, 12 ' ', 13 7, then padding
    keys = roles.role_keys(inputs_of("(1+(2*3))", 7))
    assert keys["matching_paren"][:10] == [-1, -1, 1, 1, 1, 4, 4, 4, 4, 1]
    assert keys["matching_paren"][4] == 1  # a nested '(' is inside the outer pair
    assert keys["matching_paren"][8] == 4 and keys["matching_paren"][9] == 1  # each ')' -> its own '('
    assert keys["previous_token"][:14] == [-1] + list(range(13))
    assert keys["operator"][:10] == [-1, -1, -1, -1, 3, 3, 3, 6, 6, 6]
    assert keys["equals"][:14] == [-1] * 12 + [11, 11]
    for role in roles.ROLES:  # padding is never a query
        assert keys[role][14:] == [-1] * 6, role
    assert all(k == -1 for role in ("matching_paren", "operator") for k in keys[role][10:])


def test_role_keys_of_sibling_pairs_and_a_negative_answer():
    # positions 1..11 the expression, 12 ' ', 13 '=', 14 ' ', 15 '-', 16 '1', 17 '4', then padding
    keys = roles.role_keys(inputs_of("(2-9)*(1+1)", -14))
    assert keys["matching_paren"][1:12] == [-1, 1, 1, 1, 1, -1, -1, 7, 7, 7, 7]
    assert keys["operator"][1:12] == [-1, -1, -1, 3, 3, 3, 6, 6, 6, 9, 9]
    # the answer's '-' is not an operator of the expression, and no answer token is an operator
    # query; equals covers the space after '=' and every answer token
    assert keys["operator"][12:] == [-1] * 8
    assert keys["equals"] == [-1] * 14 + [13, 13, 13, 13, -1, -1]


def test_role_keys_of_a_flat_expression_have_no_bracket_queries():
    keys = roles.role_keys(inputs_of("12+3*4", 24))
    assert all(k == -1 for k in keys["matching_paren"])
    assert keys["operator"][1:7] == [-1, -1, -1, 3, 3, 5]


def test_role_key_tensor_stacks_the_per_example_keys():
    rows = [inputs_of("(1+(2*3))", 7), inputs_of("12+3*4", 24)]
    keys = roles.role_key_tensor(torch.tensor(rows))
    assert keys.shape == (len(roles.ROLES), 2, 20) and keys.dtype == torch.long
    for i, row in enumerate(rows):
        expected = roles.role_keys(row)
        for r, role in enumerate(roles.ROLES):
            assert keys[r, i].tolist() == expected[role]


# ---------------------------------------------------------------------------- shares


def built_pattern(keys: torch.Tensor, width: int) -> torch.Tensor:
    """[N, 3, T, T]: head 0 attends only to the matching '(' (to itself where there is none), head 1
    uniformly over the causal context, head 2 only to the previous token."""
    n = keys.shape[1]
    pattern = torch.zeros(n, 3, width, width, dtype=torch.float64)
    t = torch.arange(width)
    causal = torch.ones(width, width, dtype=torch.float64).tril()
    pattern[:, 1] = causal / causal.sum(-1, keepdim=True)
    paren = keys[roles.ROLES.index("matching_paren")]
    target = torch.where(paren >= 0, paren, t)
    pattern[:, 0].scatter_(2, target[:, :, None], 1.0)
    pattern[:, 2].scatter_(2, (t - 1).clamp(min=0).expand(n, width)[:, :, None], 1.0)
    return pattern


def test_shares_of_hand_built_heads():
    tokens = torch.tensor([inputs_of("(1+(2*3))", 7), inputs_of("((12-3)*4)", 36), inputs_of("5*6", 30)])
    keys = roles.role_key_tensor(tokens)
    shares = roles.attention_shares(built_pattern(keys, 20), keys)
    paren = shares["matching_paren"]
    assert paren["n_queries"] == 8 + 9  # the third example has no brackets
    assert paren["share"][0] == 1.0
    # the uniform head gets exactly the uniform baseline, role by role
    for role in roles.ROLES:
        assert shares[role]["share"][1] == pytest.approx(shares[role]["uniform"], abs=1e-12), role
    # the uniform baseline by hand: mean of 1/(t+1) over the query positions
    positions = [t for i in range(3) for t in range(20) if keys[0, i, t] >= 0]
    assert paren["uniform"] == pytest.approx(sum(1 / (t + 1) for t in positions) / len(positions), abs=1e-12)
    assert shares["previous_token"]["share"][2] == 1.0
    # the previous-token head earns the matching_paren share of the queries right after a '(' ...
    after_open = sum(1 for i in range(3) for t in range(20) if keys[0, i, t] >= 0 and keys[0, i, t] == t - 1)
    assert after_open == 4
    assert paren["share"][2] == pytest.approx(after_open / paren["n_queries"], abs=1e-12)
    # ... and nothing once those are left out; the matching-paren head keeps its full share
    assert paren["n_distinct"] == paren["n_queries"] - after_open
    assert paren["share_distinct"][2] == 0.0 and paren["share_distinct"][0] == 1.0


def test_a_role_without_queries_has_no_share():
    tokens = torch.tensor([inputs_of("5*6", 30)])
    keys = roles.role_key_tensor(tokens)
    shares = roles.attention_shares(built_pattern(keys, 20), keys)
    assert shares["matching_paren"] == {"share": None, "uniform": None, "n_queries": 0, "share_distinct": None,
                                        "n_distinct": 0}
    assert shares["equals"]["n_queries"] == 3  # the space after '=' and the answer's two digits
    assert shares["equals"]["share"] is not None


def test_head_roles_apply_the_threshold():
    t = roles.ROLE_THRESHOLD
    assert roles.head_roles({"matching_paren": 0.9, "previous_token": t, "operator": 0.1, "equals": None}) == \
        (["matching_paren", "previous_token"], "matching_paren")
    assert roles.head_roles({"matching_paren": None, "previous_token": t - 1e-9, "operator": 0.1, "equals": 0.0}) == \
        ([], "none")
    # a previous-token head: its operator share comes from queries right after an operator
    assert roles.head_roles({"matching_paren": 0.2, "previous_token": 0.95, "operator": 0.45, "equals": 0.0},
                            distinct={"matching_paren": 0.0, "previous_token": None, "operator": 0.0, "equals": 0.0}) == \
        (["previous_token"], "previous_token")


# ---------------------------------------------------------------------------- several runs


def made_up_run(config: str, seed: int, combined: dict[str, dict]) -> dict:
    heads = []
    for i, (label, shares) in enumerate(combined.items()):
        layer, head = int(label[1]), int(label[4])
        full = {role: shares.get(role) for role in roles.ROLES}
        passing, primary = roles.head_roles(full)
        heads.append({"head": label, "layer": layer, "head_index": head, "relative_layer": layer / 3,
                      "combined": full, "combined_distinct": full, "roles": passing, "primary_role": primary})
    queries = {role: {"n_queries": 10, "uniform": 0.1, "n_distinct": 8} for role in roles.ROLES}
    return {"schema": roles.SCHEMA, "run": f"runs/{config}_{seed}", "config": config, "seed": seed,
            "threshold": roles.ROLE_THRESHOLD, "combined_queries": queries, "heads": heads}


def test_match_roles_finds_each_runs_best_head_by_role_not_index():
    a = made_up_run("pilot", 1, {"L0-H0": {"previous_token": 0.95, "matching_paren": 0.2},
                                 "L2-H3": {"matching_paren": 0.81, "operator": 0.3}})
    b = made_up_run("pilot", 2, {"L1-H1": {"matching_paren": 0.55, "previous_token": 0.1},
                                 "L3-H0": {"previous_token": 0.3, "operator": 0.35}})
    matched = {m["role"]: m for m in roles.match_roles([a, b])}
    assert list(matched) == list(roles.ROLES)
    paren = matched["matching_paren"]
    assert [(e["seed"], e["head"], e["share"], e["passes"]) for e in paren["runs"]] == \
        [(1, "L2-H3", 0.81, True), (2, "L1-H1", 0.55, True)]
    assert paren["every_run_passes"] and paren["runs"][0]["relative_layer"] == pytest.approx(2 / 3)
    prev = matched["previous_token"]
    assert [(e["head"], e["passes"]) for e in prev["runs"]] == [("L0-H0", True), ("L3-H0", False)]
    assert not prev["every_run_passes"]
    assert [e["head"] for e in matched["operator"]["runs"]] == ["L2-H3", "L3-H0"]
    assert all(e["head"] is None and not e["passes"] for e in matched["equals"]["runs"])

    table = roles.role_table_markdown([a, b])
    assert "| role | pilot seed 1 | pilot seed 2 | every run |" in table
    assert "**L2-H3 0.81**" in table and "L3-H0 0.30 (uniform" in table and "**L3-H0" not in table
    assert "| equals | n/a | n/a | no |" in table
    with pytest.raises(ValueError, match="roles/1"):
        roles.match_roles([a, {"schema": "ablation/1"}])


def test_role_table_shows_undecodable_and_pipe_names_escaped():
    # two runs of one config and seed are told apart by directory name; a name that is not UTF-8 (os.fsdecode
    # keeps its bytes as lone surrogates) or holds a "|" must neither break the UTF-8 Markdown nor the table
    shares = {"L0-H0": {"previous_token": 0.95}}
    a = dict(made_up_run("pilot", 1, shares), run="runs/" + os.fsdecode(b"run\xff"))
    b = dict(made_up_run("pilot", 1, shares), run="runs/a|b")
    table = roles.role_table_markdown([a, b])
    table.encode("utf-8")  # writable as UTF-8
    assert "| role | pilot seed 1 (run\\xff) | pilot seed 1 (a\\|b) | every run |" in table
    assert all(line.count("|") - line.count("\\|") == 5 for line in table.splitlines() if line.startswith("|"))


def test_match_roles_uses_the_same_rule_as_head_roles():
    # L1-H4 has the larger operator share, but most of it is previous-token overlap (share_distinct
    # 0.1): it does not hold the role, and L0-H2, which does, is the run's operator head
    run = made_up_run("scale_10m", 7, {"L0-H2": {"operator": 0.42}, "L1-H4": {"operator": 0.53}})
    run["heads"][1]["combined_distinct"] = dict(run["heads"][1]["combined"], operator=0.1)
    entry = {m["role"]: m for m in roles.match_roles([run])}["operator"]["runs"][0]
    assert (entry["head"], entry["share"], entry["passes"]) == ("L0-H2", 0.42, True)
    # with no holder at all, the best share is shown and the role does not pass
    run["heads"] = run["heads"][1:]
    entry = {m["role"]: m for m in roles.match_roles([run])}["operator"]["runs"][0]
    assert (entry["head"], entry["passes"]) == ("L1-H4", False)


# ---------------------------------------------------------------------------- command line


def write_untrained_run(root: Path) -> Path:
    """A run directory as src.train leaves it, around an untrained 2-layer, 4-head model."""
    data = root / "data"
    data.mkdir()
    for split in DATA_SPLITS:
        source = REPO_ROOT / "data" / f"pilot_{split}.jsonl"
        if source.is_file():
            lines = source.read_text().splitlines()[:N_EXAMPLES]
            (data / f"pilot_{split}.jsonl").write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load((REPO_ROOT / "configs" / "pilot.yaml").read_text())
    raw["name"] = "tiny"
    raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
    raw["training"].update(compile=False, cuda_graph=False)
    raw["data"] = {split: str(data / f"pilot_{split}.jsonl") for split in DATA_SPLITS}
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = CompactTransformer(cfg.model)
    run = root / "run"
    run.mkdir()
    torch.save(make_checkpoint(cfg, model, epoch=1, step=1, best={"val_loss": 3.0, "epoch": 1}, seed=7),
               run / "checkpoint_best.pt")
    (run / "summary.json").write_text(json.dumps({"config": "tiny", "seed": 7}))
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run = write_untrained_run(tmp_path_factory.mktemp("roles"))
    assert roles.main(["--run", str(run), "--device", "cpu", *SPLITS]) == 0
    return {"run": run, "result": json.loads((run / "roles.json").read_text())}


def test_roles_json_layout(tiny):
    res, splits = tiny["result"], SPLITS[1:]
    for key in ("schema", "run", "checkpoint", "epoch", "config", "seed", "fp16", "limit", "splits",
                "reference_splits", "role_definitions", "threshold", "combined_queries", "heads"):
        assert key in res, key
    assert res["schema"] == "roles/1" and res["config"] == "tiny" and res["seed"] == 7 and res["epoch"] == 1
    assert res["splits"] == splits and res["reference_splits"] == ["test_flat"]
    assert res["threshold"] == roles.ROLE_THRESHOLD and set(res["role_definitions"]) == set(roles.ROLES)
    assert [h["head"] for h in res["heads"]] == [f"L{l}-H{h}" for l in range(2) for h in range(4)]
    for head in res["heads"]:
        assert {"head", "layer", "head_index", "relative_layer", "shares", "combined", "roles",
                "primary_role"} <= set(head)
        assert head["relative_layer"] == head["layer"]
        assert set(head["shares"]) == set(splits) | {"test_flat"}
        flat = head["shares"]["test_flat"]["matching_paren"]
        assert flat["share"] is None and flat["n_queries"] == 0
        for split, by_role in head["shares"].items():
            for role, entry in by_role.items():
                assert {"share", "uniform", "n_queries"} <= set(entry)
                if entry["n_queries"]:
                    assert 0.0 <= entry["share"] <= 1.0 + 1e-9 and 0.0 < entry["uniform"] < 1.0
        # combined = the queries of the bracketed splits pooled
        for role in roles.ROLES:
            parts = [head["shares"][s][role] for s in splits]
            pooled = sum(p["share"] * p["n_queries"] for p in parts) / sum(p["n_queries"] for p in parts)
            assert head["combined"][role] == pytest.approx(pooled, rel=1e-9)
        assert (head["roles"], head["primary_role"]) == roles.head_roles(head["combined"],
                                                                         distinct=head["combined_distinct"])
    png = tiny["run"] / "roles.png"
    assert png.is_file() and png.stat().st_size < 100_000


def test_cli_shares_are_the_models_own_attention(tiny):
    ckpt = torch.load(tiny["run"] / "checkpoint_best.pt", weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    model = CompactTransformer(cfg.model).eval()
    model.load_state_dict(ckpt["model"])
    batch = load_split_batches(cfg, ("test_paren",))["test_paren"]
    with torch.no_grad():
        pattern = model(batch.inputs, hooks=Hooks(record={"blocks.1.attn.hook_pattern"})).activations["blocks.1.attn.hook_pattern"]
    direct = roles.attention_shares(pattern, roles.role_key_tensor(batch.inputs))
    for head in tiny["result"]["heads"][4:]:
        for role in roles.ROLES:
            entry = head["shares"]["test_paren"][role]
            assert entry["share"] == pytest.approx(direct[role]["share"][head["head_index"]], abs=1e-6)
            assert entry["n_queries"] == direct[role]["n_queries"]


def test_limit_and_out_write_where_asked(tiny, tmp_path):
    out = tmp_path / "seed7_roles.json"
    assert roles.main(["--run", str(tiny["run"]), "--device", "cpu", *SPLITS, "--limit", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["limit"] == 5 and set(res["n_examples"].values()) == {5}
    assert (tmp_path / "seed7_roles.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--splits", "test_nope"], "unknown split 'test_nope'"),
    (["--limit", "0"], "--limit 0"),
    (["--out", "roles.txt"], "must be a .json path"),
    (["--out", "/nonexistent_dir_for_roles/roles.json"], "does not exist"),
    (["--checkpoint", "latest"], "no latest checkpoint"),
])
def test_bad_flags_are_user_errors_and_write_nothing(tmp_path, capsys, argv, message):
    run = write_untrained_run(tmp_path)
    assert run_main(roles.main, ["--run", str(run), "--device", "cpu", *SPLITS, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (run / "roles.json").exists() and not (run / "roles.png").exists()


def test_default_splits_are_the_bracketed_pair(tmp_path, capsys):
    run = write_untrained_run(tmp_path)
    status = run_main(roles.main, ["--run", str(run), "--device", "cpu", "--limit", "5"])
    if MATCHED:
        assert status == 0
        assert json.loads((run / "roles.limit5.json").read_text())["splits"] == ["test_paren_matched", "test_paren"]
        assert (run / "roles.limit5.png").is_file() and not (run / "roles.json").exists()
    else:  # the matched-pairs set is not in the config or the data yet: the message names it
        assert status == 2 and "test_paren_matched" in capsys.readouterr().err


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        roles.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--run", "--checkpoint", "--device", "--fp16", "--limit", "--splits", "--out", "--debug"):
        assert flag in text, flag


def test_a_limit_run_says_so_in_its_table_and_its_figure_and_never_replaces_the_full_files(tiny, capsys, monkeypatch):
    run = tiny["run"]
    full = {name: (run / name).read_bytes() for name in ("roles.json", "roles.png")}
    titles = []
    real = roles.render_heatmap
    monkeypatch.setattr(roles, "render_heatmap", lambda rows, queries, title: titles.append(title) or real(rows, queries, title))
    capsys.readouterr()
    assert roles.main(["--run", str(run), "--device", "cpu", *SPLITS, "--limit", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "first 3 examples" in out and "first 3 examples" in titles[0]
    assert "primary: the largest role" in out  # the table says what its cells and its last column are
    assert json.loads((run / "roles.limit3.json").read_text())["limit"] == 3 and (run / "roles.limit3.png").is_file()
    assert {name: (run / name).read_bytes() for name in full} == full
