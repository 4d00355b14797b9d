"""Time of the interchange battery (src.analysis.interchange): answers read step by step against teacher-forced.

    python -m benchmarks.interchange_speed --config configs/scale_10m.yaml --pairs 1000 --device cuda --precision fp16
    python -m benchmarks.interchange_speed --model models/study_10m --pairs 1000 --device cuda --precision fp16

Both ways of reading the greedy answers run in the same call on the same pairs, after one warm-up: decoding
step by step (one forward pass per decoding step, `interchange.decode`) and teacher-forced (one pass per answer
compared, `interchange.answer_hits`, what the battery uses); it prints both times, their ratio, and whether
the two gave the same answer on every patched row.

Fresh weights answer nothing right, so the battery's restriction to pairs answered right would leave none; this
times the patched decodings themselves on every pair (the battery's worst case: every pair kept). Pairs: value
interchange pairs made from data/pilot_test_paren.jsonl, each bracket's digits replaced (same digit counts), and
checked with the pair files' own parser. The figure is `--controls` groups of `--pairs` pairs each, the count of
control groups of the two pair files (value: interchange, value_preserving, random; operator: interchange, random).
"""

import argparse
import json
import random
import time
from types import SimpleNamespace

import torch

from src.analysis import interchange
from src.config import load_config
from src.data import evaluate, load_jsonl
from src.model import CompactTransformer, load_pretrained


def value_pairs(n: int, seed: int = 0, max_seq_len: int = 32) -> list:
    rng = random.Random(seed)
    records, out = load_jsonl("data/pilot_test_paren.jsonl", max_seq_len), []
    for r in records:
        expr = r.expr
        i_open = expr.index("(")
        depth = r.depth
        i_close = next(k for k in range(i_open, len(expr)) if expr[k] == ")" and depth[k] == depth[i_open] - 1)
        for _ in range(20):
            inner = "".join(str(rng.randint(1 if k == i_open + 1 or not expr[k - 1].isdigit() else 0, 9))
                            if ch.isdigit() else ch for k, ch in enumerate(expr[i_open + 1:i_close], start=i_open + 1))
            source = expr[:i_open + 1] + inner + expr[i_close:]
            try:
                if evaluate(source) == r.result or len(str(evaluate(source))) > 6:
                    continue
            except ValueError:
                continue
            after = i_close + 1 if i_close + 1 < len(expr) and expr[i_close + 1] in "+-*" else None
            op = after if after is not None else (i_open - 1 if i_open > 0 else None)
            obj = {"variable": "value", "control": "interchange", "template": interchange.template_of(expr),
                   "template_class": {"depth": depth[i_open], "inner_ops": "*" if "*" in inner else "+-",
                                      "outer_op": expr[op] if op is not None else None,
                                      "operands": sum(1 for k, c in enumerate(expr) if c.isdigit() and (k == 0 or not expr[k - 1].isdigit()))},
                   "base": {"expr": expr, "result": r.result}, "source": {"expr": source, "result": evaluate(source)},
                   "bracket": [i_open, i_close], "sites": {"inside": list(range(i_open + 1, i_close)), "open": i_open,
                                                           "close": i_close, "operator": op},
                   "predicted": evaluate(source)}
            try:
                out.append(interchange.parse_pair(obj, "value", len(out) + 1, "generated", max_seq_len, "plain"))
            except Exception:  # noqa: BLE001 - a generated pair the format refuses is skipped
                continue
            break
        if len(out) == n:
            break
    return out


def time_battery(model, cfg, pairs, args, step_by_step: bool) -> tuple[float, dict]:
    """Seconds for --controls groups of the battery's work on `pairs`, and the last group's patched runs."""
    sites, _ = interchange.sites_of(cfg.model)
    jobs = [(s, c) for s in sites for c in interchange.POSITION_CLASSES] + [(sites[0], "prompt")]
    names = sorted({s.name for s in sites})
    if args.device == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(args.controls):
        t = interchange.pair_tensors(pairs, cfg.model.max_seq_len)
        clean = interchange.unpatched(model, t, args.precision, args.chunk, step_by_step)
        acts = interchange.record_sources(model, t, names, args.precision, args.chunk)
        runs = interchange.patched_runs(model, t, jobs, acts, args.precision, args.chunk, step_by_step=step_by_step)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic, {"clean": clean, "runs": runs}


def same_answers(a: dict, b: dict) -> bool:
    return all(torch.equal(a["clean"][k], b["clean"][k]) for k in a["clean"]) and all(
        torch.equal(a["runs"][j][k], b["runs"][j][k]) for j in a["runs"] for k in ("predicted", "base", "source"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/scale_10m.yaml", help="model config (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="an export (python -m src.export) to time instead of fresh weights of --config, e.g. "
                        "models/study_10m: a trained model ends its answers, so its decoding may stop early")
    p.add_argument("--pairs", type=int, default=1000, help="pairs per control group (default: %(default)s)")
    p.add_argument("--controls", type=int, default=5, help="control groups timed (default: %(default)s)")
    p.add_argument("--device", default="cuda", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--precision", default="fp16", help="fp32, fp16 or bf16 (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=interchange.DEFAULT_CHUNK, help="rows per forward (default: %(default)s)")
    args = p.parse_args()
    if args.model:
        model, meta = load_pretrained(args.model)
        model = model.to(args.device).eval()
        cfg = SimpleNamespace(name=meta.get("run_config", {}).get("name", args.model), model=model.cfg)
    else:
        cfg = load_config(args.config)
        torch.manual_seed(0)
        model = CompactTransformer(cfg.model).to(args.device).eval()
    pairs = value_pairs(args.pairs, max_seq_len=cfg.model.max_seq_len)
    time_battery(model, cfg, pairs[:64], args, step_by_step=False)  # warm-up: kernels chosen, memory allocated
    step_s, step_out = time_battery(model, cfg, pairs, args, step_by_step=True)
    forced_s, forced_out = time_battery(model, cfg, pairs, args, step_by_step=False)
    rows = sum(len(r["rows"]) for r in forced_out["runs"].values()) * args.controls
    print(json.dumps({"schema": "benchmark_interchange/2", "config": cfg.name, "model": args.model or "fresh weights",
                      "pairs_per_control": len(pairs), "control_groups": args.controls,
                      "sites": len(interchange.sites_of(cfg.model)[0]), "patched_rows": rows,
                      "precision": args.precision, "device": args.device,
                      "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                      "seconds_step_by_step": round(step_s, 2), "seconds_teacher_forced": round(forced_s, 2),
                      "speedup": round(step_s / forced_s, 2),
                      "same_answers": same_answers(step_out, forced_out)}, indent=1))


if __name__ == "__main__":
    main()
