"""Attention roles: what each head attends to, so heads can be matched across seeds and scales.

    python -m src.analysis.roles --run runs/pilot [--splits test_paren_matched test_paren] [--device cuda]

Heads are interchangeable under permutation, so "L1-H2" in one seed says nothing about "L1-H2" in
another. A head is described instead by where its attention goes. For each role below, a query
position where the role applies has one key position; a head's share for the role is its attention
probability from the query to that key (`blocks.L.attn.hook_pattern`), averaged over every such
query of a split (real tokens only, never padding). Input positions are <BOS>, the expression's
characters, " = " and the answer (the model's inputs, tokens[:-1]).

    matching_paren   query: an expression token strictly inside a bracket pair, or a ')';
                     key: the innermost '(' still open just before the query (a ')' -> its own '(')
    previous_token   query: every position t >= 1; key: t - 1
    operator         query: an expression token with an operator (+ - *) of the expression
                     strictly before it; key: the nearest such operator
    equals           query: every position after the '=' token (the space, the answer digits);
                     key: the '=' position

Beside each share: `uniform`, the share a uniform causal attention would give (the mean of
1/(t+1) over the same queries), the chance level to read the share against; `n_queries`; and
`share_distinct` / `n_distinct`, the share over only those queries whose key is not t - 1. The
key of the token right after a '(' or an operator is also its previous token, so a previous-token
head earns part of the matching_paren and operator shares (on test_flat about 0.41 of the operator
share); `share_distinct` shows what is left once that overlap is removed.

A head's `roles` are those whose share, over the bracketed splits combined (pooled queries of
`--splits`, default test_paren_matched and test_paren), is at least ROLE_THRESHOLD; its
`primary_role` is the one of them with the largest share, or "none". test_flat (no brackets:
matching_paren does not apply, share None and n_queries 0) is scored beside them, not pooled.

Output: RUN/roles.json (schema roles/1; RUN/roles.limitN.json under --limit N; or --out PATH) and
roles.png beside it (heads x roles, combined shares). `match_roles` and `role_table_markdown` compare several runs' roles.json by role,
never by head index; ablation effects are joined to heads elsewhere, by head label.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from src.rundir.atomic import write_result
from src.cli import ArgumentParser, check_output_file, distinct, path_arg
from src.data import OPERATORS
from src.device import autocast
from src.errors import UserError, run_main
from src.analysis.common import Run, RunData, add_run_arguments, analysis_main, head_label, relative_layer
from src.rundir.results import SCHEMAS
from src.model import Hooks
from src.plotting import png_bytes, pyplot
from src.text import plain_text, shown
from src.tokenizer import BOS_ID, PAD_ID, VOCAB

SCHEMA = SCHEMAS["roles"]
ROLES = ("matching_paren", "previous_token", "operator", "equals")
ROLE_DEFINITIONS = {
    "matching_paren": "query: an expression token strictly inside a bracket pair, or a ')'; key: the innermost '(' "
                      "still open just before the query (for a ')', its matching '('; for a nested '(', the "
                      "enclosing one)",
    "previous_token": "query: every real position t >= 1; key: t - 1",
    "operator": "query: an expression token with an operator (+ - *) of the expression strictly before it; key: "
                "the nearest such operator",
    "equals": "query: every real position after the '=' token (the space after it and the answer); key: the '=' "
              "position",
}
# A head holds a role when on average 40% of its attention goes to the role's key: several times the
# uniform baselines (about 0.05-0.25 on these 10-30 token sequences), and close enough to half that
# the head's attention is dominated by that one position rather than spread over the context.
ROLE_THRESHOLD = 0.4
DEFAULT_SPLITS = ("test_paren_matched", "test_paren")
REFERENCE_SPLITS = ("test_flat",)  # scored and reported beside the bracketed splits, never pooled with them
CHUNK = 512  # examples per forward pass: every layer's [chunk, H, T, T] pattern is held at once

_ID = {tok: i for i, tok in enumerate(VOCAB)}
OPEN_ID, CLOSE_ID, EQUALS_ID = _ID["("], _ID[")"], _ID["="]
OPERATOR_IDS = {_ID[ch] for ch in OPERATORS}
EXPRESSION_IDS = {_ID[ch] for ch in "0123456789()" + OPERATORS}


# ---------------------------------------------------------------------------- role keys


def role_keys(ids) -> dict[str, list[int]]:
    """For one input sequence (<BOS>expr = answer, maybe padded), the key position of each role at
    each position, -1 where the role does not apply."""
    ids = [int(i) for i in ids]
    n_real = ids.index(PAD_ID) if PAD_ID in ids else len(ids)
    keys = {role: [-1] * len(ids) for role in ROLES}
    start = 1 if ids and ids[0] == BOS_ID else 0
    end = start  # the expression is ids[start:end]: it stops at the space before '='
    while end < n_real and ids[end] in EXPRESSION_IDS:
        end += 1
    open_parens, last_operator = [], -1
    for t in range(start, end):
        if open_parens:  # the state just before t: a ')' still sees its own '(' on top
            keys["matching_paren"][t] = open_parens[-1]
        if last_operator >= 0:
            keys["operator"][t] = last_operator
        if ids[t] == OPEN_ID:
            open_parens.append(t)
        elif ids[t] == CLOSE_ID and open_parens:
            open_parens.pop()
        elif ids[t] in OPERATOR_IDS:
            last_operator = t
    for t in range(1, n_real):
        keys["previous_token"][t] = t - 1
    if EQUALS_ID in ids[end:n_real]:  # the answer may hold a '-', never a '='
        equals = ids.index(EQUALS_ID, end)
        for t in range(equals + 1, n_real):
            keys["equals"][t] = equals
    return keys


def role_key_tensor(inputs: torch.Tensor) -> torch.Tensor:
    """Role keys of a batch of inputs [N, T]: a long tensor [len(ROLES), N, T], -1 where a role does
    not apply. A Python loop over examples: ~30 ms for 2,000 sequences of 32 tokens."""
    per_example = [role_keys(row) for row in inputs.tolist()]
    return torch.tensor([[k[role] for k in per_example] for role in ROLES], dtype=torch.long)


# ---------------------------------------------------------------------------- shares


def query_tally(keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per role [R]: number of queries, the summed uniform-attention share 1/(t+1), and the number
    of queries whose key is not the previous token."""
    t = torch.arange(keys.shape[-1], device=keys.device)
    applies = keys >= 0
    return {"n_queries": applies.sum((1, 2)).double(),
            "uniform_sum": (applies / (t + 1).double()).sum((1, 2)),
            "n_distinct": (applies & (keys != t - 1)).sum((1, 2)).double()}


def attention_tally(pattern: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed attention from each role's queries to their keys, per head: [R, H] float64.

    pattern [N, H, T, T] (rows are queries, columns keys), keys [R, N, T] from role_key_tensor."""
    R, (N, H, T, _) = keys.shape[0], pattern.shape
    t = torch.arange(T, device=keys.device)
    applies = keys >= 0
    distinct = applies & (keys != t - 1)
    index = keys.clamp(min=0)[:, :, None, :, None].expand(R, N, H, T, 1)
    at_key = torch.stack([pattern.gather(3, index[r]).squeeze(3) for r in range(R)]).double()  # [R, N, H, T]
    return {"share_sum": (at_key * applies[:, :, None, :]).sum((1, 3)),
            "distinct_sum": (at_key * distinct[:, :, None, :]).sum((1, 3))}


def shares_from_tally(tally: dict) -> dict[str, dict]:
    """{role: {share: [...per head], uniform, n_queries, share_distinct: [...], n_distinct}} from summed
    tallies (share_sum [R, ...], counts [R]); a share is None where the role has no query."""
    out = {}
    for r, role in enumerate(ROLES):
        n, n_distinct = int(tally["n_queries"][r]), int(tally["n_distinct"][r])
        share = (tally["share_sum"][r] / n).tolist() if n else None
        distinct = (tally["distinct_sum"][r] / n_distinct).tolist() if n_distinct else None
        out[role] = {"share": share, "uniform": float(tally["uniform_sum"][r] / n) if n else None,
                     "n_queries": n, "share_distinct": distinct, "n_distinct": n_distinct}
    return out


def attention_shares(pattern: torch.Tensor, keys: torch.Tensor) -> dict[str, dict]:
    """Role shares of one attention pattern [N, H, T, T]: {role: {share: [H floats], uniform, ...}}."""
    return shares_from_tally(attention_tally(pattern, keys) | query_tally(keys))


@torch.no_grad()
def split_tally(model, inputs: torch.Tensor, precision: str = "fp32", chunk: int = CHUNK) -> dict[str, torch.Tensor]:
    """Summed tallies of one split for every head: share_sum / distinct_sum [R, L, H], counts [R]."""
    model.eval()
    device = next(model.parameters()).device
    L, H = model.cfg.num_layers, model.cfg.num_heads
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(L)]
    tally = {"share_sum": torch.zeros(len(ROLES), L, H, dtype=torch.float64),
             "distinct_sum": torch.zeros(len(ROLES), L, H, dtype=torch.float64),
             "n_queries": torch.zeros(len(ROLES), dtype=torch.float64),
             "uniform_sum": torch.zeros(len(ROLES), dtype=torch.float64),
             "n_distinct": torch.zeros(len(ROLES), dtype=torch.float64)}
    for start in range(0, len(inputs), chunk):
        tokens = inputs[start:start + chunk]
        keys = role_key_tensor(tokens).to(device)
        with autocast(device, precision):
            recorded = model(tokens.to(device), hooks=Hooks(record=names)).activations
        for part, value in query_tally(keys).items():
            tally[part] += value.cpu()
        for layer, name in enumerate(names):
            for part, value in attention_tally(recorded[name], keys).items():
                tally[part][:, layer] += value.cpu()
    return tally


def head_roles(combined: dict, threshold: float = ROLE_THRESHOLD, distinct: dict | None = None) -> tuple[list[str], str]:
    """(roles whose share is at least the threshold, the largest of them or "none").

    Where `distinct` gives a role's share over the queries whose key is not the previous token, that
    share must pass too: otherwise a previous-token head would be read as an operator head (on
    flat expressions about 0.41 of the operator share is previous-token overlap)."""
    distinct = distinct or {}
    passing = [role for role in ROLES if combined.get(role) is not None and combined[role] >= threshold
               and (distinct.get(role) is None or distinct[role] >= threshold)]
    primary = max(passing, key=lambda role: combined[role]) if passing else "none"
    return passing, primary


def head_rows(tallies: dict[str, dict], pooled: list[str], num_layers: int, num_heads: int) -> tuple[list, dict]:
    """One row per head (shares per split, combined over `pooled`, roles) and the pooled query counts."""
    combined = {key: sum(tallies[s][key] for s in pooled) for key in tallies[pooled[0]]}
    per_split = {s: shares_from_tally(t) for s, t in tallies.items()}
    pooled_shares = shares_from_tally(combined)

    def at(values, layer, head):
        return None if values is None else values[layer][head]

    rows = []
    for layer in range(num_layers):
        for head in range(num_heads):
            shares = {s: {role: {"share": at(v["share"], layer, head), "uniform": v["uniform"],
                                 "n_queries": v["n_queries"], "share_distinct": at(v["share_distinct"], layer, head),
                                 "n_distinct": v["n_distinct"]} for role, v in split.items()}
                      for s, split in per_split.items()}
            head_combined = {role: at(v["share"], layer, head) for role, v in pooled_shares.items()}
            head_distinct = {role: at(v["share_distinct"], layer, head) for role, v in pooled_shares.items()}
            roles, primary = head_roles(head_combined, distinct=head_distinct)
            rows.append({"head": head_label(layer, head), "layer": layer, "head_index": head,
                         "relative_layer": relative_layer(layer, num_layers), "shares": shares,
                         "combined": head_combined,
                         "combined_distinct": head_distinct,
                         "roles": roles, "primary_role": primary})
    queries = {role: {"n_queries": v["n_queries"], "uniform": v["uniform"], "n_distinct": v["n_distinct"]}
               for role, v in pooled_shares.items()}
    return rows, queries


# ---------------------------------------------------------------------------- several runs


def _run_name(run: dict) -> str:
    return f"{run.get('config', '?')} seed {run.get('seed', '?')}"


def _table_cell(text: str) -> str:
    """A name as a Markdown table cell: undecodable bytes shown escaped (src.text.shown), a "|" escaped."""
    return shown(text).replace("|", "\\|")


def match_roles(runs: list[dict]) -> list[dict]:
    """For each role, each run's head that holds it (head_roles: share and share_distinct at least the
    threshold) with the largest combined share, else the head with the largest share (`passes` False).

    `runs` are roles.json dicts (any seeds, any scales). Returns one entry per role:
    {role, definition, every_run_passes, runs: [{run, config, seed, head, layer, relative_layer, share,
    share_distinct, uniform, passes, primary_role}]}; `head` is None where the role has no query.
    Ties go to the earlier head (lower layer, then lower index)."""
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or run.get("schema") != SCHEMA:
            raise ValueError(f"runs[{i}] is not a {SCHEMA} roles.json dict (schema {run.get('schema')!r})"
                             if isinstance(run, dict) else f"runs[{i}] is not a dict")
    matched = []
    for role in ROLES:
        entries = []
        for run in runs:
            threshold = run.get("threshold", ROLE_THRESHOLD)
            entry = {"run": run.get("run"), "config": run.get("config"), "seed": run.get("seed"),
                     "uniform": run.get("combined_queries", {}).get(role, {}).get("uniform")}
            candidates = [h for h in run["heads"] if h["combined"].get(role) is not None]
            if not candidates:
                entries.append(entry | {"head": None, "layer": None, "relative_layer": None, "share": None,
                                        "share_distinct": None, "passes": False, "primary_role": None})
                continue
            # a head holds the role by head_roles' rule (share and share_distinct); the best holder, else the best share
            holders = [h for h in candidates
                       if role in head_roles(h["combined"], threshold, h.get("combined_distinct"))[0]]
            best = max(holders or candidates, key=lambda h: h["combined"][role])  # max keeps the first of equals
            entries.append(entry | {"head": best["head"], "layer": best["layer"],
                                    "relative_layer": best["relative_layer"], "share": best["combined"][role],
                                    "share_distinct": best.get("combined_distinct", {}).get(role),
                                    "passes": bool(holders), "primary_role": best["primary_role"]})
        matched.append({"role": role, "definition": ROLE_DEFINITIONS[role],
                        "every_run_passes": bool(entries) and all(e["passes"] for e in entries), "runs": entries})
    return matched


def role_table_markdown(runs: list[dict]) -> str:
    """A markdown table, role x run: each run's best head for the role, its combined share, the
    uniform baseline, its relative layer; bold where the share passes the threshold."""
    matched = match_roles(runs)
    names = [_run_name(r) for r in runs]
    if len(set(names)) < len(names):  # two runs of one config and seed: tell them apart by directory
        names = [f"{n} ({Path(str(r.get('run'))).name})" for n, r in zip(names, runs)]
    lines = ["| role | " + " | ".join(map(_table_cell, names)) + " | every run |",
             "|---|" + "---|" * len(names) + "---|"]
    for entry in matched:
        cells = []
        for e in entry["runs"]:
            if e["head"] is None:
                cells.append("n/a")
                continue
            text = f"{e['head']} {e['share']:.2f}"
            cells.append((f"**{text}**" if e["passes"] else text)
                         + f" (uniform {e['uniform']:.2f}, rel. layer {e['relative_layer']:.2f})")
        cells.append("yes" if entry["every_run_passes"] else "no")
        lines.append(f"| {entry['role']} | " + " | ".join(cells) + " |")
    thresholds = sorted({r.get("threshold", ROLE_THRESHOLD) for r in runs})
    lines.append("")
    lines.append(f"Each cell: the run's head with the largest combined share for the role; bold when the share is "
                 f"at least {', '.join(str(t) for t in thresholds)}. Heads are matched by role, never by index.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- figure


@plain_text()  # names drawn as written: no mathtext
def render_heatmap(rows: list[dict], queries: dict, title: str) -> bytes:
    """PNG bytes of a heads x roles heatmap of combined shares, values written in the cells."""
    title = shown(title)  # a run directory's name may hold bytes that are not UTF-8
    plt = pyplot()

    grid = [[r["combined"][role] if r["combined"][role] is not None else float("nan") for role in ROLES]
            for r in rows]
    fig, ax = plt.subplots(figsize=(5.2, 1.4 + 0.24 * len(rows)), dpi=80)
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, r in enumerate(rows):
        for j, role in enumerate(ROLES):
            value = r["combined"][role]
            if value is not None:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white",
                        fontweight="bold" if role in r["roles"] else "normal")
    labels = [role.replace("_", " ") + ("" if queries[role]["uniform"] is None
                                        else f"\nuniform {queries[role]['uniform']:.2f}") for role in ROLES]
    ax.set_xticks(range(len(ROLES)), labels, fontsize=7)
    ax.set_yticks(range(len(rows)), [r["head"] for r in rows], fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05).ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png_bytes(fig)


# ---------------------------------------------------------------------------- command line


def check_splits(splits: list[str], cfg) -> list[str]:
    """The splits; a UserError for one named twice or one the run's config has no data file for."""
    known = [f.name for f in dataclasses.fields(cfg.data)]
    for split in splits:
        if split not in known:
            raise UserError(f"--splits: unknown split {split!r}; this run's config has {' '.join(known)}")
    return distinct(splits, "--splits")


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'head':<8}" + "".join(f"{role:>16}" for role in ROLES) + "  primary"]
    for r in rows:
        cells = "".join(f"{'-' if r['combined'][role] is None else format(r['combined'][role], '.3f'):>16}"
                        for role in ROLES)
        lines.append(f"{r['head']:<8}{cells}  {r['primary_role']}")
    lines.append(f"each cell: the head's attention share to the role's key over the pooled queries ('-': the role has "
                 f"no query); primary: the largest role whose share (and share over keys other than the previous "
                 f"token) is at least {ROLE_THRESHOLD}, else none")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m src.analysis.roles", description=__doc__.split("\n\n")[0],
                            epilog=f"roles: {', '.join(ROLES)}; threshold {ROLE_THRESHOLD}")
    add_run_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), metavar="SPLIT",
                        help="bracketed splits whose queries are pooled to assign roles (default: %(default)s); "
                        f"{' '.join(REFERENCE_SPLITS)} is always scored beside them")
    parser.add_argument("--out", type=path_arg, default=None,
                        help="JSON path (default: RUN/roles.json, RUN/roles.limitN.json under --limit); the heatmap "
                        "goes beside it with the suffix .png")
    return parser


def roles_run(run: Run, data: RunData, args) -> dict:
    """Every head's attention roles in an opened run; writes roles.json and its heatmap, returns the result."""
    if args.out is not None and args.out.suffix != ".json":
        raise UserError(f"--out {args.out}: must be a .json path (the heatmap is written beside it as .png)")
    out_path = run.output("roles.json", args.out)
    if not out_path.parent.is_dir():
        raise UserError(f"--out {out_path}: directory {out_path.parent} does not exist")
    check_output_file(out_path, "--out" if args.out else "output", "roles.json")
    png_path = check_output_file(out_path.with_suffix(".png"), "figure")
    cfg = run.cfg
    splits = check_splits(args.splits, cfg)
    scored = splits + [s for s in REFERENCE_SPLITS if s not in splits]
    tic = time.perf_counter()
    batches = data.batches(scored)
    tallies = {s: split_tally(run.model, b.inputs, run.precision)
               for s, b in run.bar(batches.items(), desc="attention roles", unit="split")}
    rows, queries = head_rows(tallies, splits, cfg.model.num_layers, cfg.model.num_heads)
    elapsed = time.perf_counter() - tic
    result = {
        "schema": SCHEMA, "run": str(run.path), "checkpoint": run.checkpoint, "epoch": run.ckpt["epoch"],
        "config": cfg.name, "seed": run.seed, "device": str(run.device), "precision": run.precision,
        "fp16": run.precision == "fp16", "limit": run.limit, "splits": splits,
        "reference_splits": [s for s in scored if s not in splits],
        "n_examples": {s: len(b) for s, b in batches.items()},
        "num_layers": cfg.model.num_layers, "num_heads": cfg.model.num_heads,
        "role_definitions": ROLE_DEFINITIONS, "threshold": ROLE_THRESHOLD,
        "assignment": f"roles: the roles whose combined share (queries of {' + '.join(splits)} pooled) is at least "
                      f"{ROLE_THRESHOLD}, and so is its share_distinct where defined; primary_role: the largest of them, else 'none'",
        "share_distinct": "the share over only the role's queries whose key is not t - 1 (the previous token)",
        "combined_queries": queries, "heads": rows, "elapsed_s": elapsed,
    }
    title = run.titled(f"{cfg.name} seed {result['seed']} ({run.path.name}): attention share to each role's key") + \
        f"\npooled over {' + '.join(splits)}; bold: share >= {ROLE_THRESHOLD}"
    png = render_heatmap(rows, queries, title)  # rendered before anything is written
    print(run.titled(f"role shares pooled over {', '.join(f'{s} ({len(batches[s])})' for s in splits)}, {elapsed:.2f}s"))
    print(format_rows(rows))
    write_result(out_path, result, (png_path, png))
    return result


def main(argv=None) -> int:
    return analysis_main(build_parser, roles_run, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
