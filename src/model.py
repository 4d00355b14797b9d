"""CompactTransformer: the one model class of both scales (docs/DESIGN.md section 3).

A pre-LayerNorm decoder with rotary position embedding, bias-free attention projections, a GELU
feed-forward with biases, and an output head tied to the token embedding. For interpretability the
forward pass takes its interventions as one argument, `hooks` (a Hooks: the heads to ablate, the
activations to record and the activations to patch), in the spirit of TransformerLens:

    out = model(tokens, hooks=Hooks(record={"blocks.0.attn.hook_z"}, ablation=HeadAblation({(0, 2)})))
    out.activations["blocks.0.attn.hook_z"]       # [batch, seq, heads, head_dim]
    out = model(tokens, hooks=Hooks(patch={"blocks.1.hook_resid_post": Patch(values, mask)}))

The model keeps no cache of any kind (no key/value cache: every forward pass sees the whole
sequence); `activations` holds only what `hooks.record` asked for, from this one pass.

Activation sites (stable names):
    hook_embed                      residual stream after the embedding      [B, T, d_model]
    blocks.{l}.hook_resid_post      residual stream after block l            [B, T, d_model]
    blocks.{l}.attn.hook_z          each head's output before out-projection [B, T, H, head_dim]
    blocks.{l}.attn.hook_pattern    attention probabilities (analysis path)  [B, H, T, T]

Training uses the fused `scaled_dot_product_attention`; asking for a pattern switches that layer
to an explicit softmax that computes the same function. Training may also pass a packed batch
(`positions` and `segments`: several sequences per row, each attending only to itself, with its own
rotary positions; src/data/packing.py); the analysis always runs on padded rows.

Patching (activation patching, src/analysis/patching.py): `Hooks.patch` maps a site's name to a Patch(values,
mask); where the activation is produced, the elements under `mask` are replaced by `values`
(`torch.where(mask, values, activation)`), so every later layer sees the patched value. `values` has
the activation's exact shape, `mask` is boolean with as many dimensions, broadcast to it (e.g.
[B, T, 1] for a residual site, [B, T, H, 1] to patch some heads of hook_z); mask None replaces the
whole activation. On hook_z a patch is applied after the head ablation; a site both patched and
recorded is recorded as patched (what later layers see). Attention patterns cannot be patched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.config import ModelConfig, model_config_from_dict
from src.errors import UserError
from src.tokenizer import IGNORE_INDEX


@dataclass
class HeadAblation:
    """Heads to ablate in one forward pass, as (layer, head) pairs.

    With `means` None each head's output is set to zero; otherwise to `means[layer, head]`, a tensor
    of shape [num_layers, num_heads, head_dim] (one mean vector per head) or
    [num_layers, num_heads, seq, head_dim] (a mean per position). Weights are never touched.
    """

    heads: frozenset = field(default_factory=frozenset)
    means: torch.Tensor | None = None

    def __post_init__(self):
        self.heads = frozenset((int(layer), int(head)) for layer, head in self.heads)

    def in_layer(self, layer: int) -> list[int]:
        return sorted(h for l, h in self.heads if l == layer)


class Patch(NamedTuple):
    """A replacement for one activation site: `values` (the activation's shape) where `mask` is True.

    `mask`: boolean, as many dimensions as the activation, broadcast to its shape; None replaces
    every element."""

    values: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class Hooks:
    """Everything a forward pass does besides computing the logits, as one argument.

    `record`: activation names (see activation_names) whose values the pass returns in
    ModelOutput.activations; `ablation`: the heads whose outputs are replaced (HeadAblation), or None;
    `patch`: activation name -> Patch (or a (values, mask) pair), applied where the activation is produced.
    """

    record: frozenset = frozenset()
    ablation: HeadAblation | None = None
    patch: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.record, str):  # one name, not its characters
            raise TypeError("Hooks.record takes a collection of activation names, not one string")
        object.__setattr__(self, "record", frozenset(self.record))
        if not isinstance(self.patch, dict):
            raise TypeError("Hooks.patch takes a dict: activation name -> Patch(values, mask)")
        object.__setattr__(self, "patch", {name: Patch(*p) for name, p in self.patch.items()})


def patch_activation(x: torch.Tensor, name: str, patch: dict) -> torch.Tensor:
    """x with the Patch that `patch` holds for `name` applied (x itself when it holds none)."""
    if name not in patch:
        return x
    values, mask = patch[name]
    if tuple(values.shape) != tuple(x.shape):
        raise ValueError(f"patch for {name}: values have shape {tuple(values.shape)}; the activation has {tuple(x.shape)}")
    values = values.to(device=x.device, dtype=x.dtype)
    if mask is None:
        return values
    if mask.dtype != torch.bool or mask.dim() != x.dim():
        raise ValueError(f"patch for {name}: the mask must be boolean with {x.dim()} dimensions, got {mask.dtype} "
                         f"with {mask.dim()}")
    if any(m not in (1, n) for m, n in zip(mask.shape, x.shape)):  # (torch.broadcast_shapes costs ~2 ms a call)
        raise ValueError(f"patch for {name}: mask of shape {tuple(mask.shape)} does not broadcast to the "
                         f"activation's {tuple(x.shape)}")
    return torch.where(mask.to(x.device), values, x)


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    activations: dict = field(default_factory=dict)  # name -> tensor, for the names hooks.record asked for


def activation_names(cfg: ModelConfig, pattern: bool = False) -> list[str]:
    """Every activation site of a model with config `cfg`, in forward order."""
    names = ["hook_embed"]
    for layer in range(cfg.num_layers):
        names.append(f"blocks.{layer}.attn.hook_z")
        if pattern:
            names.append(f"blocks.{layer}.attn.hook_pattern")
        names.append(f"blocks.{layer}.hook_resid_post")
    return names


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + d/2]) of x [B, H, T, d] by position-dependent angles.

    `cos`, `sin`: the tables by position ([max_seq_len, d/2]; the first T rows are used), or, for a
    packed batch, each token's own angles already looked up ([B, 1, T, d/2])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if cos.dim() == 2:
        cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, hooks: Hooks | None, recorded: dict, mask: torch.Tensor | None = None):
        """`hooks` None is the plain (training) path; `recorded` receives the activations hooks.record names;
        `mask` [B, 1, T, T] (True: may attend) replaces the causal mask, for a packed batch."""
        B, T, C = x.shape
        want = hooks.record if hooks is not None else frozenset()
        ablation = hooks.ablation if hooks is not None else None
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        p_drop = self.dropout if self.training else 0.0
        # self.layer is read only when a hook or an ablation asks for it: the plain training
        # forward is then the same function in every layer, so one compiled block serves all
        pattern_name = f"blocks.{self.layer}.attn.hook_pattern" if want else None
        if pattern_name in want:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            recorded[pattern_name] = pattern
            z = F.dropout(pattern, p_drop, self.training) @ v
        elif mask is None:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        z = z.transpose(1, 2)  # [B, T, H, head_dim]
        if ablation is not None and ablation.in_layer(self.layer):
            z = ablate_heads(z, self.layer, ablation)
        if hooks is not None and hooks.patch:
            z = patch_activation(z, f"blocks.{self.layer}.attn.hook_z", hooks.patch)
        if want and f"blocks.{self.layer}.attn.hook_z" in want:
            recorded[f"blocks.{self.layer}.attn.hook_z"] = z
        return self.resid_dropout(self.out(z.reshape(B, T, C)))


def ablate_heads(z: torch.Tensor, layer: int, ablation: HeadAblation) -> torch.Tensor:
    """z [B, T, H, d] with the ablated heads of `layer` set to zero or to their mean."""
    heads = ablation.in_layer(layer)
    if not heads:  # nothing of this layer is ablated (and no host-to-device copy of an empty index)
        return z
    drop = torch.zeros(z.shape[2], dtype=torch.bool, device=z.device)
    drop[heads] = True
    drop = drop.view(1, 1, -1, 1)
    if ablation.means is None:
        return z.masked_fill(drop, 0.0)
    means = ablation.means[layer].to(device=z.device, dtype=z.dtype)  # [H, d] or [H, T_max, d]
    if means.dim() == 3:
        means = means[:, : z.shape[1]].transpose(0, 1)  # [T, H, d]
    return torch.where(drop, means.expand_as(z), z)


def packed_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """The attention mask of a packed batch, [B, 1, T, T] boolean (True: query i may attend to key j):
    causal, and only within the token's own sequence (`segments` [B, T] names each token's). Every
    token may attend to itself, so no row of the softmax is empty."""
    T = segments.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return ((segments.unsqueeze(2) == segments.unsqueeze(1)) & causal).unsqueeze(1)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, hooks: Hooks | None = None, recorded: dict | None = None,
                mask: torch.Tensor | None = None):
        x = x + self.attn(self.ln1(x), cos, sin, hooks, recorded, mask)
        return x + self.ffn(self.ln2(x))


class _EmbeddingLookup(torch.autograd.Function):
    """nn.Embedding's lookup, with a backward that adds up in a fixed order.

    On CUDA, nn.Embedding's backward adds each position's gradient into its token's row with atomic
    additions, whose order varies from run to run; at batch 256 that alone makes two trainings of one
    seed drift apart (by up to 0.18 in a weight after 500 steps; BENCHMARKS.md, "Two trainings of one
    seed"). Here the forward is the same gather (the same values, bit for bit), and the backward is one
    matrix product, one-hot rows [vocab, positions] times the gradients [positions, d_model]: with a
    vocabulary of 35 tokens that is small, and cuBLAS gives the same sums every run.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(tokens)
        ctx.num_embeddings = weight.shape[0]
        return F.embedding(tokens, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (tokens,) = ctx.saved_tensors
        ids = torch.arange(ctx.num_embeddings, device=tokens.device)
        onehot = (ids.unsqueeze(1) == tokens.reshape(1, -1)).to(grad.dtype)
        with torch.autocast(grad.device.type, enabled=False):
            return onehot @ grad.reshape(-1, grad.shape[-1]), None


def embed_lookup(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The rows of `weight` for `tokens` ([..., d_model]), differentiable in `weight` in a fixed order."""
    return _EmbeddingLookup.apply(weight, tokens)


class CompactTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        cos, sin = rotary_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_base)
        # derived from the config, so kept out of the state dict and the parameter count
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by depth
            for proj in (block.attn.out.weight, block.ffn.down.weight):
                nn.init.normal_(proj, mean=0.0, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def check_ablation(self, ablation: HeadAblation) -> None:
        """ValueError for a head the model does not have or means of the wrong shape: a typo must
        not read as 'no effect'."""
        L, H, d = self.cfg.num_layers, self.cfg.num_heads, self.cfg.head_dim
        for layer, head in ablation.heads:
            if not (0 <= layer < L and 0 <= head < H):
                raise ValueError(f"cannot ablate head L{layer}.H{head}: the model has {L} layers of {H} heads")
        if ablation.means is not None:
            shape = tuple(ablation.means.shape)
            if shape != (L, H, d) and not (len(shape) == 4 and shape[:2] == (L, H) and shape[3] == d):
                raise ValueError(f"ablation means have shape {shape}; expected ({L}, {H}, {d}) or ({L}, {H}, seq, {d})")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, directory) -> CompactTransformer:
        """The model of an export directory (`python -m src.export`: DIR/config.json and
        DIR/model.safetensors) in eval mode on the CPU, its weights exactly those exported.
        `load_pretrained` also returns the directory's config.json."""
        return load_pretrained(directory)[0]

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, *,
                hooks: Hooks | None = None, positions: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> ModelOutput:
        """Logits [B, T, vocab]; mean cross-entropy over labels != -100 when labels are given; and,
        with `hooks`, its head ablation and patches applied and the activations it names recorded (see
        the module docstring).

        `positions` and `segments` (both or neither, [B, T] integers) make `tokens` a packed batch
        (src/data/packing.py): each row holds several sequences, `segments` names the sequence of each
        token and `positions` its position within it (each below max_seq_len; a row may be wider).
        A token then attends, causally, only to the tokens of its own sequence, and its rotary angle
        is that of its position: each sequence's outputs are those it has alone. A training path:
        not with `hooks`."""
        B, T = tokens.shape
        packed = segments is not None
        if packed != (positions is not None):
            raise ValueError("a packed batch needs both positions and segments")
        if packed and hooks is not None:
            raise ValueError("hooks work on unpacked batches only; run the analysis on padded rows")
        if T > self.cfg.max_seq_len and not packed:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.cfg.max_seq_len}")
        want = frozenset()
        if hooks is not None:
            if hooks.ablation is not None:
                self.check_ablation(hooks.ablation)
            want = hooks.record
            unknown = want - set(activation_names(self.cfg, pattern=True))
            if unknown:
                raise KeyError(f"unknown activation name {sorted(unknown)[0]!r}; see activation_names()")
            unknown = set(hooks.patch) - set(activation_names(self.cfg))
            if unknown:
                name = sorted(unknown)[0]
                why = "attention patterns cannot be patched" if name.endswith("hook_pattern") else "see activation_names()"
                raise KeyError(f"cannot patch activation {name!r}: {why}")
            if not want and hooks.ablation is None and not hooks.patch:
                hooks = None  # nothing to do: the plain path
        patch = hooks.patch if hooks is not None else None
        recorded: dict = {}
        x = self.embed_dropout(embed_lookup(self.embed.weight, tokens))
        if patch:
            x = patch_activation(x, "hook_embed", patch)
        if "hook_embed" in want:
            recorded["hook_embed"] = x
        cos, sin, mask = self.rope_cos, self.rope_sin, None
        if packed:
            mask = packed_attention_mask(segments)
            cos, sin = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # [B, 1, T, head_dim / 2]
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, hooks, recorded, mask)
            if patch:
                x = patch_activation(x, f"blocks.{layer}.hook_resid_post", patch)
            if f"blocks.{layer}.hook_resid_post" in want:
                recorded[f"blocks.{layer}.hook_resid_post"] = x
        logits = F.linear(self.ln_f(x), self.embed.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return ModelOutput(logits, loss, recorded)


# ---------------------------------------------------------------------------- export directories

PRETRAINED_CONFIG, PRETRAINED_WEIGHTS = "config.json", "model.safetensors"
EXPORT_SCHEMA = "export/1"  # config.json of a CompactTransformer export (src/export.py, docs/INTEROP.md)


def is_export_dir(directory) -> bool:
    """Whether `directory` holds an export's two files (config.json and model.safetensors)."""
    directory = Path(directory)
    return (directory / PRETRAINED_CONFIG).is_file() and (directory / PRETRAINED_WEIGHTS).is_file()


def load_pretrained(directory) -> tuple[CompactTransformer, dict]:
    """(model in eval mode on the CPU, the directory's config.json) of an export directory.

    Everything is checked before it is used: the schema, the model config (as a config file's model
    section), and every tensor of model.safetensors against the model that config describes, in the
    model's order (names, shapes, dtypes, finite values), so a config.json that does not belong to its
    weights is an error naming the first tensor that differs."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / PRETRAINED_CONFIG, directory / PRETRAINED_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"{path}: not found; an export directory holds {PRETRAINED_CONFIG} and "
                            f"{PRETRAINED_WEIGHTS}, written by python -m src.export")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{config_path}: not readable JSON ({str(err)[:120]})") from None
    schema = config.get("schema") if isinstance(config, dict) else None
    if schema != EXPORT_SCHEMA:
        hint = (" (a TransformerLens export: load it with HookedTransformer, docs/INTEROP.md)"
                if isinstance(schema, str) and schema.startswith("transformer_lens_export/") else "")
        raise UserError(f"{config_path}: schema {schema!r}, expected {EXPORT_SCHEMA!r}{hint}; write the "
                        "directory with python -m src.export")
    cfg = model_config_from_dict(config.get("model_config"), f"{config_path} (model_config)")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights_path}: not a readable safetensors file ({str(err)[:120]})") from None
    model = CompactTransformer(cfg)
    expected = model.state_dict()
    record = config.get("weights")
    stored = record.get("dtype", "float32") if isinstance(record, dict) else "float32"
    if stored not in ("float32", "float16"):
        raise UserError(f"{config_path}: weights.dtype {str(stored)[:40]!r}; expected 'float32' or 'float16'")
    for name, want in expected.items():
        got = weights.get(name)
        where = f"{weights_path}: tensor {name}"
        if got is None:
            raise UserError(f"{where} is missing, but {config_path}'s model_config needs it (shape "
                            f"{list(want.shape)}): the config does not match its weights")
        if got.shape != want.shape:
            raise UserError(f"{where} has shape {list(got.shape)}; {config_path}'s model_config gives "
                            f"{list(want.shape)}: the config does not match its weights")
        if stored == "float16" and want.is_floating_point():  # src.export --dtype float16: back to float32, exactly
            if got.dtype != torch.float16:
                raise UserError(f"{where} has dtype {got.dtype}, but {config_path} says the weights are float16")
            got = weights[name] = got.float()
        if got.dtype != want.dtype:
            raise UserError(f"{where} has dtype {got.dtype}, expected {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise UserError(f"{where} holds non-finite values (NaN or inf); export a checkpoint with finite weights")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise UserError(f"{weights_path}: tensor {extra[0]} is not part of the model {config_path}'s model_config "
                        "describes: the config does not match its weights")
    model.load_state_dict(weights)
    return model.eval(), config
