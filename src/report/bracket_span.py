"""Exploratory, outside the registered study: by which depth has the bracket's value left the bracket?

    python -m src.report.bracket_span [--dir results/study/exploratory]

H2 patches the `)` alone, and there the value's interchange moves almost no answer at either scale (IIA
below 0.03), while the digits inside the bracket, left unpatched, are still there for later positions to read.
Patching the whole bracket pair (`(`, the characters inside and `)`) closes that gap. At the embedding a value pair's base then runs as
its source (the two differ only inside the bracket), so IIA is 1. After block l the positions that follow the
bracket have already read the base's bracket in blocks 0 to l, and the patch reaches them only from block
l + 1 on: the IIA falls as far as the answer's information about the bracket has left it by that depth. The
value-preserving control (other digits, the same inner value) asks the converse: patched at a depth where
later positions hold the base's digits and the bracket the source's, an answer computed from the inner value
still comes out as the base's; one assembled from digits read at different depths need not.

Reads DIR/bracket_pilot.json and DIR/bracket_10m.json (or their .json.gz; either scale may be missing), each
written by
    python -m src.analysis.interchange --run MODEL --variables value --classes inside,close,bracket --out FILE --compress
on one seed's model, and writes DIR/BRACKET.md (the table, for each residual site: IIA of the interchange
control at the bracket's inside, its `)` and the whole bracket, and kept_base of the value-preserving control
at the whole bracket, with 95% Wilson intervals) and DIR/bracket_span.png (those curves against relative depth).
"""

from __future__ import annotations

from pathlib import Path

from src.cli import ArgumentParser, path_arg
from src.errors import UserError, run_main
from src.plotting import pyplot
from src.rundir.atomic import atomic_write_bytes, atomic_write_text
from src.rundir.paths import check_output_dir
from src.rundir.results import read_result, result_file
from src.text import plain_png, shown

SCALES = {"pilot": "bracket_pilot.json", "10M": "bracket_10m.json"}
CLASSES = ("inside", "close", "bracket")
FALLEN = 0.5  # the IIA below which the table says the bracket's value has mostly left the bracket
COMMAND = ("python -m src.analysis.interchange --run {run} --variables value --classes inside,close,bracket "
           "--out {out} --compress")


def _cells(result: dict, control: str, path: Path) -> list[dict]:
    try:
        cells = result["variables"]["value"]["controls"][control]["cells"]
    except (KeyError, TypeError):
        raise UserError(f"{shown(path)}: no value pairs of the {control} control; make it with "
                        f"`{COMMAND.format(run='MODEL', out=path)}`") from None
    classes = {c["position_class"] for c in cells}
    if not set(CLASSES) <= classes:
        raise UserError(f"{shown(path)}: position classes {sorted(classes)}, not {', '.join(CLASSES)}; make it "
                        f"with `{COMMAND.format(run='MODEL', out=path)}`")
    return [c for c in cells if c["kind"] != "head"]


def scale_rows(result: dict, path: Path) -> dict:
    """What the table and the figure show of one scale's file: per residual site, the interchange IIA of each
    class and the value-preserving kept_base of the whole bracket."""
    iia = _cells(result, "interchange", path)
    kept = {c["site"]: c for c in _cells(result, "value_preserving", path) if c["position_class"] == "bracket"}
    rows = []
    for site in dict.fromkeys(c["site"] for c in iia):
        by = {c["position_class"]: c for c in iia if c["site"] == site}
        rows.append({"site": site, "relative_depth": by["bracket"]["relative_depth"], "n": by["bracket"]["iia"]["n"],
                     **{cls: by[cls]["iia"] for cls in CLASSES},
                     "kept_base": kept[site]["kept_base"] if site in kept else None})
    fallen = next((r for r in rows if r["bracket"]["value"] is not None and r["bracket"]["value"] < FALLEN), None)
    return {"file": str(path), "run": result["run"], "seed": result.get("seed"), "limit": result["limit"],
            "precision": result["precision"], "device": result["device"], "rows": rows,
            "fallen": None if fallen is None else {"site": fallen["site"], "relative_depth": fallen["relative_depth"]}}


def _share(p: dict | None) -> str:
    if p is None or p["value"] is None:
        return "—"
    lo, hi = p["ci95"]
    return f"{p['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(scales: dict) -> str:
    md = ["# Where the bracket's value leaves the bracket (exploratory)", "",
          "Outside the registered study and its family of tests: one seed's model per scale, no test across "
          "seeds. " + __doc__.split("\n\n")[2].replace("\n", " "), "",
          "Rows: residual sites (the embedding, each block's output; the last block's is excluded by "
          "construction). IIA: share of the value pairs whose decoded answer is the source's value put into the "
          "base, over the interchange pairs whose base and source the model answers right unpatched; kept_base: "
          "share of value-preserving pairs whose answer stays the base's. 95% Wilson intervals.", ""]
    for scale, s in scales.items():
        scope = "every pair" if s["limit"] is None else f"the first {s['limit']} lines of the pair file"
        md += [f"## {scale}: seed {s['seed']}", "",
               f"`{COMMAND.format(run=s['run'], out=s['file'])}" + (f" --limit {s['limit']}" if s["limit"] else "")
               + f"`, {scope}, on {s['device']} in {s['precision']}.", "",
               "| site | depth | pairs | IIA, inside | IIA, `)` | IIA, whole bracket | kept_base, whole bracket "
               "(value-preserving) |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['site']} | {r['relative_depth']:.2f} | {r['n']} | {_share(r['inside'])} | {_share(r['close'])} | "
               f"{_share(r['bracket'])} | {_share(r['kept_base'])} |" for r in s["rows"]]
        f = s["fallen"]
        md += ["", (f"The whole bracket's IIA first falls below {FALLEN} at {f['site']} (relative depth "
                    f"{f['relative_depth']:.2f})." if f else
                    f"The whole bracket's IIA stays at or above {FALLEN} at every patched site."), ""]
    md += ["![bracket_span.png](bracket_span.png)", ""]
    return "\n".join(md)


def figure(scales: dict) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(scales), figsize=(4.4 * len(scales), 3.8), squeeze=False)
    for ax, (scale, s) in zip(axes[0], scales.items()):
        x = [r["relative_depth"] for r in s["rows"]]
        for i, cls in enumerate(CLASSES):
            ax.plot(x, [r[cls]["value"] for r in s["rows"]], marker="o", ms=3, color=f"C{i}",
                    label={"inside": "IIA, inside", "close": "IIA, `)`", "bracket": "IIA, whole bracket"}[cls])
        kept = [(r["relative_depth"], r["kept_base"]["value"]) for r in s["rows"] if r["kept_base"] is not None]
        if kept:
            ax.plot(*zip(*kept), ls="--", marker="s", ms=3, color="C2", label="kept_base, whole bracket (value-preserving)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("relative depth (0 = embedding)", fontsize=8)
        ax.set_ylabel("share of pairs", fontsize=8)
        ax.set_title(f"{scale}, seed {s['seed']}" + (f", first {s['limit']} lines" if s["limit"] else ""), fontsize=8)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("Exploratory: the value's interchange at the bracket, by depth of the patch", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return plain_png(fig, dpi=100)


def parse_args(argv):
    p = ArgumentParser.from_doc("python -m src.report.bracket_span", __doc__)
    p.add_argument("--dir", type=path_arg, default=Path("results/study/exploratory"),
                   help="where bracket_pilot.json and bracket_10m.json are, and BRACKET.md and bracket_span.png go "
                   "(default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = check_output_dir(str(args.dir), "--dir")
    found = {scale: args.dir / name for scale, name in SCALES.items() if result_file(out / name) is not None}
    if not found:
        raise UserError(f"{shown(out)}: neither {' nor '.join(SCALES.values())}; make one with "
                        f"`{COMMAND.format(run='models/study_pilot', out=out / SCALES['pilot'])}`")
    scales = {scale: scale_rows(read_result(path, "interchange"), path) for scale, path in found.items()}
    atomic_write_text(out / "BRACKET.md", markdown(scales))
    atomic_write_bytes(out / "bracket_span.png", figure(scales))
    for scale, s in scales.items():
        f = s["fallen"]
        print(f"{scale}: whole-bracket IIA " + ", ".join(f"{r['site']} {r['bracket']['value']:.3f}" for r in s["rows"])
              + (f"; below {FALLEN} from {f['site']}" if f else ""))
    print(f"wrote {shown(out / 'BRACKET.md')} and bracket_span.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
