"""Interchange interventions (src/analysis/interchange.py), CPU only: the machinery on a random model, IIA on a
hand-built model whose carrier of the variable is known, the command end to end, and bad input."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from src.analysis import interchange
from src.config import ModelConfig, config_from_dict
from src.data import depth_labels, evaluate, operand_count
from src.errors import UserError, run_main
from src.model import CompactTransformer, Hooks, Patch
from src.rundir.atomic import gzip_bytes
from src.tokenizer import EOS_ID, VOCAB_SIZE, encode
from tests.tiny import tiny_config, write_data, write_run

SMALL = ModelConfig(vocab_size=VOCAB_SIZE, d_model=32, num_layers=3, num_heads=4, d_ff=64, max_seq_len=32,
                    dropout=0.0, rope_base=10000.0)
TOY = dataclasses.replace(SMALL, d_model=128, num_layers=2, num_heads=4, d_ff=64)


def make_pair(variable: str, control: str, base: str, source: str, bracket=None) -> dict:
    """A pair record in the pair-file format, its predicted answer from the causal model of `variable`."""
    i_open = bracket[0] if bracket else base.index("(")
    depth = depth_labels(base)
    i_close = bracket[1] if bracket else next(k for k in range(i_open, len(base))
                                              if base[k] == ")" and depth[k] == depth[i_open] - 1)
    after = i_close + 1 if i_close + 1 < len(base) and base[i_close + 1] in "+-*" else None
    op = after if after is not None else (i_open - 1 if i_open > 0 else None)
    inner = base[i_open + 1:i_close]
    if variable == "operator":
        predicted = evaluate(base[:op] + source[op] + base[op + 1:])
    else:  # the base with the source's inside of the bracket
        predicted = evaluate(base[:i_open + 1] + source[i_open + 1:i_close] + base[i_close:])
    record = {"variable": variable, "control": control, "template": interchange.template_of(base),
              "template_class": {"depth": depth_labels(base)[i_open], "inner_ops": "*" if "*" in inner else "+-",
                                 "outer_op": base[op] if op is not None else None, "operands": operand_count(base)},
              "base": {"expr": base, "result": evaluate(base)}, "source": {"expr": source, "result": evaluate(source)},
              "bracket": [i_open, i_close],
              "sites": {"inside": list(range(i_open + 1, i_close)), "open": i_open, "close": i_close, "operator": op},
              "predicted": predicted}
    if variable == "value":
        record.update(base_value=evaluate(inner), source_value=evaluate(source[i_open + 1:i_close]))
    else:
        record.update(base_value=None, source_value=None)  # as the generator writes an operator line
    return record


def write_pairs(directory, variable: str, records: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    interchange.pairs_path(directory, variable).write_bytes(gzip_bytes(text.encode()))  # as the generator writes it


def parsed(records, variable="value", max_seq_len=32):
    return [interchange.parse_pair(r, variable, i + 1, f"pairs.jsonl:{i + 1}", max_seq_len, "plain")
            for i, r in enumerate(records)]


# ---------------------------------------------------------------------------- the machinery, on a random model


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    m = CompactTransformer(SMALL).eval()
    with torch.no_grad():  # LayerNorm weights away from 1 and biases away from 0: no accidental symmetry
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m


RANDOM_PAIRS = [("value", "interchange", "(12+3)*4", "(15+7)*4"), ("value", "interchange", "5-(6*7)", "5-(2*9)"),
                ("value", "interchange", "((1+2)*3)+4", "((5+8)*3)+4"), ("value", "random", "(12+3)*4", "(31+9)*2")]


def test_source_equal_to_base_changes_nothing_bit_for_bit(small):
    pairs = parsed([make_pair(*p) for p in RANDOM_PAIRS])
    t = interchange.pair_tensors(pairs, SMALL.max_seq_len)
    sites, _ = interchange.sites_of(SMALL)
    names = sorted({s.name for s in sites})
    own = small(t.base, hooks=Hooks(record=names))
    clean_gen = interchange.decode(small, t.base, t.prompt_len, t.steps)
    for name in names:
        for cls in (*interchange.POSITION_CLASSES, "prompt"):
            mask = t.masks[cls][:, :, None] if own.activations[name].dim() == 3 else t.masks[cls][:, :, None, None]
            hooks = Hooks(patch={name: Patch(own.activations[name], mask)})
            assert torch.equal(small(t.base, hooks=hooks).logits, own.logits), (name, cls)
            if cls == "prompt":
                assert torch.equal(interchange.decode(small, t.base, t.prompt_len, t.steps, hooks), clean_gen), name


def test_every_prompt_position_at_the_embedding_gives_the_source_run_exactly(small):
    pairs = parsed([make_pair(*p) for p in RANDOM_PAIRS])
    t = interchange.pair_tensors(pairs, SMALL.max_seq_len)
    acts = interchange.record_sources(small, t, ["hook_embed"], "fp32", chunk=3)
    hooks = Hooks(patch={"hook_embed": Patch(acts["hook_embed"], t.masks["prompt"][:, :, None])})
    source_logits = small(t.source).logits
    assert torch.equal(small(t.base, hooks=hooks).logits, source_logits)  # the base runs as the source, bit for bit
    assert not torch.equal(small(t.base).logits, source_logits)
    patched = interchange.decode(small, t.base, t.prompt_len, t.steps, hooks)
    assert torch.equal(patched, interchange.decode(small, t.source, t.prompt_len, t.steps))


def test_batched_runs_agree_with_one_patch_at_a_time(small):
    pairs = parsed([make_pair(*p) for p in RANDOM_PAIRS])
    t = interchange.pair_tensors(pairs, SMALL.max_seq_len)
    sites, _ = interchange.sites_of(SMALL)
    names = sorted({s.name for s in sites})
    acts = interchange.record_sources(small, t, names, "fp32", chunk=2)
    jobs = [(s, c) for s in sites for c in interchange.POSITION_CLASSES]
    runs = interchange.patched_runs(small, t, jobs, acts, "fp32", chunk=7)  # chunks cut across sites and classes
    for site, cls in [(sites[0], "inside"), (sites[1], "close"), (sites[5], "open"), (sites[-1], "equals")]:
        if site.head is None:
            mask = t.masks[cls][:, :, None]
        else:
            mask = torch.zeros(t.masks[cls].shape + (SMALL.num_heads, 1), dtype=torch.bool)
            mask[:, :, site.head] = t.masks[cls][:, :, None]
        gen = interchange.decode(small, t.base, t.prompt_len, t.steps, Hooks(patch={site.name: Patch(acts[site.name], mask)}))
        run = runs[(site.label, cls)]
        for key in ("predicted", "base", "source"):
            assert torch.equal(run[key], interchange.matches(gen, t.targets[key])[run["rows"]]), (site.label, cls, key)


def test_the_whole_bracket_at_the_embedding_of_a_value_pair_gives_the_source_run_exactly(small):
    """A value pair differs only inside its bracket, so the exploratory class `bracket` patched at the
    embedding makes the base run as its source, bit for bit; the registered classes stay as they were."""
    pairs = parsed([make_pair(*p) for p in RANDOM_PAIRS if p[1] == "interchange"])
    t = interchange.pair_tensors(pairs, SMALL.max_seq_len, classes=("inside", "bracket"))
    assert set(t.masks) == {"inside", "bracket", "prompt"}
    assert [int(i) for i in t.masks["bracket"][0].nonzero()] == [1, 2, 3, 4, 5, 6]  # <BOS>(12+3)*4: `(` to `)`
    ends = t.base[t.masks["bracket"] & ~t.masks["inside"]].view(-1, 2)  # the bracket's own two tokens, per pair
    assert (ends[:, 0] == tid("(")).all() and (ends[:, 1] == tid(")")).all()
    acts = interchange.record_sources(small, t, ["hook_embed"], "fp32", chunk=3)
    hooks = Hooks(patch={"hook_embed": Patch(acts["hook_embed"], t.masks["bracket"][:, :, None])})
    assert torch.equal(small(t.base, hooks=hooks).logits, small(t.source).logits)


def _hit_and_missed_targets(generated: torch.Tensor) -> dict:
    """Targets built from a greedy decoding: its own answer (a hit wherever it ended with <EOS>), the same with
    one token changed, and the same cut one token short (<EOS> a step early)."""
    own = torch.where(generated == 0, torch.full_like(generated, -1), generated)  # <PAD> (id 0) after <EOS> ends it
    changed = own.clone()
    changed[:, 0] = torch.where(own[:, 0] == 4, 5, 4)  # the first answer token, another digit
    short = own.clone()
    length = (own >= 0).sum(1)
    for i, n in enumerate(length.tolist()):
        if n >= 2:
            short[i, n - 2], short[i, n - 1] = EOS_ID, -1
    return {"own": own, "changed": changed, "short": short}


def test_teacher_forced_hits_are_the_step_by_step_decoding_s_answers(small):
    """answer_hits against decode + matches on targets that greedy decoding does and does not give, with and
    without a patch, on pairs of two widths."""
    pairs = parsed([make_pair(*p) for p in RANDOM_PAIRS])
    t = interchange.pair_tensors(pairs, SMALL.max_seq_len)
    acts = interchange.record_sources(small, t, ["blocks.0.hook_resid_post"], "fp32", chunk=4)
    patch = Hooks(patch={"blocks.0.hook_resid_post": Patch(acts["blocks.0.hook_resid_post"], t.masks["inside"][:, :, None])})
    seen_hit = seen_miss = 0
    for hooks in (None, patch):
        generated = interchange.decode(small, t.base, t.prompt_len, t.steps, hooks)
        targets = {**_hit_and_missed_targets(generated), **t.targets}
        hits = interchange.answer_hits(small, t.base, t.prompt_len, targets, hooks)
        for key, target in targets.items():
            assert torch.equal(hits[key], interchange.matches(generated, target)), key
        seen_hit += int(hits["own"].sum())
        seen_miss += int((~hits["changed"]).sum() + (~hits["short"]).sum())
    assert seen_hit > 0 and seen_miss > 0  # both answers were decided


def _agrees_with_decoding(directory: str, device: str, precision: str, n_pairs: int, all_sites: bool) -> None:
    """A shipped model on the first value pairs, unpatched and patched: the battery's teacher-forced answers are
    those of step-by-step decoding, pair for pair, and some of them are hits."""
    from src.model import load_pretrained
    from tests.tiny import REPO_ROOT

    model, meta = load_pretrained(REPO_ROOT / "models" / directory)
    model = model.to(device).eval()
    max_len = meta["model_config"]["max_seq_len"]
    pairs = interchange.load_pairs(REPO_ROOT / "data" / "counterfactual_value.jsonl.gz", "value", max_len, limit=n_pairs)
    t = interchange.pair_tensors(pairs, max_len)
    forced = interchange.unpatched(model, t, precision, chunk=4096)
    stepped = interchange.unpatched(model, t, precision, chunk=4096, step_by_step=True)
    for key in forced:
        assert torch.equal(forced[key], stepped[key]), key
    assert forced["base_correct"].sum() > n_pairs // 4  # a model that answers: hits are tested, not only misses
    sites, _ = interchange.sites_of(model.cfg)
    names = sorted({s.name for s in sites})
    acts = interchange.record_sources(model, t, names, precision, chunk=4096)
    chosen = sites if all_sites else sites[:4] + sites[-2:]
    jobs = [(s, c) for s in chosen for c in interchange.POSITION_CLASSES]
    forced = interchange.patched_runs(model, t, jobs, acts, precision, chunk=40 if device == "cpu" else 4096)
    stepped = interchange.patched_runs(model, t, jobs, acts, precision, chunk=4096, step_by_step=True)
    hits = 0
    for job in forced:
        for key in ("predicted", "base", "source"):
            assert torch.equal(forced[job][key], stepped[job][key]), (job, key)
            hits += int(forced[job][key].sum())
    assert hits > 0


def test_teacher_forced_hits_agree_with_decoding_on_the_shipped_pilot_model():
    _agrees_with_decoding("study_pilot", "cpu", "fp32", n_pairs=48, all_sites=False)


@pytest.mark.gpu
def test_teacher_forced_hits_agree_with_decoding_on_the_shipped_10m_model_in_fp16_on_cuda():
    """The battery's own setting: the 10M model under float16 autocast on the GPU, every site."""
    _agrees_with_decoding("study_10m", "cuda", "fp16", n_pairs=1000, all_sites=True)


def test_a_cell_s_counts_overall_and_by_class_are_the_plain_counts_of_its_scored_rows():
    """cell_summary counts with one pass over precomputed pair facts; here every figure is checked against a
    plain count over the pairs, on random cells that skip pairs, leave classes out and score a subset."""
    gen = torch.Generator().manual_seed(0)
    n = 300
    pairs = [SimpleNamespace(predicted=int(p), base_result=int(b), template_class=f"class{int(c)}")
             for p, b, c in zip(torch.randint(0, 4, (n,), generator=gen), torch.randint(0, 4, (n,), generator=gen),
                                torch.randint(0, 5, (n,), generator=gen))]
    facts = interchange.pair_facts(pairs)
    scored = torch.rand(n, generator=gen) < 0.8
    for size in (0, 1, 40, n):
        rows = torch.randperm(n, generator=gen)[:size]
        run = {k: torch.rand(size, generator=gen) < 0.5 for k in ("predicted", "base", "source")}
        run["rows"] = rows
        out = interchange.cell_summary(run, facts, scored)
        kept = [(int(r), bool(run["predicted"][j]), bool(run["base"][j])) for j, r in enumerate(rows) if scored[r]]
        differs = lambda r: pairs[r].predicted != pairs[r].base_result  # noqa: E731
        assert out["n"] == len(kept)
        assert out["iia"]["hits"] == sum(pred and differs(r) for r, pred, _ in kept)
        assert out["iia"]["n"] == sum(differs(r) for r, _, _ in kept)
        assert out["kept_base"]["hits"] == sum(base for _, _, base in kept)
        classes = sorted({pairs[r].template_class for r, _, _ in kept})
        assert list(out["by_class"]) == classes
        for cls in classes:
            mine = [(r, pred, base) for r, pred, base in kept if pairs[r].template_class == cls]
            assert out["by_class"][cls]["iia"]["hits"] == sum(pred and differs(r) for r, pred, _ in mine)
            assert out["by_class"][cls]["iia"]["n"] == sum(differs(r) for r, _, _ in mine)
            assert out["by_class"][cls]["kept_base"] == interchange.proportion(sum(b for _, _, b in mine), len(mine))


def test_the_last_block_is_excluded_and_every_other_site_kept():
    sites, excluded = interchange.sites_of(SMALL)
    labels = [s.label for s in sites]
    assert labels[:3] == ["embed", "resid L0", "resid L1"] and "resid L2" not in labels
    assert len([s for s in sites if s.kind == "head"]) == 2 * SMALL.num_heads
    assert {e["name"] for e in excluded} == {"blocks.2.hook_resid_post", "blocks.2.attn.hook_z"}
    assert all("cannot change the answer" in e["reason"] for e in excluded)


# ---------------------------------------------------------------------------- a model with a known carrier

MIRROR, CARRY = 64, 35  # token t: +dim t, -dim 64+t (zero mean, so LayerNorm only rescales); carried digit k: 35+k


def tid(ch: str) -> int:
    return encode(ch)[0]


@torch.no_grad()
def toy_model() -> CompactTransformer:
    """Answers `(a*1)*1` (a from 2 to 9) with a, by hand: in block 0 the `)` attends to the digits 2-9 and copies
    the digit into carrier dimensions (head L0-H0), and each digit token predicts <EOS> (the FFN); in block 1 the
    final space attends to the `)` and writes its carried digit as that digit's token (head L1-H0). So after block
    0 the value of the bracket lives at the `)` and nowhere else, and at the embedding only inside the bracket."""
    m = CompactTransformer(TOY).eval()
    for p in m.parameters():
        p.zero_()
    for ln in [m.ln_f] + [b.ln1 for b in m.blocks] + [b.ln2 for b in m.blocks]:
        ln.weight.fill_(1.0)
    d, q_dim = TOY.d_model, 15  # rotary pair (15, 31) of a 32-dim head turns ~1.8e-4 rad per position: content only
    for t in range(VOCAB_SIZE):
        m.embed.weight[t, t], m.embed.weight[t, MIRROR + t] = 1.0, -1.0
    digits = [tid(str(k)) for k in range(10)]
    qkv, out = m.blocks[0].attn.qkv.weight, m.blocks[0].attn.out.weight
    qkv[q_dim, tid(")")] = 1.5
    for k in range(10):
        if k >= 2:
            qkv[d + q_dim, digits[k]] = 1.5
        qkv[2 * d + k, digits[k]] = 1.0
        out[CARRY + k, k], out[MIRROR + CARRY + k, k] = 0.5, -0.5
    ffn = m.blocks[0].ffn
    ffn.up.weight[0, digits] = 1.0
    ffn.up.bias[0] = -3.0
    ffn.down.weight[EOS_ID, 0], ffn.down.weight[MIRROR + EOS_ID, 0] = 3.0, -3.0
    qkv, out = m.blocks[1].attn.qkv.weight, m.blocks[1].attn.out.weight
    qkv[q_dim, tid(" ")] = 2.8
    qkv[d + q_dim, tid(")")] = 2.8
    for k in range(10):
        qkv[2 * d + k, CARRY + k] = 1.0
        out[digits[k], k], out[MIRROR + digits[k], k] = 2.0, -2.0
    return m


def toy_records() -> dict:
    value = [make_pair("value", "interchange", f"({a}*1)*1", f"({b}*1)*1") for a in range(2, 10) for b in (2, 5, 9) if a != b]
    value += [make_pair("value", "value_preserving", f"({a}*1)*1", f"(1*{a})*1") for a in range(2, 10)]
    operator = [make_pair("operator", "interchange", f"({a}*1)*1", f"({a}*1)+1") for a in range(2, 6)]
    return {"value": value, "operator": operator}


def save_run(run, model, raw) -> None:
    cfg = config_from_dict(raw)
    run.mkdir(parents=True)
    ckpt = {"model_config": dataclasses.asdict(cfg.model), "config": cfg.to_dict(), "model": model.state_dict(),
            "epoch": 1, "step": 1, "seed": 5, "best": {"val_loss": 1.0, "epoch": 1, "metrics": None}}
    torch.save(ckpt, run / "checkpoint_best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "summary.json").write_text(json.dumps({"schema": "summary/1", "config": "toy", "seed": 5, "precision": "fp32"}))


@pytest.fixture(scope="module")
def toy_result():
    """interchange_variable on the toy model, both variables: the command's "variables" part, without files."""
    cfg = SimpleNamespace(model=TOY, data=SimpleNamespace(answer_format="plain"))
    model = toy_model()
    records = toy_records()
    return {"variables": {v: interchange.interchange_variable(model, parsed(records[v], v), cfg, "fp32", 50,
                                                              log=lambda *_: None)
                          for v in records}}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("interchange_toy")
    write_data(root / "data")
    raw = tiny_config(root / "data")
    raw["name"] = "toy"
    raw["model"].update(d_model=TOY.d_model, num_layers=TOY.num_layers, num_heads=TOY.num_heads, d_ff=TOY.d_ff,
                        dropout=0.0)
    for variable, records in toy_records().items():
        write_pairs(root / "data", variable, records)
    save_run(root / "run", toy_model(), raw)
    assert interchange.main(["--run", str(root / "run"), "--device", "cpu", "--chunk", "50"]) == 0
    return root, json.loads((root / "run" / "interchange.json").read_text())


def cell(result, variable, control, site, cls):
    return next(c for c in result["variables"][variable]["controls"][control]["cells"]
                if c["site"] == site and c["position_class"] == cls)


def test_iia_is_high_where_the_variable_is_carried_and_low_elsewhere(toy_result):
    res = toy_result
    v = res["variables"]["value"]["controls"]["interchange"]
    assert v["n_pairs"] == v["both_correct"] == 21  # the toy answers every base and source right
    assert v["ceiling"]["check"] == "passed" and v["ceiling"]["iia"]["value"] == 1.0
    carried = {("embed", "inside"), ("resid L0", "close"), ("L0-H0", "close")}
    for c in v["cells"]:
        expected = 1.0 if (c["site"], c["position_class"]) in carried else 0.0
        assert c["iia"]["value"] == expected, (c["site"], c["position_class"], c["iia"])
        assert c["iia"]["n"] == 21 and c["kept_base"]["value"] == 1.0 - expected
    assert v["first_reach"]["close"] == {"site": "resid L0", "relative_depth": 0.5, "iia": 1.0}
    assert v["first_reach"]["inside"]["relative_depth"] == 0.0 and v["first_reach"]["equals"] is None
    lo, hi = cell(res, "value", "interchange", "resid L0", "close")["iia"]["ci95"]
    assert 0.8 < lo < hi == 1.0  # Wilson, 21 of 21
    by_class = cell(res, "value", "interchange", "resid L0", "close")["by_class"]
    assert list(by_class) == ["depth1/inner*/outer*/operands3"] and by_class["depth1/inner*/outer*/operands3"]["iia"]["hits"] == 21


def test_the_value_preserving_control_keeps_the_base_where_the_value_is_carried(toy_result):
    res = toy_result
    vp = res["variables"]["value"]["controls"]["value_preserving"]
    assert vp["both_correct"] == 8
    for c in vp["cells"]:
        assert c["iia"]["n"] == 0 and c["iia"]["value"] is None  # predicted is the base's answer: no IIA
        assert c["kept_base"]["value"] == 1.0  # the `)` carries the value, not the digits
    assert vp["first_reach"]["close"] is None


def test_the_exploratory_bracket_class_holds_the_value_wherever_the_toy_keeps_it_inside_the_bracket():
    """The toy keeps the value inside the bracket at every patched site (the digits at the embedding, the `)`
    after block 0), so patching the whole bracket gives the source's value everywhere; asking for it changes
    nothing in the registered classes."""
    cfg = SimpleNamespace(model=TOY, data=SimpleNamespace(answer_format="plain"))
    pairs = parsed(toy_records()["value"], "value")
    both = interchange.interchange_variable(toy_model(), pairs, cfg, "fp32", 50, log=lambda *_: None,
                                            classes=("close", "bracket"))["controls"]["interchange"]
    alone = interchange.interchange_variable(toy_model(), pairs, cfg, "fp32", 50, log=lambda *_: None,
                                             classes=("close",))["controls"]["interchange"]
    bracket = [c for c in both["cells"] if c["position_class"] == "bracket"]
    assert {c["site"] for c in bracket} == {"embed", "resid L0", "L0-H0", "L0-H1", "L0-H2", "L0-H3"}
    for c in bracket:
        expected = 0.0 if c["kind"] == "head" and c["head"] != 0 else 1.0  # only head 0 of block 0 carries it
        assert c["iia"]["value"] == expected and c["iia"]["n"] == 21, (c["site"], c["iia"])
    assert [c for c in both["cells"] if c["position_class"] == "close"] == alone["cells"]
    assert both["first_reach"]["bracket"]["relative_depth"] == 0.0 and set(both["first_reach"]) == {"close", "bracket"}


@pytest.mark.slow
def test_other_classes_than_the_battery_s_go_to_their_own_file(toy_run):
    root, _ = toy_run
    run = root / "run"
    before = (run / "interchange.json").read_bytes()
    assert interchange.main(["--run", str(run), "--device", "cpu", "--variables", "value", "--classes", "bracket"]) == 0
    res = json.loads((run / "interchange.bracket.json").read_text())
    assert list(res["position_classes"]) == ["bracket"] and "exploratory" in res["position_classes"]["bracket"]
    assert {c["position_class"] for c in res["variables"]["value"]["controls"]["interchange"]["cells"]} == {"bracket"}
    assert (run / "interchange.json").read_bytes() == before  # the battery's file is left alone


def test_pairs_the_model_gets_wrong_are_not_read(toy_result):
    res = toy_result
    op = res["variables"]["operator"]["controls"]["interchange"]
    assert op["n_pairs"] == 4 and op["base_correct"] == 4 and op["source_correct"] == 0 and op["both_correct"] == 0
    assert op["cells"] == [] and op["by_class"]["depth1/inner*/outer*/operands3"] == {"pairs": 4, "both_correct": 0}


@pytest.mark.slow
def test_the_output_names_its_metric_schema_and_exclusions(toy_run):
    root, res = toy_run
    assert next(iter(res)) == "schema" and res["schema"] == "interchange/1"
    assert res["metric"] == "iia" and "predicted" in res["metric_definitions"]["iia"]
    assert {e["name"] for e in res["sites"]["excluded"]} == {"blocks.1.hook_resid_post", "blocks.1.attn.hook_z"}
    assert all(c["layer"] in (None, 0) for c in res["variables"]["value"]["controls"]["interchange"]["cells"])
    assert (root / "run" / "interchange.png").stat().st_size > 1000


@pytest.mark.slow
def test_limit_writes_a_separately_named_file(toy_run):
    root, _ = toy_run
    run = root / "run"
    assert interchange.main(["--run", str(run), "--device", "cpu", "--limit", "3", "--variables", "value"]) == 0
    res = json.loads((run / "interchange.limit3.json").read_text())
    assert res["limit"] == 3 and res["variables"]["value"]["lines_read"] == 3 and list(res["variables"]) == ["value"]
    assert json.loads((run / "interchange.json").read_text())["limit"] is None  # the full result is left alone


# ---------------------------------------------------------------------------- bad input, and a trained tiny run


def test_pairs_that_do_not_align_are_an_error_naming_the_line(tmp_path):
    good = make_pair("value", "interchange", "(3*1)*1", "(5*1)*1")
    bad = dict(make_pair("value", "interchange", "(3*1)*1", "(5*1)*1"), source={"expr": "(35*1)*1", "result": 35})
    write_pairs(tmp_path, "value", [good, bad])
    with pytest.raises(UserError, match=r"counterfactual_value.jsonl.gz:2: base '\(3\*1\)\*1' and source '\(35\*1\)\*1' do not align"):
        interchange.load_pairs(interchange.pairs_path(tmp_path, "value"), "value", 32)
    wrong = dict(good, predicted=4)
    write_pairs(tmp_path, "value", [good, good, wrong])
    with pytest.raises(UserError, match=r"\.gz:3: predicted 4 is not the causal model's answer 5"):  # the pair files' reader
        interchange.load_pairs(interchange.pairs_path(tmp_path, "value"), "value", 32)
    with pytest.raises(UserError, match=r":3: predicted 4 of an interchange pair must be the source's result 5"):
        parsed([good, good, wrong])  # and this analysis's own check
    outside = make_pair("value", "interchange", "(3*1)*2", "(5*1)*1")
    write_pairs(tmp_path, "value", [outside])
    with pytest.raises(UserError, match=r"\.gz:1: an interchange pair must differ only inside the bracket"):
        interchange.load_pairs(interchange.pairs_path(tmp_path, "value"), "value", 32)


def test_missing_pair_files_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(UserError, match=r"counterfactual_operator.jsonl.gz: not found.*python -m src\.data --seed 42 --out data"):
        interchange.load_pairs(interchange.pairs_path(tmp_path, "operator"), "operator", 32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("interchange_tiny")
    write_data(root / "data")
    write_run(root / "run", tiny_config(root / "data"))
    return root


@pytest.mark.slow
def test_end_to_end_on_a_trained_tiny_run_with_limit(tiny_run, capsys):
    run = tiny_run / "run"
    assert run_main(interchange.main, ["--run", str(run), "--device", "cpu"]) == 2  # no pair files yet
    assert interchange.PAIRS_COMMAND in capsys.readouterr().err
    write_pairs(tiny_run / "data", "value", [make_pair(*p) for p in RANDOM_PAIRS] * 2)
    write_pairs(tiny_run / "data", "operator", [make_pair("operator", "interchange", "(12+3)*4", "(12+3)-4"),
                                                make_pair("operator", "random", "(12+3)*4", "(31+9)+2")])
    assert interchange.main(["--run", str(run), "--device", "cpu", "--limit", "5"]) == 0
    res = json.loads((run / "interchange.limit5.json").read_text())
    assert res["schema"] == "interchange/1" and res["limit"] == 5
    value = res["variables"]["value"]
    assert value["lines_read"] == 5 and value["controls"]["interchange"]["n_pairs"] == 4
    assert value["controls"]["random"]["n_pairs"] == 1
    for control in value["controls"].values():
        assert control["both_correct"] <= min(control["base_correct"], control["source_correct"])
        assert sum(c["pairs"] for c in control["by_class"].values()) == control["n_pairs"]
    assert res["variables"]["operator"]["controls"]["random"]["n_pairs"] == 1
