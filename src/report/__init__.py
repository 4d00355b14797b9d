"""The pilot vs 10M report: every analysed run, grouped by config, as Markdown, JSON and figures.

    python -m src.report RUN [RUN ...] --out results/REPORT.md

Each run directory contributes what it holds: summary.json and metrics.jsonl (src.train),
eval.json and eval_equal_steps.json (src.analysis.evaluate), ablation.json (src.analysis.ablate), roles.json
(src.analysis.roles), probe.json (src.analysis.probe). A missing piece is skipped with a note saying how to make it; a
piece of an unknown schema is an error naming the file and the command that regenerates it. Runs are
grouped by config name; several seeds of one config give mean, sample standard deviation and range
across seeds. Written beside --out: report.json (every aggregated number), training_curves.png,
probe_relative_depth.png, head_specialization.png and attention_roles.png.

The package is split by job: collect (reading runs), compare (what each section states, per config),
figures, markdown (the sections), cli (this command).
"""

from src.report.cli import main  # noqa: F401
