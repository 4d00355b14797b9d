"""The TransformerLens bridge (src/interop/transformer_lens.py) against our own model and interventions.

fp32 on the CPU, on a tiny random model (every parameter perturbed) and a tiny trained one (see
tests/test_export.py). Each convention of the mapping has a test, and each flipped convention is shown
to change the logits, so that no test passes because the conventions do not matter on these models.
"""

import json
import os
import re
import runpy
from collections import defaultdict

import pytest
import torch

from src.interop.transformer_lens import INSTALL

# TransformerLens takes about 9 s to import (7 s more than torch), a twelfth of the default run: its tests
# are slow-marked (CI runs them with -m slow), and it is imported by the fixtures, not at collection.
pytestmark = pytest.mark.slow


def transformer_lens_patching():
    """transformer_lens.patching, or a skip where TransformerLens is not installed."""
    pytest.importorskip("transformer_lens", reason=f"TransformerLens is not installed: {INSTALL}")
    from transformer_lens import patching

    return patching

from src import export
from src.data import load_jsonl, make_batch
from src.interop.transformer_lens import (
    build_hooked_transformer,
    hooked_config,
    hooked_state_dict,
    to_hooked_transformer,
)
from src.model import HeadAblation, Hooks, Patch, activation_names, apply_rotary
from tests.test_export import random_model, trained_model, write_tiny_run
from tests.tiny import REPO_ROOT, tiny_config, write_data

TOL = 1e-5
FAST_LINES = 200  # of each test file in the default suite; every line in the slow test
TEST_FILES = [REPO_ROOT / "data" / f"pilot_test_{s}.jsonl" for s in ("flat", "paren", "paren_matched", "depth3")]  # of records
KINDS = ("random", "trained")


@pytest.fixture(scope="module")
def raw():
    pytest.importorskip("transformer_lens", reason=f"TransformerLens is not installed: {INSTALL}")
    return tiny_config(REPO_ROOT / "data")


@pytest.fixture(scope="module")
def models(raw):
    """kind -> (our model, its HookedTransformer)."""
    out = {}
    for kind, make in (("random", random_model), ("trained", trained_model)):
        model = make(raw)
        out[kind] = (model, to_hooked_transformer(model))
    return out


def batch_of(path, lines=None):
    return make_batch(load_jsonl(path, 32, max_records=lines), 32)


@pytest.fixture(scope="module")
def paren():
    return batch_of(REPO_ROOT / "data" / "pilot_test_paren.jsonl", 64)


def gap(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def logit_gap(model, tl_model, tokens) -> float:
    return gap(model(tokens).logits, tl_model(tokens))


# ---------------------------------------------------------------------------- logits


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_on_the_first_lines_of_every_test_file(models, kind):
    assert all(p.is_file() for p in TEST_FILES)
    model, tl_model = models[kind]
    for path in TEST_FILES:
        assert logit_gap(model, tl_model, batch_of(path, FAST_LINES).inputs) < TOL, path.name


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_on_every_line_of_every_test_file(models, kind):
    model, tl_model = models[kind]
    for path in TEST_FILES:
        batch = batch_of(path)
        assert len(batch) == 2000
        assert logit_gap(model, tl_model, batch.inputs) < TOL, path.name


# ---------------------------------------------------------------------------- each convention


def flipped(model, **change):
    """The HookedTransformer of `model` with one setting of its config changed."""
    return build_hooked_transformer({**hooked_config(model), **change}, hooked_state_dict(model))


@pytest.mark.parametrize("change", [
    {"rotary_adjacent_pairs": True},   # GPT-J's pairs (x[2i], x[2i+1]) instead of NeoX's (x[i], x[i + d/2])
    {"rotary_base": 1000.0},
    {"rotary_dim": 4},                 # rotating half of each 8-dimensional head
    {"act_fn": "gelu_new"},            # the tanh approximation of GELU
    {"attention_dir": "bidirectional"},
    {"attn_scale": 8.0},               # 1/d_head instead of 1/sqrt(d_head)
    {"eps": 1e-6},
], ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items()))
def test_each_flipped_convention_changes_the_logits(models, paren, change):
    """On the trained model each wrong convention moves some logit by 2e-3 (the tanh GELU), 1e-2 (eps 1e-6)
    or more than 1 (the rotary, scale and mask conventions): a hundred times the tolerance at least."""
    model, tl_model = models["trained"]
    right, wrong = logit_gap(model, tl_model, paren.inputs), logit_gap(model, flipped(model, **change), paren.inputs)
    assert right < TOL and wrong > 100 * TOL, (right, wrong)


def test_rotary_tables_and_rotation_are_ours(models):
    model, tl_model = models["random"]
    cfg = tl_model.cfg
    assert (cfg.positional_embedding_type, cfg.rotary_adjacent_pairs) == ("rotary", False)
    assert (cfg.rotary_dim, cfg.rotary_base) == (model.cfg.head_dim, model.cfg.rope_base) == (8, 10000.0)
    attn = tl_model.blocks[0].attn
    # TransformerLens keeps one angle per dimension: the pair's angle in both halves of the head
    assert gap(attn.rotary_cos, torch.cat([model.rope_cos, model.rope_cos], -1)) < 1e-6
    assert gap(attn.rotary_sin, torch.cat([model.rope_sin, model.rope_sin], -1)) < 1e-6
    x = torch.randn(3, 32, 4, 8)  # [batch, pos, head, d_head], TransformerLens's layout
    ours = apply_rotary(x.transpose(1, 2), model.rope_cos, model.rope_sin).transpose(1, 2)
    assert gap(attn.apply_rotary(x), ours) < 1e-5


def test_no_position_embedding_and_35_tokens(models):
    _, tl_model = models["random"]
    assert not any("pos_embed" in name for name in tl_model.state_dict())
    assert (tl_model.cfg.d_vocab, tl_model.cfg.d_vocab_out) == (35, 35)


def test_layer_norm_epsilon_weights_and_biases(models):
    model, tl_model = models["random"]
    assert tl_model.cfg.normalization_type == "LN" and tl_model.cfg.eps == model.ln_f.eps == 1e-5
    pairs = [(b.ln1, t.ln1) for b, t in zip(model.blocks, tl_model.blocks)]
    pairs += [(b.ln2, t.ln2) for b, t in zip(model.blocks, tl_model.blocks)] + [(model.ln_f, tl_model.ln_final)]
    for ours, theirs in pairs:
        assert torch.equal(ours.weight, theirs.w) and torch.equal(ours.bias, theirs.b)
        assert ours.bias.abs().min() > 0 and (ours.weight - 1).abs().min() > 0  # not the initial values
    # where the variance is near eps, the epsilon shows: equal with ours, far off with another
    x = torch.randn(4, 32, 32) * 3e-3
    ours, theirs = model.ln_f, tl_model.ln_final
    assert gap(ours(x), theirs(x)) < 1e-4
    assert gap(ours(x), flipped(model, eps=1e-6).ln_final(x)) > 1e-2


def test_gelu_is_the_exact_form(models):
    model, tl_model = models["random"]
    assert tl_model.cfg.act_fn == "gelu"
    x = torch.randn(4, 32, 32) * 3
    assert gap(model.blocks[0].ffn(x), tl_model.blocks[0].mlp(x)) < 1e-5
    assert gap(model.blocks[0].ffn(x), flipped(model, act_fn="gelu_new").blocks[0].mlp(x)) > 1e-5


def test_attention_biases_are_zero_as_our_projections_have_none(models):
    model, tl_model = models["random"]
    assert model.blocks[0].attn.qkv.bias is None and model.blocks[0].attn.out.bias is None
    for block in tl_model.blocks:
        for name in ("b_Q", "b_K", "b_V", "b_O"):
            assert torch.count_nonzero(getattr(block.attn, name)) == 0, name


def test_unembedding_is_the_tied_embedding(models):
    model, tl_model = models["trained"]
    assert torch.equal(tl_model.W_E, model.embed.weight)
    assert torch.equal(tl_model.W_U, model.embed.weight.T)
    assert torch.count_nonzero(tl_model.unembed.b_U) == 0


@torch.no_grad()
def test_attention_is_causal_with_scale_one_over_sqrt_d_head(models, paren):
    model, tl_model = models["trained"]
    assert tl_model.cfg.attention_dir == "causal" and tl_model.cfg.attn_scale == pytest.approx(8 ** 0.5)
    tokens = paren.inputs[:8].clone()
    later = tokens.clone()
    later[:, 10:] = torch.randint(4, 35, later[:, 10:].shape, generator=torch.Generator().manual_seed(1))
    a, b = tl_model(tokens), tl_model(later)
    assert torch.equal(a[:, :10], b[:, :10]) and gap(a[:, 10:], b[:, 10:]) > 1e-3
    assert gap(model(later).logits, b) < TOL
    _, cache = tl_model.run_with_cache(tokens)
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert torch.count_nonzero(pattern.triu(diagonal=1)) == 0


# ---------------------------------------------------------------------------- activations, ablation, patching


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_recorded_activations_equal_the_cache(models, paren, kind):
    model, tl_model = models[kind]
    names = activation_names(model.cfg, pattern=True)
    assert {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.0.attn.hook_z",
            "blocks.1.attn.hook_z"} <= set(names)
    ours = model(paren.inputs, hooks=Hooks(record=names)).activations
    _, cache = tl_model.run_with_cache(paren.inputs, names_filter=names)
    for name in names:
        assert ours[name].shape == cache[name].shape, name
        assert gap(ours[name], cache[name]) < TOL, name


def z_hook(heads, means=None):
    """A TransformerLens hook on blocks.{l}.attn.hook_z replacing `heads` of that layer by zero or their means."""
    def hook(z, hook):
        layer = int(hook.name.split(".")[1])
        z = z.clone()
        for head in heads:
            if means is None:
                z[:, :, head] = 0.0
            elif means.dim() == 3:  # [L, H, d_head]
                z[:, :, head] = means[layer, head]
            else:  # [L, H, T, d_head]
                z[:, :, head] = means[layer, head, : z.shape[1]]
        return z
    return hook


@pytest.mark.parametrize("mode", ["zero", "mean", "mean_per_position"])
@torch.no_grad()
def test_head_ablation_equals_a_hook_on_hook_z(models, paren, mode):
    model, tl_model = models["trained"]
    heads = {(0, 1), (1, 2), (1, 3)}
    z = torch.stack([model(paren.inputs, hooks=Hooks(record={f"blocks.{l}.attn.hook_z"})).activations[
        f"blocks.{l}.attn.hook_z"] for l in range(2)])  # [L, B, T, H, d]
    means = {"zero": None, "mean": z.mean(dim=(1, 2)), "mean_per_position": z.mean(dim=1).permute(0, 2, 1, 3)}[mode]
    ablated = model(paren.inputs, hooks=Hooks(ablation=HeadAblation(heads, means))).logits
    by_layer = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)
    hooks = [(f"blocks.{l}.attn.hook_z", z_hook(h, means)) for l, h in by_layer.items()]
    theirs = tl_model.run_with_hooks(paren.inputs, fwd_hooks=hooks)
    assert gap(ablated, theirs) < TOL
    assert gap(ablated, model(paren.inputs).logits) > 1e-3  # the ablation does something


def aligned_pairs(n=8):
    """(base, source) batches of flat test expressions of one template (digits in the same places, the same
    operators): every prompt position holds a token of the same kind in both."""
    records = load_jsonl(REPO_ROOT / "data" / "pilot_test_flat.jsonl", 32, max_records=400)
    by_template = defaultdict(list)
    for r in records:
        by_template[re.sub(r"\d", "0", r.expr)].append(r)
    pairs = [(a, b) for group in by_template.values() for a, b in zip(group[::2], group[1::2]) if a.result != b.result]
    assert len(pairs) >= n
    base, source = zip(*pairs[:n])
    return make_batch(list(base), 32), make_batch(list(source), 32)


@torch.no_grad()
def test_residual_patching_equals_transformer_lens_patching(models):
    import pandas as pd  # a TransformerLens dependency

    patching = transformer_lens_patching()
    model, tl_model = models["trained"]
    base, source = aligned_pairs()
    assert torch.equal(base.prompt_len, source.prompt_len)
    _, source_cache = tl_model.run_with_cache(source.inputs)
    ours_source = model(source.inputs, hooks=Hooks(record=activation_names(model.cfg))).activations
    rows = torch.arange(len(base))
    answer_pos = base.prompt_len - 1  # where the first answer token is predicted
    first_answer = base.labels[rows, answer_pos]

    def metric(logits):  # the base's first answer token's mean log-probability
        return logits[rows, answer_pos].log_softmax(-1)[rows, first_answer].mean()

    def ours(site, pos):
        mask = torch.zeros(len(base), 32, 1, dtype=torch.bool)
        mask[:, pos] = True
        return metric(model(base.inputs, hooks=Hooks(patch={site: Patch(ours_source[site], mask)})).logits)

    # every layer x position of the residual stream entering each block: hook_embed, then block l-1's output
    theirs = patching.get_act_patch_resid_pre(tl_model, base.inputs, source_cache, metric)
    assert theirs.shape == (2, 32)
    sites = ["hook_embed", "blocks.0.hook_resid_post"]
    expected = torch.tensor([[ours(sites[l], p).item() for p in range(32)] for l in range(2)])
    assert gap(theirs, expected) < TOL
    assert gap(theirs, torch.full_like(theirs, metric(model(base.inputs).logits).item())) > 1e-3
    # the last block's output at the prompt's digits, through resid_post, for the same pairs
    digits = [p for p in range(1, int(base.prompt_len[0]) - 3) if base.inputs[0, p] < 14]
    index = pd.DataFrame({"layer": [1] * len(digits), "pos": digits})
    theirs = patching.generic_activation_patch(tl_model, base.inputs, source_cache, metric,
                                               patching.layer_pos_patch_setter, "resid_post", index_df=index)
    expected = torch.tensor([ours("blocks.1.hook_resid_post", p).item() for p in digits])
    assert gap(theirs, expected) < TOL


# ---------------------------------------------------------------------------- the export and the example


def loading_snippet() -> str:
    text = (REPO_ROOT / "docs" / "INTEROP.md").read_text()
    block = re.search(r"```python\n(import json\n.*?)```", text, re.DOTALL).group(1)
    assert len(block.strip().splitlines()) <= 5
    return block


@pytest.fixture(scope="module")
def tiny_run(models, tmp_path_factory):
    """A run directory around the trained model."""
    root = tmp_path_factory.mktemp("tl")
    write_data(root / "data")
    model = models["trained"][0]
    write_tiny_run(root / "run", tiny_config(root / "data"), model, model)
    return root, model


def test_the_documented_snippet_loads_the_transformer_lens_export(tiny_run, paren):
    root, model = tiny_run
    out = root / "tl"
    assert export.main(["--run", str(root / "run"), "--to", "transformer-lens", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["schema"] == "transformer_lens_export/1" and config["check"]["max_abs_logit_difference"] < TOL
    assert config["compact_transformer"]["schema"] == "export/1"
    namespace = {}
    exec(loading_snippet().replace("exports/pilot-tl", str(out)), namespace)  # noqa: S102 (the documented snippet)
    with torch.no_grad():
        assert logit_gap(model, namespace["model"], paren.inputs) < TOL


def test_quickstart_runs_as_a_script_on_a_tiny_model(tiny_run, tmp_path, monkeypatch, capsys):
    root, _ = tiny_run
    monkeypatch.setenv("QUICKSTART_RUN", str(root / "run"))
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO_ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert torch.is_grad_enabled()  # the example leaves no global state behind
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "interchange" in printed
    figures = list(tmp_path.glob("attention_*.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 1000
    assert os.path.isfile(tmp_path / "transformer-lens" / "model.safetensors")


# ---------------------------------------------------------------------------- interchange interventions


def tl_decode(tl_model, prompts, prompt_len, steps, name=None, values=None, mask=None):
    """Greedy decoding through TransformerLens, the source's activation written into `name` at `mask` at
    every step (the same rule as src.analysis.interchange.decode, written independently)."""
    from src.tokenizer import EOS_ID, PAD_ID

    def write(act, hook):
        return torch.where(mask, values.to(act.dtype), act)

    tokens, n = prompts.clone(), len(prompts)
    frontier, done = prompt_len.clone(), torch.zeros(n, dtype=torch.bool)
    out = torch.full((n, steps), PAD_ID, dtype=torch.long)
    with torch.no_grad():
        for step in range(steps):
            hooks = [] if name is None else [(name, write)]
            logits = tl_model.run_with_hooks(tokens, fwd_hooks=hooks)
            nxt = logits[torch.arange(n), (frontier - 1).clamp(max=tokens.shape[1] - 1)].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
            out[:, step] = nxt
            done |= nxt == EOS_ID
            if step + 1 < steps:
                ok = frontier < tokens.shape[1]
                tokens[torch.arange(n)[ok], frontier[ok]] = nxt[ok]
                frontier = frontier + 1
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_our_interchange_intervention_equals_the_same_patch_through_transformer_lens(models, kind):
    """src.analysis.interchange's batched patched decoding, on real pairs of data/counterfactual_value.jsonl.gz,
    equals greedy decoding through HookedTransformer with a hook writing the source's cached activation at
    the same positions: the residual stream after block 0 at `)`, head L0-H1's hook_z inside the bracket, and
    the embedding at every prompt position."""
    from src.analysis import interchange

    model, tl_model = models[kind]
    pairs = [p for p in interchange.load_pairs(interchange.pairs_path(REPO_ROOT / "data", "value"), "value", 32)
             if p.control == "interchange"][:24]
    tensors = interchange.pair_tensors(pairs, 32)
    sites = {s.label: s for s in interchange.sites_of(model.cfg)[0]}
    jobs = [(sites["resid L0"], "close"), (sites["L0-H1"], "inside"), (sites["embed"], "prompt")]
    names = sorted({s.name for s, _ in jobs})
    sources = interchange.record_sources(model, tensors, names, "fp32", 64)
    ours = interchange.patched_runs(model, tensors, jobs, sources, "fp32", 64)
    _, cache = tl_model.run_with_cache(tensors.source)
    plain = tl_decode(tl_model, tensors.base, tensors.prompt_len, tensors.steps)
    changed = 0
    for site, cls in jobs:
        rows = ours[(site.label, cls)]["rows"]
        pos = tensors.masks[cls][rows]
        if site.head is None:
            mask = pos[:, :, None]
        else:
            mask = pos[:, :, None, None] & (torch.arange(model.cfg.num_heads) == site.head)[None, None, :, None]
        generated = tl_decode(tl_model, tensors.base[rows], tensors.prompt_len[rows], tensors.steps, site.name,
                              cache[site.name][rows], mask)
        # one forward with the Patch that patched_runs builds, against the TL hook: equal, and not the unpatched
        values = sources[site.name][rows]
        with torch.no_grad():
            ours_logits = model(tensors.base[rows], hooks=Hooks(patch={site.name: Patch(values, mask)})).logits
            theirs_logits = tl_model.run_with_hooks(
                tensors.base[rows], fwd_hooks=[(site.name, lambda act, hook: torch.where(mask, values, act))])
            plain_logits = model(tensors.base[rows]).logits
        assert gap(ours_logits, theirs_logits) < TOL, site.label
        changed += int(gap(ours_logits, plain_logits) > 1e-3)
        for target in ("predicted", "base", "source"):
            theirs = interchange.matches(generated, tensors.targets[target][rows])
            assert torch.equal(ours[(site.label, cls)][target], theirs), (site.label, cls, target)
    assert changed == len(jobs), "every patch moves the logits: the comparison does not hold trivially"
    assert torch.equal(interchange.unpatched(model, tensors, "fp32", 64)["base_correct"],
                       interchange.matches(plain, tensors.targets["base"]))
