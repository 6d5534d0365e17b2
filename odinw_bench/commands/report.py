"""``python -m odinw_bench report``: leaderboard tables from run records (mean ± std over seeds, suite average),
data-efficiency plots, per-category AP, published numbers side by side, and a W&B copy."""

from __future__ import annotations

import argparse
import logging
import re

from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

HELP = "aggregate run records into leaderboard tables (text, CSV, Markdown, LaTeX), plots and comparisons"

EPILOG = """\
examples:
  python -m odinw_bench report                                     # results/runs -> results/report/leaderboard.*
  python -m odinw_bench report results/runs --suite odinw13 --out results/report/odinw13
  python -m odinw_bench report results/runs/aquarium --allow-partial --metric AP50 --out /tmp/aquarium/
  python -m odinw_bench report run1.json run2.json --seeds 3,30,300
  python -m odinw_bench report results/runs --suite odinw13 --plots --per-category --formats md,tex
  python -m odinw_bench report results/runs --suite odinw13 --compare        # next to the GLIP paper's numbers
  python -m odinw_bench report results/runs --suite odinw13 --plots --wandb offline

Cells show mean ± sample std over seeds (AP x 100); the suite column is the mean of the task means.
An incomplete grid is refused (the missing cells are listed) unless --allow-partial is given.
Files written for --out P: P.csv (wide), P_summary.csv (long, with 95% CI), P_runs.csv (one row per run) [csv];
P.md [md]; P.tex (booktabs; needs the booktabs package) [tex]; always P_sources.txt (every run record used).
--per-category: P_per_category_<task>.csv, P_per_category.md. --plots: P_efficiency.png (suite average),
P_efficiency_tasks.png (one panel per task). Published numbers (the GLIP paper's Tables 11-15 for
glip-t and glip-l: zero-shot, 1/3/5/10-shot and full data under full, prompt and linear-probe; the zero-shot rows of
glip-t-a/-b/-c from GLIP's README and mmdetection; shown whenever they apply, --compare insists):
P_compare.{csv,md,tex}, with the split, prompt and protocol differences of each reference next to ours. For a folder (existing, or ending in /) the files are leaderboard.csv,
leaderboard.md, leaderboard.tex, summary.csv, runs.csv, sources.txt, compare.csv, efficiency.png, ... inside it.
A report replaces only files a report wrote (listed in .odinw_report_files.json of their folder): --out pointing
at the run leaderboard (<output>/leaderboard.csv, appended by run and sweep) or at any other file is refused.
--wandb offline|online: the tables and plots also go to a W&B run of job type "report" (in the folder of --out);
a W&B failure is a warning, never an error.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "results",
        nargs="*",
        default=["results/runs"],
        metavar="RESULTS",
        help="run-record files or folders searched recursively (default: results/runs)",
    )
    parser.add_argument(
        "--suite",
        default=None,
        help="task suite, task name or comma list whose tasks must all be present (default: the tasks found)",
    )
    parser.add_argument("--metric", default="AP", help="metric key to aggregate (default: AP)")
    parser.add_argument("--seeds", default=None, help="comma list of seeds every cell must have (default: all seen)")
    parser.add_argument(
        "--out",
        default="results/report/",
        help="output folder (existing, or ending in /) or path prefix for the report files (default: "
        "results/report/)",
    )
    parser.add_argument("--allow-partial", action="store_true", help="report an incomplete grid, marking its cells")
    parser.add_argument("--formats", default="csv,md,tex",
                        help="comma list of table formats to write: csv, md, tex (default: csv,md,tex)")
    parser.add_argument("--plots", action="store_true", help="write data-efficiency plots (AP vs shots, PNG)")
    parser.add_argument("--per-category", action="store_true", help="write per-category AP tables per task")
    parser.add_argument("--compare", action="store_true",
                        help="compare rows with published numbers (default: whenever some apply)")
    parser.add_argument("--wandb", choices=("off", "offline", "online"), default="off",
                        help="also push tables and plots to a W&B run of job type 'report' (default: off)")


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}", field="--seeds") from None
    if not seeds:
        raise UserError("no seeds given", field="--seeds")
    return seeds


def _suite_tasks(spec: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Task names, prompt variant per task and display names of a suite / task list."""
    from odinw_bench.tasks.registry import resolve_tasks

    names, prompts, display = [], {}, {}
    for item in resolve_tasks(spec):
        task, variant = item if isinstance(item, tuple) else (item, None)
        names.append(task.name)
        prompts[task.name] = variant or "default"
        display[task.name] = task.display_name
    return names, prompts, display


def run(args: argparse.Namespace) -> int:
    """Load the records, aggregate, print the table and write the files."""
    from odinw_bench.report import build as report
    from odinw_bench.report import formats, grid
    from odinw_bench.results import records

    seeds = _parse_seeds(args.seeds)
    formats = formats.check_formats([f.strip() for f in args.formats.split(",") if f.strip()])
    records = list(records.iter_records(args.results))
    if not records:
        raise UserError(f"no run records found in {', '.join(args.results)}", field="RESULTS")
    tasks = prompts = display = None
    suite = "mean"
    if args.suite:
        tasks, prompts, display = _suite_tasks(args.suite)
        # A plain suite name labels the average column; a comma list or YAML path does not make a good label.
        suite = args.suite if re.fullmatch(r"[A-Za-z0-9_-]+", args.suite) else "mean"
    rep = grid.build_report(
        records,
        tasks=tasks,
        suite=suite,
        metric=args.metric,
        seeds=seeds,
        prompts=prompts,
        display=display,
        allow_partial=args.allow_partial,
    )
    outputs = report.produce(rep, args.out, formats=formats, plots=args.plots, per_category=args.per_category,
                             compare=True if args.compare else None, wandb=args.wandb)
    print(outputs.text, end="")
    print("wrote " + ", ".join(str(p) for p in outputs.paths.values()))
    if outputs.wandb_dir is not None:
        print(f"W&B run: {outputs.wandb_dir}")
    return 0
