"""``python -m odinw_bench demo``: how the pre-trained ``glip-nano`` transfers, shown as the GLIP paper shows it.

The default demo runs, on every task of the demo suite, the model zero-shot, then linear probing, prompt tuning
and full fine-tuning at 1 and 3 shots with one seed, under the demo recipe ``configs/glip_nano_demo.yaml``; then
it prints the paper's table (rows regime x shots, columns the tasks and their average) and saves it with the
data-efficiency plot. ``--full`` runs the paper's whole grid instead: shots 0/1/3/5/10/all x seeds 3/30/300 x the
three tuning regimes.

Nothing here runs a model itself. The demo *is* two ``sweep`` command lines and one ``report`` command line (see
:func:`sweep_command_lines`; the help text and the demo's own output print them): the sweep lines are parsed by the
``sweep`` command's own parser and planned and run in this process (:func:`odinw_bench.runs.sweep.plan_sweep`,
:func:`~odinw_bench.runs.sweep.run_sweep`, the in-process launcher), so a rerun skips every cell whose record
exists and a cell killed mid-training resumes from its last checkpoint; the table and its files come from the
``report`` command, with its ownership rules (:mod:`odinw_bench.report.ownership`).

Two sweeps rather than one: a recipe file's learning rate counts as the user's choice, so it would also replace the
prompt regime's own lr (GLIP's 0.05, :mod:`odinw_bench.training.regimes`); the prompt cells restate the regime's lr
as an override (:func:`prompt_overrides`), which gives the same run ids as the regime's default would.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

HELP = ("transfer of the pre-trained glip-nano on the demo suite: zero-shot, then linear probe, prompt and full "
        "fine-tuning at 1 and 3 shots, as the GLIP paper's table and plot (--full: the whole grid)")

DEMO_TASKS = "demo_suite"
DEMO_MODEL = "glip-nano"
DEMO_OUTPUT = "results/demo"
#: The recipe, relative to the repository root (printed in that form; opened from the repository root).
DEMO_RECIPE = "configs/glip_nano_demo.yaml"
DEMO_SEED = 3
TUNING_REGIMES = ("linear-probe", "prompt", "full")
DEMO_SHOTS = (1, 3)
FULL_SHOTS = (1, 3, 5, 10, "all")
FULL_SEEDS = (3, 30, 300)
#: Default worker processes at most: a glip-nano run is too small to use more than one core well, so the demo
#: runs one single-thread run per core (measured on 2 cores: 1.7x the runs per minute of one 2-thread process).
MAX_WORKERS = 4

EPILOG = """\
examples:
  python -m odinw_bench demo                          # 28 runs on the 4 demo tasks; a rerun redoes none of them
  python -m odinw_bench demo --output /tmp/demo --no-progress
  python -m odinw_bench demo --full                   # the whole grid: 184 runs, resumable (stop it, run it again)
  python -m odinw_bench demo --full --dry-run         # the grid's cells, run ids and states; nothing runs
  python -m odinw_bench demo --tasks demo --model glip-micro schedule.max_epochs=1    # a quick smoke run

It is the same as (on 2 CPU cores; --workers is one per core, at most 4):
  python -m odinw_bench sweep --suite demo_suite --shots 0,1,3 --seeds 3 --regimes linear-probe,full \\
      --models glip-nano --output results/demo --recipe configs/glip_nano_demo.yaml --workers 2 --threads 1
  python -m odinw_bench sweep --suite demo_suite --shots 1,3 --seeds 3 --regimes prompt \\
      --models glip-nano --output results/demo --recipe configs/glip_nano_demo.yaml --workers 2 --threads 1 \\
      optim.lr=0.05
  python -m odinw_bench report results/demo/runs --suite demo_suite --seeds 3 --out results/demo/report/ \\
      --formats csv,md --plots --allow-partial
and `demo --full` is the same with --shots 0,1,3,5,10,all (prompt: 1,3,5,10,all), --seeds 3,30,300 and
--out results/demo/report/full/. The demo reports only its own runs, whatever else the runs folder holds.

Each run uses one CPU thread, in as many worker processes as there are cores (at most 4): a glip-nano run is
too small to use two threads well, and the numbers then do not depend on the machine's core count.
The prompt sweep restates prompt tuning's own lr (GLIP's 0.05): a recipe file's optim.lr would otherwise apply to
it too. Key=value overrides go to every run (after that one). Results: run records and predictions under
<output>/runs, the run leaderboard <output>/leaderboard.csv, the table (leaderboard.md, leaderboard.csv, ...) and
the data-efficiency plots (efficiency.png, efficiency_tasks.png) under <output>/report/. glip-nano loads the
weights shipped in odinw_bench/resources/models/glip-nano/ (without them it starts from random weights, with a
warning, and shows no transfer).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--output", default=DEMO_OUTPUT, help=f"results folder (default: {DEMO_OUTPUT})")
    parser.add_argument("--data-root", default=None,
                        help="where the synthetic task data is written and read (default: a cache folder)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed of the default demo's runs (default: {DEMO_SEED}); --full uses GLIP's "
                        f"{','.join(map(str, FULL_SEEDS))}")
    parser.add_argument("--full", action="store_true",
                        help="the whole grid: shots 0,1,3,5,10,all x seeds 3,30,300 x linear-probe, prompt, full")
    parser.add_argument("--model", default=DEMO_MODEL, help=f"model preset (default: {DEMO_MODEL})")
    parser.add_argument("--tasks", default=DEMO_TASKS,
                        help=f"suite, comma list of tasks or task YAML paths (default: {DEMO_TASKS})")
    parser.add_argument("--dry-run", action="store_true", help="list the runs with their run ids and states")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars: each run prints one line per epoch instead")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"worker processes, one CPU thread each (default: the CPU cores, at most "
                        f"{MAX_WORKERS}; 1: in this process). The results do not depend on it")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every run")


def prompt_overrides() -> list[str]:
    """The prompt regime's own lr as an override: the demo recipe's optim.lr must not replace it."""
    from odinw_bench.training.regimes import get_regime

    return [f"optim.lr={get_regime('prompt').lr:g}"]


def _tasks_flag(tasks: str) -> list[str]:
    """``--suite NAME`` for a registered suite (how a reader would write it), else ``--tasks LIST``."""
    from odinw_bench.tasks.registry import load_suites

    return ["--suite", tasks] if tasks in load_suites() else ["--tasks", tasks]


def sweep_command_lines(args: argparse.Namespace, recipe: str = DEMO_RECIPE) -> list[list[str]]:
    """The ``sweep`` arguments (without ``sweep``) the demo runs: the linear-probe/full grid with zero-shot, then
    the prompt grid.

    Raises:
        UserError: ``--seed`` with ``--full`` (the full grid uses GLIP's three seeds).
    """
    from odinw_bench.errors import UserError

    if args.full and args.seed is not None:
        raise UserError(f"--full runs GLIP's seeds {','.join(map(str, FULL_SEEDS))}; --seed is for the default "
                        "demo", field="--seed")
    shots = FULL_SHOTS if args.full else DEMO_SHOTS
    seeds = FULL_SEEDS if args.full else (DEMO_SEED if args.seed is None else args.seed,)
    common = ["--seeds", ",".join(map(str, seeds))]
    # One thread per run, however many workers: the numbers then do not depend on the machine's core count.
    tail = ["--models", args.model, "--output", str(args.output), "--recipe", recipe,
            "--workers", str(workers(args)), "--threads", "1"]
    if args.data_root:
        tail += ["--data-root", str(args.data_root)]
    tasks = _tasks_flag(args.tasks)
    shots_text = ",".join(map(str, shots))
    trained = [r for r in TUNING_REGIMES if r != "prompt"]
    return [
        [*tasks, "--shots", f"0,{shots_text}", *common, "--regimes", ",".join(trained), *tail, *args.overrides],
        [*tasks, "--shots", shots_text, *common, "--regimes", "prompt", *tail, *prompt_overrides(),
         *args.overrides],
    ]


def workers(args: argparse.Namespace) -> int:
    """``--workers``, else one per CPU core up to :data:`MAX_WORKERS`.

    Raises:
        UserError: ``--workers`` below 1.
    """
    import os

    from odinw_bench.errors import UserError

    if args.workers is None:
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if args.workers < 1:
        raise UserError(f"expected at least 1 worker, got {args.workers}", field="--workers")
    return args.workers


def report_folder(args: argparse.Namespace) -> Path:
    """Where the table and plots go: ``<output>/report/`` (``--full``: ``<output>/report/full/``)."""
    return Path(args.output) / "report" / ("full" if args.full else "")


def report_command_line(args: argparse.Namespace, results: list[str]) -> list[str]:
    """The ``report`` arguments (without ``report``) that table ``results`` (record files or folders)."""
    seeds = FULL_SEEDS if args.full else (DEMO_SEED if args.seed is None else args.seed,)
    return [*results, "--suite", args.tasks, "--seeds", ",".join(map(str, seeds)),
            "--out", f"{report_folder(args)}/", "--formats", "csv,md", "--plots", "--allow-partial"]


def recipe_path() -> Path:
    """The demo recipe in this copy of the repository (found from any working directory)."""
    from odinw_bench import paths

    return paths.REPO_DIR / DEMO_RECIPE


def _recipe_shown() -> str:
    """The recipe as the printed command lines name it: relative to the working directory when it is below it."""
    try:
        return str(recipe_path().relative_to(Path.cwd()))
    except ValueError:
        return str(recipe_path())


def _shown(argv: list[str], command: str) -> str:
    """A command line as a user would type it."""
    return shlex.join(["python", "-m", "odinw_bench", command, *argv])


def plan_cells(args: argparse.Namespace, *, dry_run: bool = False) -> list:
    """The demo's cells (:class:`odinw_bench.runs.sweep.Cell`) with their states, planned as ``sweep`` plans them.

    Raises:
        UserError: Bad options (unknown model or task, malformed override, ...), before anything runs.
    """
    from odinw_bench.commands import sweep as sweep_command
    from odinw_bench.runs.arguments import OneLineErrorParser
    from odinw_bench.runs.sweep import plan_sweep

    parser = OneLineErrorParser(prog="python -m odinw_bench sweep")
    sweep_command.add_arguments(parser)
    cells = []
    for argv in sweep_command_lines(args, recipe=str(recipe_path())):
        spec = sweep_command.grid_spec(parser.parse_args(argv))
        cells += plan_sweep(spec, fetch=not dry_run, check_data=not dry_run)
    if not args.no_progress and workers(args) == 1:  # a sweep's cells never draw bars; in-process, the demo's do
        for cell in cells:
            cell.argv = [a for a in cell.argv if a != "--no-progress"]
    return cells


def _record_file(cell) -> Path | None:
    """The record that makes a done cell done: its own, or (zero-shot) the same run id under another seed."""
    if cell.record_path.is_file():
        return cell.record_path
    found = sorted(cell.record_path.parent.glob(f"*_{cell.run_id}.json"))
    return found[0] if found else None


def run(args: argparse.Namespace) -> int:
    """Plan, run what is not done, print and save the table."""
    import time

    from odinw_bench.runs.launchers import LocalLauncher, PoolLauncher
    from odinw_bench.runs.sweep import counts, listing, run_sweep

    started = time.time()
    cells = plan_cells(args, dry_run=args.dry_run)
    print("the demo is:")
    for argv in sweep_command_lines(args, recipe=_recipe_shown()):
        print("  " + _shown(argv, "sweep"))
    print("  " + _shown(report_command_line(args, [str(Path(args.output) / "runs")]), "report"), flush=True)
    if args.dry_run:
        print(listing(cells))
        n = counts(cells)
        print(f"{len(cells)} runs: {n['done']} done, {n['failed']} failed, {n['left']} left (dry run: nothing ran)")
        return 0
    count = workers(args)
    launcher = LocalLauncher(threads=1) if count == 1 else PoolLauncher(count, threads=1)
    summary = run_sweep(cells, launcher, lambda line: print(line, flush=True))
    print(summary.text())
    done = [path for path in (_record_file(c) for c in cells if c.state == "done") if path is not None]
    if done:
        _report(args, done)
    minutes, seconds = divmod(round(time.time() - started), 60)
    print(f"demo: {len(cells)} runs ({summary.ran} ran, {summary.skipped_done} already done) in {minutes} min "
          f"{seconds} s; records under {Path(args.output) / 'runs'}, run leaderboard "
          f"{Path(args.output) / 'leaderboard.csv'}")
    return 0 if summary.ok else 1


def _report(args: argparse.Namespace, records: list[Path]) -> None:
    """The paper's table and plots of the demo's own records, by the ``report`` command."""
    from odinw_bench.commands import report as report_command
    from odinw_bench.runs.arguments import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m odinw_bench report")
    report_command.add_arguments(parser)
    print()
    report_command.run(parser.parse_args(report_command_line(args, [str(p) for p in records])))
