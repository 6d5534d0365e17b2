"""``python -m odinw_bench demo``: the main job offline, on built-in synthetic data and ``glip-micro``."""

from __future__ import annotations

import argparse

HELP = "offline demo: zero-shot and 1-shot fine-tuning of glip-micro on the synthetic demo task, then the report"

EPILOG = """\
examples:
  python -m odinw_bench demo                          # writes under results/demo (records, predictions, leaderboard)
  python -m odinw_bench demo --epochs 20 --output /tmp/demo

It is the same as:
  python -m odinw_bench run --task demo --shots 0 --model glip-micro
  python -m odinw_bench run --task demo --shots 1 --model glip-micro optim.lr=1e-3 schedule.max_epochs=10
  python -m odinw_bench report results/demo/runs --out results/demo/report/ --allow-partial

glip-micro starts from random weights, so the demo uses a short schedule with a higher learning rate than GLIP's
recipe (which is for fine-tuning a pre-trained GLIP): it shows the pipeline and that fine-tuning learns, not a
benchmark number. Real numbers need the data (python -m odinw_bench download ...) and a GLIP checkpoint.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="results/demo", help="results folder (default: results/demo)")
    parser.add_argument("--data-root", default=None, help="where the synthetic data lives (default: a cache folder)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default: 10)")
    parser.add_argument("--seed", type=int, default=3, help="sampling and training seed (default: 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_args(args: argparse.Namespace, shots: str, *overrides: str) -> argparse.Namespace:
    from odinw_bench.commands import run as run_command

    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    argv = ["--task", "demo", "--shots", shots, "--model", "glip-micro", "--seed", str(args.seed),
            "--output", args.output, *overrides]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    if args.no_progress:
        argv.append("--no-progress")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from odinw_bench.report.formats import format_table
    from odinw_bench.report.grid import build_report
    from odinw_bench.runs.request import requests_from_args
    from odinw_bench.runs.runner import run_request, summary_table

    plans = [
        ("zero-shot", _run_args(args, "0")),
        ("1-shot full fine-tuning", _run_args(args, "1", "optim.lr=1e-3", f"schedule.max_epochs={args.epochs}",
                                              "data.num_workers=0")),
    ]
    outcomes = []
    for title, run_args in plans:
        print(f"\n== {title}: run --task demo --shots {run_args.shots} --model glip-micro "
              f"{' '.join(run_args.overrides)}", flush=True)
        outcomes += [run_request(request) for request in requests_from_args(run_args)]
    print("\n" + summary_table(outcomes))
    report = build_report([o.record for o in outcomes], tasks=["demo"], allow_partial=True)
    print("\n" + format_table(report))
    print(f"\nrecords under {Path(args.output) / 'runs'}, leaderboard {Path(args.output) / 'leaderboard.csv'}")
    print("glip-micro starts from random weights: the demo shows the pipeline and that fine-tuning learns. "
          "For real numbers, download the data and a GLIP checkpoint (README).")
    return 0
