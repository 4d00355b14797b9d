"""Activation patching (src/model.py Hooks.patch, src/analysis/patching.py), CPU only, on small fixed-seed models."""

import json

import pytest
import torch

from src.analysis import patching
from src.config import ModelConfig
from src.data import make_batch, make_record
from src.errors import UserError, run_main
from src.metrics import per_example_scores
from src.model import CompactTransformer, Hooks, Patch, activation_names
from src.analysis.patching import Pairs, align, class_positions, patch_plan
from src.tokenizer import PAD_ID, VOCAB_SIZE
from tests.tiny import write_data, tiny_config, write_run

SMALL = ModelConfig(vocab_size=VOCAB_SIZE, d_model=32, num_layers=3, num_heads=4, d_ff=64, max_seq_len=32,
                    dropout=0.1, rope_base=10000.0)
PAIRS = [("1+2*3", "1+(2*3)"), ("12*3-4", "(12*3)-4"), ("5*6*7", "((5*6)*7)"), ("8+9", "(8+9)"),
         ("99-1+23", "(99-1)+23"), ("4*5+6*7", "(4*5)+(6*7)")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CompactTransformer(SMALL).eval()
    with torch.no_grad():  # LayerNorm weights away from 1 and biases away from 0: no accidental symmetry
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m


def make_pairs(pairs=PAIRS) -> Pairs:
    flat = [make_record(f) for f, _ in pairs]
    bracketed = [make_record(b) for _, b in pairs]
    alignments = patching.pair_records(flat, bracketed, "flat.jsonl", "matched.jsonl")
    return Pairs(make_batch(flat, SMALL.max_seq_len), make_batch(bracketed, SMALL.max_seq_len), alignments)


def record_all(model, tokens):
    names = activation_names(model.cfg)
    out = model(tokens, hooks=Hooks(record=names))
    return out.logits, out.activations


# ---------------------------------------------------------------------------- alignment


def test_alignment_of_one_bracket_pair():
    a = align("1+2*3", "1+(2*3)", 7)
    # <BOS> 1 + ( 2 * 3 ) ' ' = ' ' 7 <EOS>: flat positions 0-10, bracketed 0-12
    assert a.flat_to_bracketed == (0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12)
    assert a.classes["open"] == (3,) and a.classes["close"] == (7,)
    assert a.classes["inside"] == (4, 5, 6) and a.classes["outside"] == (1, 2)
    assert a.classes["equals"] == (9,)
    assert a.classes["prompt"] == (0, 1, 2, 4, 5, 6, 8, 9, 10)
    assert a.classes["answer"] == (10, 11)  # the space after `=` predicts 7, the 7 predicts <EOS>
    assert a.counterpart[3] == 2 and a.counterpart[7] == 5  # `(` -> flat `+`, `)` -> flat `3`
    assert class_positions(a, "close", "flat_to_bracketed") == [(7, 5)]
    assert class_positions(a, "close", "bracketed_to_flat") == [(5, 7)]
    assert class_positions(a, "inside", "bracketed_to_flat") == [(3, 4), (4, 5), (5, 6)]


def test_alignment_of_nested_brackets_and_whole_expression():
    a = align("5*6*7", "((5*6)*7)", 210)
    assert a.flat_to_bracketed == (0, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16)
    assert a.classes["open"] == (1, 2) and a.classes["close"] == (6, 9)
    assert a.classes["inside"] == (3, 4, 5, 7, 8) and a.classes["outside"] == ()
    # both `(` pair with <BOS>: bracketed_to_flat takes the later one's value
    assert class_positions(a, "open", "flat_to_bracketed") == [(1, 0), (2, 0)]
    assert class_positions(a, "open", "bracketed_to_flat") == [(0, 2)]
    assert class_positions(a, "close", "bracketed_to_flat") == [(3, 6), (5, 9)]
    whole = align("8+9", "(8+9)", 17)
    assert whole.flat_to_bracketed == (0, 2, 3, 4, 6, 7, 8, 9, 10, 11)
    assert whole.classes["inside"] == (2, 3, 4) and whole.classes["outside"] == ()
    assert whole.classes["close"] == (5,) and whole.counterpart[5] == 3
    # the flat sequence's every token maps to the same token in the bracketed one
    for flat, bracketed in PAIRS:
        r = make_record(flat).result
        a = align(flat, bracketed, r)
        ft, bt = f"\x01{flat} = {r}\x02", f"\x01{bracketed} = {r}\x02"
        assert [bt[b] for b in a.flat_to_bracketed] == list(ft)
        assert a.flat_len == len(ft) and a.bracketed_len == len(bt)


def test_alignment_refuses_a_pair_that_is_not_a_twin():
    with pytest.raises(ValueError, match="without its brackets"):
        align("1+2*3", "1+(2*4)", 7)
    with pytest.raises(ValueError, match="balance"):
        align("1+2", ")1+2(", 3)


def test_patch_plan_marks_the_receiving_positions():
    pairs = make_pairs()
    mask, index = patch_plan(pairs.alignments, ("prompt", "answer"), "bracketed_to_flat", SMALL.max_seq_len)
    for i, a in enumerate(pairs.alignments):  # every flat input position, from its own token's bracketed position
        n = a.flat_len - 1
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert index[i, :n].tolist() == list(a.flat_to_bracketed[:n])


# ---------------------------------------------------------------------------- bad input


def write_jsonl(path, exprs):
    path.write_text("".join(make_record(e).to_json() + "\n" for e in exprs))
    return path


def test_pair_files_with_a_bad_pair_name_the_line_in_both_files(tmp_path):
    flat = write_jsonl(tmp_path / "flat.jsonl", ["1+2", "3*4+5", "6-7"])
    stripped = write_jsonl(tmp_path / "stripped.jsonl", ["(1+2)", "(3*4)+6", "(6-7)"])
    with pytest.raises(UserError, match=r"flat\.jsonl:2 and .*stripped\.jsonl:2.*without its brackets"):
        patching.load_pairs(flat, stripped, 32)
    value = write_jsonl(tmp_path / "value.jsonl", ["(1+2)", "3*(4+5)", "(6-7)"])  # same tokens, another value
    with pytest.raises(UserError, match=r"flat\.jsonl:2 and .*value\.jsonl:2.*results differ"):
        patching.load_pairs(flat, value, 32)
    short = write_jsonl(tmp_path / "short.jsonl", ["(1+2)", "(3*4)+5"])
    with pytest.raises(UserError, match=r"3 records .* 2: line 3 of .*flat\.jsonl has no twin"):
        patching.load_pairs(flat, short, 32)
    with pytest.raises(UserError, match=r"line 3 of .*flat\.jsonl has no twin"):  # --limit does not hide it
        patching.load_pairs(flat, short, 32, limit=1)
    none = write_jsonl(tmp_path / "none.jsonl", ["(1+2)", "3*4+5", "(6-7)"])
    with pytest.raises(UserError, match=r"flat\.jsonl:2 and .*none\.jsonl:2.*no brackets"):
        patching.load_pairs(flat, none, 32)
    good = write_jsonl(tmp_path / "good.jsonl", ["(1+2)", "(3*4)+5", "(6-7)"])
    assert len(patching.load_pairs(flat, good, 32)) == 3


# ---------------------------------------------------------------------------- the patch in the model


@torch.no_grad()
def test_patching_every_site_with_itself_changes_nothing_bit_for_bit(model):
    tokens = make_pairs().bracketed.inputs
    plain = model(tokens).logits
    _, acts = record_all(model, tokens)
    everywhere = {name: Patch(v, torch.ones(v.dim() * (1,), dtype=torch.bool)) for name, v in acts.items()}
    assert torch.equal(model(tokens, hooks=Hooks(patch=everywhere)).logits, plain)
    some = {name: Patch(v, torch.rand(v.shape[:2] + (1,) * (v.dim() - 2)) < 0.5) for name, v in acts.items()}
    assert torch.equal(model(tokens, hooks=Hooks(patch=some)).logits, plain)
    assert torch.equal(model(tokens, hooks=Hooks(patch={"hook_embed": (acts["hook_embed"], None)})).logits, plain)


@torch.no_grad()
def test_patching_the_whole_residual_stream_gives_the_source_exactly(model):
    g = torch.Generator().manual_seed(3)
    receiver, source = (torch.randint(4, VOCAB_SIZE, (5, 20), generator=g) for _ in range(2))
    source_logits, acts = record_all(model, source)
    for layer in range(SMALL.num_layers):  # after any layer: everything later is a function of that residual
        name = f"blocks.{layer}.hook_resid_post"
        out = model(receiver, hooks=Hooks(patch={name: Patch(acts[name])}))
        assert torch.equal(out.logits, source_logits), layer


@torch.no_grad()
def test_patching_the_last_residual_at_aligned_positions_gives_the_twins_output(model):
    pairs = make_pairs()
    seqs = {"flat": pairs.flat.inputs, "bracketed": pairs.bracketed.inputs}
    logits, acts = {}, {}
    for which, tokens in seqs.items():
        logits[which], acts[which] = record_all(model, tokens)
    name = f"blocks.{SMALL.num_layers - 1}.hook_resid_post"
    for direction, (source, receiver) in patching.DIRECTIONS.items():
        mask, index = patch_plan(pairs.alignments, ("prompt", "answer"), direction, SMALL.max_seq_len)
        patch = Patch(patching.gather_positions(acts[source][name], index), mask.unsqueeze(-1))
        out = model(seqs[receiver], hooks=Hooks(patch={name: patch})).logits
        for i in range(len(pairs)):
            recv = mask[i].nonzero().squeeze(1)
            torch.testing.assert_close(out[i, recv], logits[source][i, index[i, recv]], rtol=0, atol=1e-6)
            kept = (~mask[i]).nonzero().squeeze(1)  # brackets and padding: untouched
            assert torch.equal(out[i, kept], logits[receiver][i, kept])
        scores = patching.answer_scores(out, pairs.flat if receiver == "flat" else pairs.bracketed)
        clean = patching.answer_scores(logits[source], pairs.flat if source == "flat" else pairs.bracketed)
        torch.testing.assert_close(scores[0], clean[0], rtol=0, atol=1e-5)  # restored share 1


@torch.no_grad()
def test_a_head_patch_changes_only_that_head_and_only_later_positions(model):
    g = torch.Generator().manual_seed(4)
    receiver, source = (torch.randint(4, VOCAB_SIZE, (3, 16), generator=g) for _ in range(2))
    plain, _ = record_all(model, receiver)
    _, src = record_all(model, source)
    name = "blocks.1.attn.hook_z"
    at = torch.zeros(3, 16, SMALL.num_heads, 1, dtype=torch.bool)
    at[:, 9, 2] = True  # head 2, position 9
    out = model(receiver, hooks=Hooks(patch={name: Patch(src[name], at)}, record={name}))
    z = out.activations[name]  # recorded as patched
    assert torch.equal(z[:, 9, 2], src[name][:, 9, 2])
    assert torch.equal(out.logits[:, :9], plain[:, :9])  # causal: nothing before the patch moves
    assert not torch.allclose(out.logits[:, 9:], plain[:, 9:])
    silent = CompactTransformer(SMALL).eval()  # a head whose out-projection is zero writes nothing
    silent.load_state_dict(model.state_dict())
    hd = SMALL.head_dim
    silent.blocks[1].attn.out.weight[:, 2 * hd:3 * hd] = 0.0
    base = silent(receiver).logits
    assert torch.equal(silent(receiver, hooks=Hooks(patch={name: Patch(src[name], at)})).logits, base)


def test_bad_patches_are_refused(model):
    tokens = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(KeyError, match="cannot patch"):
        model(tokens, hooks=Hooks(patch={"blocks.0.attn.hook_pattern": Patch(torch.zeros(2, 4, 8, 8))}))
    with pytest.raises(KeyError, match="cannot patch"):
        model(tokens, hooks=Hooks(patch={"blocks.9.hook_resid_post": Patch(torch.zeros(2, 8, 32))}))
    with pytest.raises(ValueError, match="shape"):
        model(tokens, hooks=Hooks(patch={"blocks.0.hook_resid_post": Patch(torch.zeros(2, 7, 32))}))
    with pytest.raises(ValueError, match="boolean"):
        model(tokens, hooks=Hooks(patch={"blocks.0.hook_resid_post": Patch(torch.zeros(2, 8, 32), torch.ones(2, 8, 1))}))


@torch.no_grad()
def test_prompt_patches_do_not_see_the_answer(model):
    """The premise of answer_correct = greedy exact_match for prompt-position patches: with the patch, the
    logits at the prompt positions do not depend on the answer tokens after them."""
    pairs = make_pairs()
    _, acts = record_all(model, pairs.bracketed.inputs)
    name = "blocks.0.hook_resid_post"
    mask, index = patch_plan(pairs.alignments, "prompt", "bracketed_to_flat", SMALL.max_seq_len)
    patch = Patch(patching.gather_positions(acts[name], index), mask.unsqueeze(-1))
    full = model(pairs.flat.inputs, hooks=Hooks(patch={name: patch})).logits
    positions = torch.arange(SMALL.max_seq_len)
    prompt_only = torch.where(positions < pairs.flat.prompt_len[:, None], pairs.flat.inputs, PAD_ID)
    cut = model(prompt_only, hooks=Hooks(patch={name: patch})).logits
    for i, n in enumerate(pairs.flat.prompt_len.tolist()):
        assert torch.equal(full[i, :n], cut[i, :n])


# ---------------------------------------------------------------------------- the scan


@torch.no_grad()
def test_scan_stacks_heads_like_separate_passes_and_scores_like_evaluate(model):
    pairs = make_pairs()
    scan = patching.patching_scan(model, pairs, chunk=4, log=lambda *_: None)  # 6 pairs: two chunks
    clean = scan["clean"]
    for which, batch in (("flat", pairs.flat), ("bracketed", pairs.bracketed)):
        ref = per_example_scores(model, batch, exact_match=None)
        torch.testing.assert_close(clean[which]["logp"], -ref["answer_loss_sum"], rtol=0, atol=1e-5)
    L, H = SMALL.num_layers, SMALL.num_heads
    assert len(scan["cells"]) == 2 * len(patching.POSITION_CLASSES) * L * (1 + H)
    _, acts = record_all(model, pairs.bracketed.inputs)
    for layer, head, cls in ((0, 1, "inside"), (2, 3, "close"), (1, 0, "equals")):
        name = f"blocks.{layer}.attn.hook_z"
        mask, index = patch_plan(pairs.alignments, cls, "bracketed_to_flat", SMALL.max_seq_len)
        m = torch.zeros(mask.shape + (H, 1), dtype=torch.bool)
        m[:, :, head] = mask.unsqueeze(-1)
        logits = model(pairs.flat.inputs, hooks=Hooks(patch={name: Patch(patching.gather_positions(acts[name], index), m)})).logits
        logp, correct = patching.answer_scores(logits, pairs.flat)
        cell = scan["cells"][("bracketed_to_flat", "heads", layer, head, cls)]
        torch.testing.assert_close(cell["logp"], logp.double(), rtol=0, atol=1e-5)
        assert torch.equal(cell["correct"], correct)
    # the last residual at the answer positions carries the whole answer: share 1 in both directions
    summary = patching.summarize_scan(scan, SMALL, min_gap=0.0)
    for direction in patching.DIRECTIONS:
        last = summary["resid"][direction]["answer"][L - 1]
        assert last["restored_share"] == pytest.approx(1.0, abs=1e-4)
        eq = summary["resid"][direction]["equals"][L - 1]  # `=` predicts the space: nothing scored moves
        assert eq["restored_share"] == pytest.approx(0.0, abs=1e-6)
    # the silent class: pairs without an `outside` token are left exactly as they were
    outside = scan["cells"][("flat_to_bracketed", "resid", 0, None, "outside")]["logp"]
    none = torch.tensor([not a.classes["outside"] for a in pairs.alignments])
    assert torch.equal(outside[none], clean["bracketed"]["logp"][none])


# ---------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("patching")
    write_data(root / "data")
    run = root / "run"
    write_run(run, tiny_config(root / "data"))
    return run


def test_cli_writes_patching_json_and_figure(tiny_run):
    assert patching.main(["--run", str(tiny_run), "--device", "cpu", "--limit", "12", "--chunk", "5"]) == 0
    res = json.loads((tiny_run / "patching.limit12.json").read_text())  # a --limit run: its own file
    assert not (tiny_run / "patching.json").exists()
    assert next(iter(res)) == "schema" and res["schema"] == "patching/1"
    assert res["n_pairs"] == 12 and res["limit"] == 12
    classes = list(patching.POSITION_CLASSES)
    for direction in patching.DIRECTIONS:
        assert list(res["resid"][direction]) == classes and list(res["heads"][direction]) == classes
        assert [e["layer"] for e in res["resid"][direction]["inside"]] == [0, 1]
        assert [e["head"] for e in res["heads"][direction]["close"]] == [f"L{l}-H{h}" for l in range(2) for h in range(4)]
        last = res["resid"][direction]["answer"][-1]
        assert last["restored_share"] == pytest.approx(1.0, abs=1e-4)
        assert last["answer_correct"] == res["baseline"][patching.DIRECTIONS[direction][0]]["answer_correct"]
        for cell in res["resid"][direction]["inside"]:  # each cell's change carries its paired t-test
            t = cell["logp_change_test"]
            assert t["test"] == "paired_t" and t["p_floor"] == 0.0 and t["n"] == 12
            assert t["estimate"] == pytest.approx(cell["logp_change"], abs=1e-9)
    # L0-H0 of the tiny run writes nothing to the residual stream: patching it is a no-op (up to the rounding
    # of a pass over the pairs stacked once per head against the clean pass over them once)
    for direction in patching.DIRECTIONS:
        for cls in classes:
            silent = res["heads"][direction][cls][0]
            assert silent["head"] == "L0-H0" and silent["logp_change"] == pytest.approx(0.0, abs=1e-5)
            assert silent["answer_correct"] == res["baseline"][patching.DIRECTIONS[direction][1]]["answer_correct"]
    assert res["class_counts"]["close"]["pairs"] == 12
    png = tiny_run / "patching.limit12.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_checks_before_computing(tiny_run, tmp_path, capsys):
    assert run_main(patching.main, ["--run", str(tiny_run), "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert run_main(patching.main, ["--run", str(tiny_run), "--device", "cpu", "--classes", "inside,nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "patching.json").exists()
