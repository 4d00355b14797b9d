"""Probes for intermediate values, which the tokens cannot give away.

    python -m src.analysis.value_probe --run D [--operator-target left_operand|pending_sum] [--device cuda] [--out PATH]

A depth probe can be solved by counting brackets. These targets (src.analysis.intermediate) cannot, except
where they copy a digit already in the input:
    close     at each ')': the value of the bracketed sub-expression it closes
    operator  at each operator: its left operand's value (or, with --operator-target pending_sum, the
              group's sum of completed terms), i.e. the running partial result
each read as two classification tasks: `mod10` (|value| mod 10, 10 classes) and `sign` (-1, 0, +1).
If a model computes intermediate results step by step, they are linearly decodable where they are
complete (the "step-free" question of the original study); if it does not, only the copy baseline's
share (the digit just read) is.

Sites: the embedding and the residual stream after each block (`blocks.L.hook_resid_post`), i.e.
by layer. The probe is src.analysis.probe's softmax regression (standardized features, L2, L-BFGS from zero),
fitted on the run's first training expressions (at most src.analysis.common.ANALYSIS_TRAIN_MAX) and scored
on other splits. Each probe is read against:
  - the untrained control: the same probe on an untrained model of the same architecture and seed;
    `selectivity` = trained - control accuracy on the same positions, stats.paired_bootstrap over
    expressions, and `at_ceiling` when the control reaches src.analysis.probe.CEILING;
  - the copy baseline (mod10: the last digit before the position; sign: always +1) and the majority
    class of the training targets;
  - the non-trivial positions alone (where the copy baseline is wrong: for mod10 the last digit
    read is not the target's, for sign the value is not positive): accuracy and selectivity there
    are the part the tokens cannot give away.
claim per (kind, task, split, site), from the 95% intervals of the two selectivities (CLAIM_RULE):
"at ceiling: no claim" when the control is at its ceiling; else "selective beyond the tokens" when
both intervals (all positions, non-trivial positions) lie above 0; "selective" when only the one on
all positions does; "selective on the non-trivial positions only" when only the non-trivial one
does; "below the control" when the one on all positions lies below 0 (and the non-trivial one not
above it); else "not selective". So a probe less accurate than its control over all positions is
never called selective beyond the tokens.

Output: DIR/value_probe.json (DIR/value_probe.limitN.json under --limit; schema value_probe/1): run,
config, seed, precision, operator_target, train_expressions, definitions, baselines {kind: {split: copy baseline and majority accuracy}},
and per kind (close, operator) and task (mod10, sign) one entry per site with trained, control,
selectivity, trained_nontrivial, control_nontrivial, selectivity_nontrivial, at_ceiling and claim
per split; and `best_layer` per kind and task: the residual site with the best training accuracy
(chosen on the training expressions, never on the scored splits), with its accuracies (control_nontrivial
among them), both selectivities and its claim on each split.
"""

from __future__ import annotations

import argparse
import time

import torch

from src import stats
from src.rundir.atomic import write_result
from src.cli import (MAX_ITERATIONS, MAX_RESAMPLES, MAX_SEED, ArgumentParser, check_output_file, distinct, float_in, int_in,
                     path_arg)
from src.errors import run_main
from src.analysis.common import Run, RunData, add_run_arguments, analysis_main, progress, untrained_control
from src.analysis.intermediate import KINDS, OPERATOR_TARGETS, at_expression_positions, batch_targets
from src.analysis.probe import (CEILING, MIN_RESAMPLES, accuracy_entry, at_ceiling, collect_features, fit_probes,
                       selectivity_entry, site_groups)
from src.rundir.results import stamp

SPLITS = ("test_flat", "test_paren", "test_depth3")
TASKS = {"mod10": 10, "sign": 3}
CLAIM_RULE = ("'at ceiling: no claim' when the untrained control reaches the ceiling on that split. Otherwise the 95% "
              "intervals of two selectivities (trained - control) decide: on all positions, and on the non-trivial "
              "positions alone (where the copy baseline is wrong). 'selective beyond the tokens': both lie above 0; "
              "'selective': the one on all positions lies above 0, the non-trivial one does not; 'selective on the "
              "non-trivial positions only': the non-trivial one lies above 0, the one on all positions does not; "
              "'below the control': the one on all positions lies below 0 and the non-trivial one not above it; "
              "else 'not selective'. One interval per claim, not corrected across claims.")
CLAIMS = ("at ceiling: no claim", "selective beyond the tokens", "selective", "selective on the non-trivial positions only",
          "below the control", "not selective")


def task_target(fields: dict, task: str) -> torch.Tensor:
    return fields["mod10"] if task == "mod10" else fields["sign_class"]


def residual_sites(cfg) -> list:
    return [site for group in site_groups(cfg) for site in group if site.kind != "head"]


def split_fields(data: RunData, split: str, operator_target: str):
    """(batch on the device, targets at the expression positions, on the device) of one split."""
    batch = data.batches([split])[split]
    targets = batch_targets(data.records(split), data.cfg.model.max_seq_len, operator_target)
    fields = at_expression_positions(targets, batch.depth)
    return batch, {name: tensor.to(batch.inputs.device) for name, tensor in fields.items()}


def features(model, batch, sites, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([positions, sites, d_model], expression index) at the expression positions, on the model's device
    (the probes are fitted where the features are: on a GPU, not on its host's CPU)."""
    feats, _, expr = collect_features(model, batch, [s.activation for s in sites], precision)
    return torch.cat([feats[s.activation] for s in sites], dim=1), expr


def probe_kind(x: dict, fields: dict, expr: dict, kind: str, task: str, splits, l2: float, max_iter: int):
    """Fit on train, score on `splits`: {split: correct [positions of this kind, sites] bool}, or None
    where the training expressions hold no position of this kind."""
    mask = {s: fields[s][f"{kind}_mask"] for s in fields}
    if int(mask["train"].sum()) == 0:
        return None
    y = task_target(fields["train"], task)[mask["train"]]
    probe = fit_probes(x["train"][mask["train"]], y, TASKS[task], l2, max_iter)
    out = {"train": (probe.predict(x["train"][mask["train"]]) == y[:, None])}
    for split in splits:
        m = mask[split]
        out[split] = probe.predict(x[split][m]) == task_target(fields[split], task)[m][:, None]
    return out


def nontrivial_positions(fields: dict, task: str):
    """Where the copy baseline is wrong: mod10, the last digit read is not the target's; sign, the
    value is not positive (the baseline says + everywhere, as every number of the grammar is)."""
    return ~fields["trivial"] if task == "mod10" else fields["sign"] != 1


def interval_side(selectivity: dict | None) -> int:
    """+1 when the selectivity's 95% interval lies above 0, -1 when below, 0 when it holds 0 or is missing.
    The estimate must lie on the same side, so that a claim never contradicts the accuracies it is
    quoted with (a percentile interval can, rarely, leave its own estimate out)."""
    ci, estimate = (selectivity or {}).get("ci95"), (selectivity or {}).get("estimate")
    if not ci or ci[0] is None or ci[1] is None:
        return 0
    if ci[0] > 0 and (estimate is None or estimate > 0):
        return 1
    if ci[1] < 0 and (estimate is None or estimate < 0):
        return -1
    return 0


def claim(ceiling: bool, selectivity: dict, selectivity_nontrivial: dict | None) -> str:
    """The claim of CLAIM_RULE from the two selectivities' intervals (all positions, non-trivial positions)."""
    if ceiling:
        return "at ceiling: no claim"
    every, nontrivial = interval_side(selectivity), interval_side(selectivity_nontrivial)
    if every > 0:
        return "selective beyond the tokens" if nontrivial > 0 else "selective"
    if nontrivial > 0:
        return "selective on the non-trivial positions only"
    return "below the control" if every < 0 else "not selective"


def site_entries(sites, kind: str, task: str, correct: dict, fields: dict, expr: dict, splits, resamples: int) -> list:
    entries = []
    for i, site in enumerate(sites):
        e = {"site": site.name, "layer": site.layer, "relative_depth": site.relative_depth,
             "train_accuracy": correct["trained"]["train"][:, i].double().mean().item(),
             "control_train_accuracy": correct["control"]["train"][:, i].double().mean().item(), "splits": {}}
        for split in splits:
            m = fields[split][f"{kind}_mask"]
            if int(m.sum()) == 0:
                continue
            where, nontrivial = expr[split][m], nontrivial_positions(fields[split], task)[m]
            t, c = correct["trained"][split][:, i], correct["control"][split][:, i]
            s = {"trained": accuracy_entry(t, where, resamples), "control": accuracy_entry(c, where, resamples),
                 "selectivity": selectivity_entry(t, c, where, resamples)}
            if bool(nontrivial.any()):
                s |= {"trained_nontrivial": accuracy_entry(t[nontrivial], where[nontrivial], resamples),
                      "control_nontrivial": accuracy_entry(c[nontrivial], where[nontrivial], resamples),
                      "selectivity_nontrivial": selectivity_entry(t[nontrivial], c[nontrivial], where[nontrivial],
                                                                  resamples)}
            s["at_ceiling"] = at_ceiling(s["control"])
            s["claim"] = claim(s["at_ceiling"], s["selectivity"], s.get("selectivity_nontrivial", {}))
            e["splits"][split] = s
        entries.append(e)
    return entries


def baselines(fields: dict, kind: str, splits, resamples: int) -> dict:
    """Per split: the copy baseline (mod10: the last digit read; sign: always +1) and the majority
    class of the training targets, with the number of positions and the share that is trivial."""
    train = fields["train"]
    tm = train[f"{kind}_mask"]
    majority = {task: int(torch.bincount(task_target(train, task)[tm], minlength=TASKS[task]).argmax()) if int(tm.sum())
                else None for task in TASKS}
    out = {}
    for split, f in fields.items():
        if split == "train":
            continue
        m = f[f"{kind}_mask"]
        if int(m.sum()) == 0:
            out[split] = {"n_positions": 0}
            continue
        where = f["expr"][m]
        out[split] = {"n_positions": int(m.sum()), "trivial_share": f["trivial"][m].double().mean().item(),
                      "copy_mod10": accuracy_entry(f["trivial"][m], where, resamples),
                      "copy_sign": accuracy_entry(f["sign"][m] == 1, where, resamples),
                      "majority": {task: accuracy_entry(task_target(f, task)[m] == majority[task], where, resamples)
                                   for task in TASKS if majority[task] is not None}}
    return out


def best_layer(entries: list, splits) -> dict:
    """The residual site (not the embedding) with the best training accuracy, and its claim per split."""
    resid = [e for e in entries if e["layer"] is not None]
    best = max(resid, key=lambda e: e["train_accuracy"])  # max keeps the earliest of ties
    return {"site": best["site"], "layer": best["layer"], "train_accuracy": best["train_accuracy"],
            "splits": {s: {"trained": best["splits"][s]["trained"]["accuracy"],
                           "control": best["splits"][s]["control"]["accuracy"],
                           "selectivity": best["splits"][s]["selectivity"],
                           "trained_nontrivial": best["splits"][s].get("trained_nontrivial", {}).get("accuracy"),
                           "control_nontrivial": best["splits"][s].get("control_nontrivial", {}).get("accuracy"),
                           "selectivity_nontrivial": best["splits"][s].get("selectivity_nontrivial"),
                           "claim": best["splits"][s]["claim"]}
                       for s in splits if s in best["splits"]}}


def value_probe(model, control, data: RunData, args, precision: str = "fp32", bar=None) -> dict:
    """Everything of value_probe.json but the run's identity. `bar`: a progress bar factory (Run.bar)."""
    sites = residual_sites(model.cfg)
    batches, fields = {}, {}
    for split in ["train", *args.splits]:
        batches[split], fields[split] = split_fields(data, split, args.operator_target)
    x, expr = {}, {}
    per_model = {}
    ticker = (bar or progress)(total=2 * len(KINDS) * len(TASKS), desc="value probes: fits", unit="fit",
                               disable=bar is None)
    for name, m in (("trained", model), ("control", control)):
        for split, batch in batches.items():
            x[split], expr[split] = features(m, batch, sites, precision)
            if not torch.equal(expr[split], fields[split]["expr"]):
                raise RuntimeError(f"{split}: probed positions differ from the targets' positions")
        per_model[name] = {}
        for kind in KINDS:
            for task in TASKS:
                per_model[name][(kind, task)] = probe_kind(x, fields, expr, kind, task, args.splits, args.l2,
                                                           args.max_iter)
                ticker.update()
    ticker.close()
    results = {}
    pairs = [(kind, task) for kind in KINDS for task in TASKS]
    for kind, task in (bar(pairs, desc="value probes: intervals", unit="probe") if bar is not None else pairs):
        results.setdefault(kind, {})
        if per_model["trained"][(kind, task)] is None:
            results[kind][task] = None
            continue
        correct = {name: per_model[name][(kind, task)] for name in per_model}
        entries = site_entries(sites, kind, task, correct, fields, expr, args.splits, args.resamples)
        results[kind][task] = {"sites": entries, "best_layer": best_layer(entries, args.splits)}
    return {"train_expressions": len(batches["train"]),
            "baselines": {kind: baselines(fields, kind, args.splits, args.resamples) for kind in KINDS},
            "probes": results}


def _cell(value, width: int) -> str:
    return f"{'' if value is None else f'{value:.3f}':>{width}}"


def _ci(entry: dict | None) -> str:
    ci = (entry or {}).get("ci95")
    return f"{'':>16}" if not ci or None in ci else f"[{ci[0]:+.3f},{ci[1]:+.3f}]".rjust(16)


def format_summary(result: dict) -> str:
    """The best residual site of each probe on each split: accuracies, both selectivity intervals, the claim."""
    lines = [f"{'kind':<9} {'task':<6} {'split':<12} {'best site':<26} {'trained':>7} {'control':>7} {'sel. all':>16} "
             f"{'nt trained':>10} {'nt control':>10} {'sel. nt':>16} {'copy':>6}  claim"]
    for kind, tasks in result["probes"].items():
        for task, r in (tasks or {}).items():
            if r is None:
                continue
            b = r["best_layer"]
            for split, s in b["splits"].items():
                base = result["baselines"][kind][split]
                copy = base["copy_mod10" if task == "mod10" else "copy_sign"]["accuracy"]
                lines.append(f"{kind:<9} {task:<6} {split:<12} {b['site']:<26} {s['trained']:>7.3f} {s['control']:>7.3f} "
                             f"{_ci(s['selectivity'])} {_cell(s['trained_nontrivial'], 10)} "
                             f"{_cell(s.get('control_nontrivial'), 10)} {_ci(s['selectivity_nontrivial'])} "
                             f"{copy:>6.3f}  {s['claim']}")
    lines.append("columns: trained, control = probe accuracy on the trained model and on the untrained control (all "
                 "positions of the kind); sel. all = 95% interval of trained - control there; nt = the non-trivial "
                 "positions only (where the copy baseline is wrong); sel. nt = its interval; copy = the copy baseline's "
                 "accuracy. claim: " + CLAIM_RULE)
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m src.analysis.value_probe", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--splits", nargs="+", default=list(SPLITS), metavar="SPLIT",
                   help="splits to score the probes on, each once, any of %(default)s (default: all)")
    p.add_argument("--operator-target", choices=OPERATOR_TARGETS, default="left_operand",
                   help="the target at an operator: its left operand's value, or the sum of the group's completed "
                   "terms (default: %(default)s; src.analysis.intermediate defines both)")
    p.add_argument("--l2", type=float_in(0, None), default=1e-4, help="L2 penalty on the probe weights (default: %(default)s)")
    p.add_argument("--max-iter", type=int_in(1, MAX_ITERATIONS), default=200,
                   help=f"L-BFGS iterations per fit, 1 to {MAX_ITERATIONS} (default: %(default)s)")
    p.add_argument("--resamples", type=int_in(MIN_RESAMPLES, MAX_RESAMPLES), default=stats.DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples over expressions, {MIN_RESAMPLES} to {MAX_RESAMPLES} (default: %(default)s)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None,
                   help="seed of the untrained control (default: the run's training seed, which its checkpoint records)")
    p.add_argument("--out", type=path_arg, default=None,
                   help="JSON path (default: RUN/value_probe.json, RUN/value_probe.limitN.json under --limit)")
    return p


def check_splits(args) -> None:
    distinct(args.splits, "--splits", SPLITS)


def value_probe_run(run: Run, data: RunData, args) -> dict:
    """The value probes of an opened run against its untrained control; writes value_probe.json, returns it."""
    check_splits(args)
    out = check_output_file(run.output("value_probe.json", args.out), "--out" if args.out else "output",
                            "value_probe.json")
    seed = args.seed if args.seed is not None else run.seed
    control = untrained_control(run.cfg, seed, run.device)
    tic = time.perf_counter()
    body = value_probe(run.model, control, data, args, run.precision, bar=run.bar)
    result = stamp("value_probe", {"run": str(run.path), "checkpoint": run.checkpoint, "epoch": run.ckpt["epoch"],
              "config": run.cfg.name, "seed": run.seed, "control_seed": seed, "device": str(run.device),
              "precision": run.precision, "limit": run.limit, "operator_target": args.operator_target,
              "l2": args.l2, "max_iter": args.max_iter, "resamples": args.resamples,
              "sites": "hook_embed and blocks.L.hook_resid_post (the residual stream after block L)",
              "tasks": {"mod10": "|value| mod 10 (10 classes)", "sign": "sign of the value (-1, 0, +1)"},
              "targets": {"close": "at each ')': the value of the sub-expression it closes",
                          "operator": f"at each operator: {args.operator_target} (src.analysis.intermediate)"},
              "nontrivial": "positions where the copy baseline is wrong: mod10, the last digit read is not the "
                            "target's; sign, the value is not positive (the baseline says + everywhere)",
              "selectivity_definition": "trained - control accuracy on the same positions, stats.paired_bootstrap "
                                        "over expressions (control as a, trained as b)",
              "ceiling": CEILING, "claim_rule": CLAIM_RULE, **body, "elapsed_s": time.perf_counter() - tic})
    if run.limit is not None:
        print(run.titled("value probes"))
    print(format_summary(result))
    write_result(out, result)
    return result


def main(argv=None) -> int:
    return analysis_main(build_parser, value_probe_run, argv, check=check_splits)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
