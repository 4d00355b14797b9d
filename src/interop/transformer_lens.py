"""CompactTransformer -> TransformerLens `HookedTransformer`, for transformer-lens >= 3.9, < 4.

    from src.interop.transformer_lens import to_hooked_transformer
    tl_model = to_hooked_transformer(model)          # the same function, in TransformerLens's layout
    logits, cache = tl_model.run_with_cache(tokens)  # cache["blocks.0.attn.hook_z"], ...

TransformerLens 4 removed HookedTransformer, and the tools built on it (SAE training, circuit
finding) stay on 3.x; 3.9 is the last release with it. Every convention of src/model.py is mapped
explicitly here rather than left to TransformerLens's defaults (tests/test_transformer_lens.py checks
each one, and each fails when the convention is flipped):

    ours (src/model.py)                                  HookedTransformerConfig / weights
    rotary on q and k, pairs (x[i], x[i + d/2]) (NeoX)   positional_embedding_type="rotary",
        over the whole head, base cfg.rope_base              rotary_adjacent_pairs=False, rotary_dim=d_head,
                                                             rotary_base=rope_base; no positional embedding
    nn.LayerNorm (eps 1e-5, weight and bias)             normalization_type="LN", eps; ln*.w/.b = weight/bias
    F.gelu, the exact (erf) GELU                         act_fn="gelu" (not "gelu_new", the tanh form)
    q/k/v and output projections without bias           b_Q = b_K = b_V = 0, b_O = 0
    head h = features h*d_head:(h+1)*d_head of qkv/out   W_Q[h] = q rows of head h, transposed; W_O[h] = out
                                                             columns of head h, transposed
    output head tied to the embedding, no bias           W_U = W_E.T (a copy), b_U = 0
    causal scaled_dot_product_attention, 1/sqrt(d_head) attention_dir="causal", attn_scale=sqrt(d_head)
    dropout in training only                             none (TransformerLens has no dropout): compare in eval
    35 tokens, ids of src/tokenizer.py                   d_vocab = d_vocab_out = 35, no tokenizer: pass ids

The activation sites of src/model.py carry TransformerLens's names, so `hook_embed`,
`blocks.{l}.hook_resid_post`, `blocks.{l}.attn.hook_z` and `blocks.{l}.attn.hook_pattern` mean the same
in both (blocks.{l}.hook_resid_pre is TransformerLens's name for the residual stream entering block l:
hook_embed for l = 0, blocks.{l-1}.hook_resid_post after).
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import warnings

import torch

from src.errors import UserError
from src.model import CompactTransformer
from src.tokenizer import VOCAB

SUPPORTED = ">=3.9,<4"
INSTALL = f"pip install -r requirements-interop.txt  (transformer-lens{SUPPORTED})"
TL_EXPORT_SCHEMA = "transformer_lens_export/1"  # config.json of `python -m src.export --to transformer-lens`


def require_transformer_lens() -> str:
    """The installed transformer-lens version; a one-line UserError when it is missing or outside SUPPORTED."""
    try:
        version = importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"TransformerLens is not installed; install it with: {INSTALL}") from None
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found or not (3, 9) <= (int(found.group(1)), int(found.group(2))) < (4, 0):
        raise UserError(f"transformer-lens {version} is installed; this bridge supports transformer-lens{SUPPORTED} "
                        f"(HookedTransformer was removed in 4.0): {INSTALL}")
    return version


def layer_norm_eps(model: CompactTransformer) -> float:
    """The one epsilon of every LayerNorm of `model` (TransformerLens has one for all); a ValueError for a
    LayerNorm it cannot represent (no affine parameters, another epsilon)."""
    norms = [m for block in model.blocks for m in (block.ln1, block.ln2)] + [model.ln_f]
    eps = {m.eps for m in norms}
    if len(eps) != 1 or not all(m.elementwise_affine and m.bias is not None for m in norms):
        raise ValueError("every LayerNorm must have weight, bias and one epsilon to map onto normalization_type='LN'")
    return eps.pop()


def hooked_config(model: CompactTransformer, device="cpu") -> dict:
    """The keyword arguments of HookedTransformerConfig for `model` (JSON-serialisable: no dtype, which
    is float32, the default)."""
    cfg = model.cfg
    return {
        "model_name": "CompactTransformer",
        "d_model": cfg.d_model, "d_head": cfg.head_dim, "n_layers": cfg.num_layers, "n_heads": cfg.num_heads,
        "d_mlp": cfg.d_ff, "d_vocab": cfg.vocab_size, "d_vocab_out": cfg.vocab_size, "n_ctx": cfg.max_seq_len,
        "act_fn": "gelu",  # F.gelu with approximate="none" (FeedForward.forward)
        "normalization_type": "LN", "eps": layer_norm_eps(model),
        "positional_embedding_type": "rotary", "rotary_dim": cfg.head_dim, "rotary_base": cfg.rope_base,
        "rotary_adjacent_pairs": False,  # apply_rotary pairs x[i] with x[i + d/2]
        "attention_dir": "causal", "use_attn_scale": True, "attn_scale": math.sqrt(cfg.head_dim),
        "default_prepend_bos": False,  # token ids are passed in, <BOS> included
        "init_weights": False,  # every weight is set from the model
        "device": str(device),
    }


def hooked_state_dict(model: CompactTransformer) -> dict[str, torch.Tensor]:
    """The weights of `model` under TransformerLens's names and layouts (the parameters only; the
    rotary tables and masks are the buffers HookedTransformer builds from its config)."""
    cfg = model.cfg
    d, H, hd = cfg.d_model, cfg.num_heads, cfg.head_dim
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {"embed.W_E": sd["embed.weight"]}
    for l in range(cfg.num_layers):
        p = f"blocks.{l}."
        qkv = sd[p + "attn.qkv.weight"].view(3, H, hd, d)  # [q|k|v] rows, head h at rows h*hd:(h+1)*hd
        for i, name in enumerate("QKV"):
            out[p + f"attn.W_{name}"] = qkv[i].transpose(1, 2)  # [H, d_model, d_head]
            out[p + f"attn.b_{name}"] = torch.zeros(H, hd)
        out[p + "attn.W_O"] = sd[p + "attn.out.weight"].t().reshape(H, hd, d)  # input columns of head h
        out[p + "attn.b_O"] = torch.zeros(d)
        for ln in ("ln1", "ln2"):
            out[p + f"{ln}.w"], out[p + f"{ln}.b"] = sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"]
        out[p + "mlp.W_in"], out[p + "mlp.b_in"] = sd[p + "ffn.up.weight"].t(), sd[p + "ffn.up.bias"]
        out[p + "mlp.W_out"], out[p + "mlp.b_out"] = sd[p + "ffn.down.weight"].t(), sd[p + "ffn.down.bias"]
    out["ln_final.w"], out["ln_final.b"] = sd["ln_f.weight"], sd["ln_f.bias"]
    out["unembed.W_U"] = sd["embed.weight"].t()  # tied: the embedding, transposed
    out["unembed.b_U"] = torch.zeros(cfg.vocab_size)
    return {k: v.contiguous().clone() for k, v in out.items()}


def build_hooked_transformer(config: dict, state_dict: dict | None = None):
    """HookedTransformer(HookedTransformerConfig(**config)), in eval mode, with `state_dict`'s weights
    (strict when it holds the buffers too, as an export does; the parameters alone otherwise)."""
    require_transformer_lens()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():  # 3.x announces 4.0's removal of HookedTransformer on every build
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        tl_model = HookedTransformer(HookedTransformerConfig(**config))
    if state_dict is not None:
        own = tl_model.state_dict()
        unknown = sorted(set(state_dict) - set(own))
        absent = [k for k, _ in tl_model.named_parameters() if k not in state_dict]
        if unknown or absent:
            what = f"holds {unknown[0]}, which HookedTransformer does not have" if unknown else f"lacks parameter {absent[0]}"
            raise ValueError(f"state dict {what}")
        # an export holds the buffers too (rotary tables, masks) and loads strictly; the parameters alone leave
        # the buffers HookedTransformer built from its config
        tl_model.load_state_dict(state_dict, strict=set(state_dict) == set(own))
    return tl_model.eval()


def to_hooked_transformer(model: CompactTransformer, device=None):
    """A HookedTransformer (eval mode, float32) that computes what `model` computes in eval mode."""
    if not isinstance(model, CompactTransformer):
        raise TypeError(f"to_hooked_transformer takes a CompactTransformer, not {type(model).__name__}")
    device = next(model.parameters()).device if device is None else torch.device(device)
    tl_model = build_hooked_transformer(hooked_config(model, device), hooked_state_dict(model))
    return tl_model.to(device, print_details=False)


def vocabulary() -> list[str]:
    """The token of each id (src/tokenizer.py), as an export's config.json lists it."""
    return list(VOCAB)
