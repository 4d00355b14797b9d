# %% [markdown]
# # Quickstart: a trained CompactTransformer, its accuracy, TransformerLens, one intervention
#
# Runs as a script (`python examples/quickstart.py`) and opens as a notebook (percent cells: VS Code,
# Jupytext). It reads two environment variables:
#
# - `QUICKSTART_RUN`: a run directory written by `python -m src.train`, or an export directory written
#   by `python -m src.export` (default `runs/pilot`, which the README's pilot command trains);
# - `QUICKSTART_OUT`: where the figure and the TransformerLens export go (default `runs/quickstart`).
#
# TransformerLens comes from `pip install -r requirements-interop.txt`.

# %%
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs without a display
import matplotlib.pyplot as plt
import torch

REPO = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd()
sys.path.insert(0, str(REPO))

from src import export
from src.data import make_batch, make_record
from src.metrics import greedy_decode, per_example_scores, summarize
from src.model import Hooks, Patch
from src.rundir.checkpoint import load_model
from src.tokenizer import VOCAB, decode, prompt_ids

RUN = Path(os.environ.get("QUICKSTART_RUN", REPO / "runs" / "pilot"))
OUT = Path(os.environ.get("QUICKSTART_OUT", REPO / "runs" / "quickstart"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Load the model
# `load_model` reads a run's `checkpoint_best.pt` or an export's `model.safetensors`; for an export,
# `CompactTransformer.from_pretrained(DIR)` does the same without the run's config.

# %%
if not RUN.is_dir():
    raise SystemExit(f"{RUN}: no such run; train one (README: the pilot command) or set QUICKSTART_RUN")
model, ckpt = load_model(RUN)
answer_format = ckpt["config"]["data"]["answer_format"]
print(f"{RUN}: {model.num_parameters():,} parameters, epoch {ckpt['epoch']}, answers {answer_format}")

# %% [markdown]
# ## exact_match on a few expressions
# exact_match is the task's accuracy: greedy decoding from `<BOS>expr = ` must give exactly the
# answer, then `<EOS>` (src/metrics.py).

# %%
expressions = ["12+7", "(3+4)*5", "8*(9-2)", "41-(6+7)", "2*3+4", "(15-6)*(2+1)"]
batch = make_batch([make_record(e) for e in expressions], model.cfg.max_seq_len, answer_format)
scores = per_example_scores(model, batch)
generated = greedy_decode(model, batch)
for i, expr in enumerate(expressions):
    written = decode(generated[i, int(batch.prompt_len[i]):])
    print(f"  {expr} = {batch.results[i]:<6} model: {written:<8} {'exact' if scores['exact_match'][i] else 'wrong'}")
summary = summarize(scores)
low, high = summary["exact_match_ci95"]
print(f"exact_match {summary['exact_match']:.3f} (95% interval {low:.3f}-{high:.3f}) on {len(expressions)} expressions")

# %% [markdown]
# ## TransformerLens: export, cache a run, plot one head's attention
# `python -m src.export --to transformer-lens` writes what `HookedTransformer` loads (docs/INTEROP.md);
# `to_hooked_transformer` gives the same model in memory. The activation names are the same in both.

# %%
from src.interop.transformer_lens import to_hooked_transformer

export.main(["--run", str(RUN), "--to", "transformer-lens", "--out", str(OUT / "transformer-lens"), "--force"])
tl_model = to_hooked_transformer(model)

bracketed = "(3+4)*5"
tokens = torch.tensor([prompt_ids(bracketed)])
with torch.no_grad():
    logits, cache = tl_model.run_with_cache(tokens)
layer, head = 0, 1
pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head]  # [query position, key position]
labels = [{"<BOS>": "BOS", " ": "sp"}.get(VOCAB[t], VOCAB[t]) for t in tokens[0].tolist()]
fig, ax = plt.subplots(figsize=(4.5, 4))
ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
ax.set_xticks(range(len(labels)), labels)
ax.set_yticks(range(len(labels)), labels)
ax.set_xlabel("attends to (key)")
ax.set_ylabel("query")
ax.set_title(f"L{layer}-H{head} attention on {bracketed} =")
fig.tight_layout()
figure = OUT / f"attention_L{layer}H{head}.png"
fig.savefig(figure, dpi=120)
plt.close(fig)
print(f"wrote {figure}")

# %% [markdown]
# ## One interchange intervention
# The causal variable: V, the value of the bracketed sub-expression. Base `(3+4)*5` (V = 7) and source
# `(6+2)*5` (V = 8) share one template, so every position holds a token of the same kind in both. The
# source's residual stream after a layer, at the `)` that closes the bracket, is written into the base's
# run, and the answer is decoded greedily with the patch held. If that position carries V, the answer
# becomes 8 * 5 = 40 (the causal model's prediction) instead of 35.
#
# This cell does the intervention by hand, with a Patch of the residual stream at one aligned position;
# the study's measure over many aligned pairs is interchange intervention accuracy (docs/DESIGN.md
# section 9). The last layer is left out: its residual at a prompt position cannot reach the answer.

# %%
base, source = "(3+4)*5", "(6+2)*5"
width = model.cfg.max_seq_len
position = 1 + base.index(")")  # after <BOS>


def padded(expr):
    ids = prompt_ids(expr)
    return torch.tensor([ids + [0] * (width - len(ids))]), len(ids)


@torch.no_grad()
def decode_with(patch, expr=base, steps=6):
    """Greedy answer of `expr` with `patch` (site -> Patch) held at every step."""
    tokens, frontier = padded(expr)
    for _ in range(steps):
        next_id = model(tokens, hooks=Hooks(patch=patch)).logits[0, frontier - 1].argmax()
        if frontier >= width or next_id == 2:  # <EOS>
            break
        tokens[0, frontier] = next_id
        frontier += 1
    return decode(tokens[0, len(prompt_ids(expr)):frontier])


source_tokens, _ = padded(source)
sites = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.num_layers - 1)]
with torch.no_grad():
    recorded = model(source_tokens, hooks=Hooks(record=sites)).activations
mask = torch.zeros(1, width, 1, dtype=torch.bool)
mask[0, position] = True
print(f"interchange intervention on V at ')' (position {position}): base {base} -> {decode_with({})!r} unpatched; "
      f"the causal model predicts '40'")
for site in sites:
    patch = {site: Patch(recorded[site], mask)}
    print(f"  source {source}, {site}: {decode_with(patch)!r}")
    # the same patch through a TransformerLens hook gives the same logits
    base_tokens, _ = padded(base)

    def write_source(resid, hook, site=site):
        return torch.where(mask, recorded[site], resid)

    with torch.no_grad():
        ours = model(base_tokens, hooks=Hooks(patch=patch)).logits
        theirs = tl_model.run_with_hooks(base_tokens, fwd_hooks=[(site, write_source)])
    assert (ours - theirs).abs().max() < 1e-4, "the TransformerLens hook disagrees with Hooks(patch=...)"
