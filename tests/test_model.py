"""CompactTransformer: parameter counts, tied head, loss, causality, activation cache, head ablation."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import src.model
from src.config import ModelConfig, load_config
from src.data import make_batch, make_record
from src.model import CompactTransformer, HeadAblation, Hooks, activation_names, embed_lookup
from src.tokenizer import IGNORE_INDEX, VOCAB_SIZE

REPO_ROOT = Path(__file__).resolve().parent.parent

SMALL = ModelConfig(
    vocab_size=VOCAB_SIZE, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32, dropout=0.1, rope_base=10000.0
)
B, T = 3, 20


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CompactTransformer(SMALL).eval()


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB_SIZE, (B, T), generator=g)


def all_heads_of(layer):
    return HeadAblation({(layer, h) for h in range(SMALL.num_heads)})


# ---------------------------------------------------------------------------- size and head


def expected_count(m: ModelConfig) -> int:
    """DESIGN.md section 3, counted by hand: tied embedding, bias-free attention, FFN with biases, LayerNorms."""
    d = m.d_model
    per_block = 4 * d * d + (d * m.d_ff + m.d_ff) + (m.d_ff * d + d) + 2 * 2 * d
    return m.vocab_size * d + m.num_layers * per_block + 2 * d


@pytest.mark.parametrize("config, count", [("pilot.yaml", 664_192), ("scale_10m.yaml", 10_651_776)])
def test_exact_parameter_count(config, count):
    cfg = load_config(REPO_ROOT / "configs" / config).model
    model = CompactTransformer(cfg)
    assert model.num_parameters() == count
    assert sum(p.numel() for p in model.parameters()) == count
    assert expected_count(cfg) == count
    # RoPE tables are derived from the config: not parameters, not in the state dict
    assert not any("rope" in name for name in model.state_dict())


def test_output_head_is_tied_to_embedding(model, tokens):
    vocab_shaped = [n for n, p in model.named_parameters() if p.shape == (VOCAB_SIZE, SMALL.d_model)]
    assert vocab_shaped == ["embed.weight"]
    out = model(tokens, hooks=Hooks(record={f"blocks.{SMALL.num_layers - 1}.hook_resid_post"}))
    x = out.activations[f"blocks.{SMALL.num_layers - 1}.hook_resid_post"]
    reference = model.ln_f(x) @ model.embed.weight.T
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=1e-6)


def test_embedding_lookup_equals_nn_embedding_and_its_gradient(model, tokens, monkeypatch):
    """The lookup that training uses (a fixed-order backward, for runs that repeat on CUDA) gives
    nn.Embedding's values bit for bit, and its gradient up to float32 rounding of the sums; through
    the whole model too, where the tied table also feeds the output head."""
    weight = torch.randn(VOCAB_SIZE, 24, requires_grad=True)
    ids = torch.tensor([[0, VOCAB_SIZE - 1, 3, 3, 3], [VOCAB_SIZE - 1, 0, 0, 7, 3]])
    upstream = torch.randn(2, 5, 24)
    ours, reference = embed_lookup(weight, ids), F.embedding(ids, weight)
    assert torch.equal(ours, reference)
    (grad,) = torch.autograd.grad((ours * upstream).sum(), weight)
    (expected,) = torch.autograd.grad((reference * upstream).sum(), weight)
    torch.testing.assert_close(grad, expected)
    assert torch.equal(grad[5], torch.zeros(24))  # a token that does not occur gets no gradient

    loss = model(tokens, tokens).loss
    (through_model,) = torch.autograd.grad(loss, model.embed.weight)
    monkeypatch.setattr(src.model, "embed_lookup", lambda w, t: F.embedding(t, w))  # nn.Embedding's own backward
    plain_loss = model(tokens, tokens).loss
    (plain,) = torch.autograd.grad(plain_loss, model.embed.weight)
    assert torch.equal(loss, plain_loss)
    torch.testing.assert_close(through_model, plain)
    assert through_model.abs().sum() > 0


def test_attention_projections_have_no_bias(model):
    for block in model.blocks:
        assert block.attn.qkv.bias is None and block.attn.out.bias is None
        assert block.ffn.up.bias is not None and block.ffn.down.bias is not None


# ---------------------------------------------------------------------------- forward and loss


def test_output_shapes(model, tokens):
    out = model(tokens)
    assert out.logits.shape == (B, T, VOCAB_SIZE)
    assert out.loss is None and out.activations == {}
    labels = torch.randint(0, VOCAB_SIZE, (B, T))
    loss = model(tokens, labels).loss
    assert loss.shape == () and torch.isfinite(loss)


def test_sequence_longer_than_max_seq_len_is_an_error(model):
    with pytest.raises(ValueError):
        model(torch.zeros(1, SMALL.max_seq_len + 1, dtype=torch.long))


def test_loss_counts_only_labels_not_ignored(model, tokens):
    labels = torch.randint(0, VOCAB_SIZE, (B, T))
    labels[:, :7] = IGNORE_INDEX
    labels[1, 12:] = IGNORE_INDEX
    out = model(tokens, labels)
    keep = labels != IGNORE_INDEX
    manual = F.cross_entropy(out.logits[keep], labels[keep], reduction="sum") / keep.sum()
    torch.testing.assert_close(out.loss, manual, rtol=1e-6, atol=1e-6)
    # what stands at an ignored position makes no difference
    other = torch.where(keep, labels, torch.full_like(labels, IGNORE_INDEX))
    assert torch.equal(model(tokens, other).loss, out.loss)


def test_loss_on_a_real_batch(model):
    batch = make_batch([make_record(e) for e in ("1+2", "(1+(2*3))", "3-10")], SMALL.max_seq_len)
    out = model(batch.inputs, batch.labels)
    keep = batch.labels != IGNORE_INDEX
    manual = F.cross_entropy(out.logits[keep], batch.labels[keep])
    torch.testing.assert_close(out.loss, manual, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pattern", [False, True])
def test_causal_masking(model, tokens, pattern):
    cache = {f"blocks.{l}.attn.hook_pattern" for l in range(SMALL.num_layers)} if pattern else ()
    t = 11
    changed = tokens.clone()
    changed[:, t] = (tokens[:, t] + 1) % VOCAB_SIZE
    a = model(tokens, hooks=Hooks(record=cache)).logits
    b = model(changed, hooks=Hooks(record=cache)).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-4)


def test_dropout_off_in_eval_on_in_training(model, tokens):
    assert torch.equal(model(tokens).logits, model(tokens).logits)
    model.train()
    torch.manual_seed(0)
    a = model(tokens).logits
    b = model(tokens).logits
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------- attention paths and cache


def test_sdpa_and_pattern_paths_agree(model, tokens):
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(SMALL.num_layers)}
    fused = model(tokens)
    explicit = model(tokens, hooks=Hooks(record=names))
    torch.testing.assert_close(explicit.logits, fused.logits, rtol=0, atol=1e-5)
    for name in names:
        p = explicit.activations[name]
        assert p.shape == (B, SMALL.num_heads, T, T)
        torch.testing.assert_close(p.sum(-1), torch.ones(B, SMALL.num_heads, T))
        assert (p.triu(diagonal=1) == 0).all()
        assert (p >= 0).all()


def test_cache_returns_every_activation_with_documented_shape(model, tokens):
    names = activation_names(SMALL, pattern=True)
    assert len(names) == 1 + 3 * SMALL.num_layers and len(set(names)) == len(names)
    out = model(tokens, hooks=Hooks(record=names))
    assert set(out.activations) == set(names)
    H, hd, D = SMALL.num_heads, SMALL.head_dim, SMALL.d_model
    for name, value in out.activations.items():
        if name.endswith("hook_z"):
            assert value.shape == (B, T, H, hd), name
        elif name.endswith("hook_pattern"):
            assert value.shape == (B, H, T, T), name
        else:
            assert value.shape == (B, T, D), name
    # the cache holds exactly what was asked for
    plain = activation_names(SMALL)
    assert not any("pattern" in n for n in plain)
    assert set(model(tokens, hooks=Hooks(record=plain)).activations) == set(plain)
    assert set(model(tokens, hooks=Hooks(record={"blocks.1.attn.hook_z"})).activations) == {"blocks.1.attn.hook_z"}


def test_cached_activations_are_the_real_ones(model, tokens):
    out = model(tokens, hooks=Hooks(record={"hook_embed", "blocks.0.attn.hook_z", "blocks.0.hook_resid_post"}))
    torch.testing.assert_close(out.activations["hook_embed"], model.embed(tokens))
    block = model.blocks[0]
    z = out.activations["blocks.0.attn.hook_z"]
    x = out.activations["hook_embed"] + block.attn.out(z.reshape(B, T, SMALL.d_model))
    x = x + block.ffn(block.ln2(x))
    torch.testing.assert_close(out.activations["blocks.0.hook_resid_post"], x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["blocks.9.attn.hook_z", "hook_resid_pre", "blocks.0.hook_z", ""])
def test_unknown_cache_name_raises_key_error(model, tokens, name):
    with pytest.raises(KeyError):
        model(tokens, hooks=Hooks(record={name}))


# ---------------------------------------------------------------------------- head ablation


def test_empty_ablation_is_bit_identical(model, tokens):
    base = model(tokens).logits
    assert torch.equal(model(tokens, hooks=Hooks(ablation=HeadAblation())).logits, base)
    assert torch.equal(model(tokens, hooks=Hooks(ablation=HeadAblation(means=torch.randn(2, 4, 8)))).logits, base)


def test_ablating_one_head_changes_logits_and_only_that_head(model, tokens):
    names = {"blocks.0.attn.hook_z"}
    base = model(tokens, hooks=Hooks(record=names))
    ablated = model(tokens, hooks=Hooks(record=names, ablation=HeadAblation({(0, 1)})))
    assert not torch.allclose(ablated.logits, base.logits, atol=1e-5)
    z, z0 = ablated.activations["blocks.0.attn.hook_z"], base.activations["blocks.0.attn.hook_z"]
    assert (z[:, :, 1] == 0).all()
    keep = [0, 2, 3]
    assert torch.equal(z[:, :, keep], z0[:, :, keep])


def test_ablation_of_a_later_layer_leaves_earlier_layers_alone(model, tokens):
    names = {"blocks.0.hook_resid_post"}
    base = model(tokens, hooks=Hooks(record=names))
    ablated = model(tokens, hooks=Hooks(record=names, ablation=HeadAblation({(1, 2)})))
    assert torch.equal(ablated.activations["blocks.0.hook_resid_post"], base.activations["blocks.0.hook_resid_post"])
    assert not torch.allclose(ablated.logits, base.logits, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_ablating_every_head_equals_removing_the_attention_branch(model, tokens, layer):
    ablated = model(tokens, hooks=Hooks(ablation=all_heads_of(layer))).logits
    # without a bias, a zero output projection removes the layer's attention branch exactly
    removed = copy.deepcopy(model)
    with torch.no_grad():
        removed.blocks[layer].attn.out.weight.zero_()
    torch.testing.assert_close(ablated, removed(tokens).logits, rtol=0, atol=1e-5)


def test_mean_ablation_with_zero_means_equals_zero_ablation(model, tokens):
    heads = {(0, 0), (1, 3)}
    zero = model(tokens, hooks=Hooks(ablation=HeadAblation(heads))).logits
    means = torch.zeros(SMALL.num_layers, SMALL.num_heads, SMALL.head_dim)
    assert torch.equal(model(tokens, hooks=Hooks(ablation=HeadAblation(heads, means))).logits, zero)
    per_position = torch.zeros(SMALL.num_layers, SMALL.num_heads, SMALL.max_seq_len, SMALL.head_dim)
    assert torch.equal(model(tokens, hooks=Hooks(ablation=HeadAblation(heads, per_position))).logits, zero)


def test_mean_ablation_places_the_mean_in_hook_z(model, tokens):
    names = {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}
    torch.manual_seed(2)
    means = torch.randn(SMALL.num_layers, SMALL.num_heads, SMALL.head_dim)
    base = model(tokens, hooks=Hooks(record=names))
    out = model(tokens, hooks=Hooks(record=names, ablation=HeadAblation({(0, 2), (1, 0)}, means)))
    z0, z1 = out.activations["blocks.0.attn.hook_z"], out.activations["blocks.1.attn.hook_z"]
    assert torch.equal(z0[:, :, 2], means[0, 2].expand(B, T, -1))
    assert torch.equal(z1[:, :, 0], means[1, 0].expand(B, T, -1))
    assert torch.equal(z0[:, :, [0, 1, 3]], base.activations["blocks.0.attn.hook_z"][:, :, [0, 1, 3]])
    assert not torch.allclose(out.logits, base.logits, atol=1e-5)


def test_per_position_mean_ablation(model, tokens):
    torch.manual_seed(3)
    means = torch.randn(SMALL.num_layers, SMALL.num_heads, SMALL.max_seq_len, SMALL.head_dim)
    out = model(tokens, hooks=Hooks(record={"blocks.1.attn.hook_z"}, ablation=HeadAblation({(1, 3)}, means)))
    z = out.activations["blocks.1.attn.hook_z"]
    assert torch.equal(z[:, :, 3], means[1, 3, :T].expand(B, T, -1))


def test_ablation_never_changes_weights(model, tokens):
    base = model(tokens).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    means = torch.randn(SMALL.num_layers, SMALL.num_heads, SMALL.head_dim)
    model(tokens, hooks=Hooks(ablation=all_heads_of(0)))
    model(tokens, hooks=Hooks(ablation=HeadAblation({(1, 1)}, means)))
    model.train()
    model(tokens, torch.randint(0, VOCAB_SIZE, (B, T)), hooks=Hooks(ablation=HeadAblation({(0, 3)}))).loss.backward()
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # nothing of an ablation lingers into the next call
    model.eval()
    assert torch.equal(model(tokens).logits, base)


def test_ablation_accepts_lists_of_pairs(model, tokens):
    a = model(tokens, hooks=Hooks(ablation=HeadAblation([[0, 1], (1, 2)]))).logits
    b = model(tokens, hooks=Hooks(ablation=HeadAblation({(0, 1), (1, 2)}))).logits
    assert torch.equal(a, b)


def test_ablating_a_head_of_a_missing_layer_is_an_error(model, tokens):
    with pytest.raises((ValueError, IndexError)):
        model(tokens, hooks=Hooks(ablation=HeadAblation({(SMALL.num_layers, 0)})))


def test_ablating_a_missing_head_is_an_error(model, tokens):
    with pytest.raises((ValueError, IndexError)):
        model(tokens, hooks=Hooks(ablation=HeadAblation({(0, SMALL.num_heads)})))


# ---------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_fp16_autocast_close_to_fp32_on_cuda(tokens):
    torch.manual_seed(0)
    model = CompactTransformer(SMALL).cuda().eval()
    tokens = tokens.cuda()
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(SMALL.num_layers)}
    with torch.no_grad():
        fp32 = model(tokens).logits
        with torch.amp.autocast("cuda", dtype=torch.float16):
            fused = model(tokens).logits
            explicit = model(tokens, hooks=Hooks(record=names)).logits
        fp32_explicit = model(tokens, hooks=Hooks(record=names)).logits
    assert fused.dtype == torch.float16
    rel = (fused.float() - fp32).norm() / fp32.norm()
    assert rel < 1e-2, f"fp16 relative error {rel:.2e}"
    rel_paths = (explicit.float() - fused.float()).norm() / fused.float().norm()
    assert rel_paths < 1e-2, f"SDPA vs pattern path under fp16: relative error {rel_paths:.2e}"
    torch.testing.assert_close(fp32_explicit, fp32, rtol=0, atol=1e-4)
