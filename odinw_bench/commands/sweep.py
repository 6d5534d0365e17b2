"""``python -m odinw_bench sweep``: run a grid of tasks × shots × seeds × regimes × models, resumably."""

from __future__ import annotations

import argparse

from odinw_bench.runs.arguments import positive_int, seconds_value

HELP = "run a grid of runs (tasks x shots x seeds x regimes x models), skipping finished ones, locally or on SLURM"

EPILOG = """\
examples:
  python -m odinw_bench sweep --suite odinw13 --shots 0,1,3,5,10,all --regimes prompt,full --models glip-t
  python -m odinw_bench sweep --suite odinw13 --regimes prompt --dry-run           # list cells and states only
  python -m odinw_bench sweep --tasks demo --shots 0,1 --models glip-micro --workers 2 schedule.max_epochs=2
  python -m odinw_bench sweep --suite odinw13 --workers 4 --gpus 0,1,2,3           # one GPU per worker process
  python -m odinw_bench sweep --suite odinw13 --retry-failed                       # rerun the failed cells too
  python -m odinw_bench sweep --suite odinw13 --models glip-t,glip-l --launcher slurm --slurm-partition gpu \\
      --slurm-time 720 --slurm-gpus-per-job 1 --slurm-array-parallelism 32
  python -m odinw_bench sweep --suite odinw13 --launcher slurm --slurm-account lab --slurm-qos normal \\
      --slurm-mem 64G --slurm-constraint a100 --slurm-option mail-type=END --slurm-setup 'module load cuda'

Each cell is one `run` (same options, same records). A cell whose record (status ok) already exists under
--output is skipped, so rerunning the same command after a crash runs only what is missing. Failed cells are
reported and rerun only with --retry-failed. Shots 0 cells are zero-shot: one per task x model, whatever --seeds
and --regimes say (the result depends on neither). When cells finish, `python -m odinw_bench report <output>/runs` makes the tables.

On SLURM a job that times out or is preempted is requeued and resumes from its last checkpoint. Submitted jobs
are listed in <output>/sweep_jobs.json until they end, so a rerun waits for cells still queued or running
instead of submitting them twice. Cells print one line per epoch into their logs (<output>/slurm/*_log.out).
"""

# `run` options passed through unchanged to every cell: (flag, dest, takes a value).
RUN_OPTIONS = (
    ("--data-root", "data_root", True), ("--checkpoint", "checkpoint", True), ("--recipe", "recipe", True),
    ("--wandb", "wandb", True), ("--prompt", "prompt", True), ("--split", "split", True),
    ("--devices", "devices", True), ("--precision", "precision", True),
    ("--checkpoint-every", "checkpoint_every", True), ("--trust-checkpoint", "trust_checkpoint", False),
    ("--no-feature-cache", "no_feature_cache", False), ("--search", "search", True),
    ("--search-epochs", "search_epochs", True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("grid")
    which = grid.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", default=None, help="task suite, e.g. odinw13")
    which.add_argument("--tasks", default=None, help="comma list of task names, suites or task YAML paths")
    grid.add_argument("--shots", default="0,1,3,5,10,all", help="comma list (default: 0,1,3,5,10,all)")
    grid.add_argument("--seeds", default="3,30,300", help="comma list (default: GLIP's 3,30,300)")
    grid.add_argument("--regimes", default="full", help="comma list of linear-probe, linear-probe-cached, "
                      "prompt, deep-prompt, full, language, lora, lora-language (default: full); shots 0 always "
                      "runs zero-shot")
    grid.add_argument("--models", default=None, help="comma list of presets (default: glip-t)")
    grid.add_argument("--config", default=None, help="official GLIP YAML config (instead of --models)")
    run = parser.add_argument_group("run options (passed to every cell)")
    run.add_argument("--output", default="results", help="results folder (default: results)")
    run.add_argument("--data-root", default=None, help="ODinW folder (default: $ODINW_ROOT or DATASET/odinw)")
    run.add_argument("--checkpoint", default=None, help="local checkpoint (one model only)")
    run.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a .pth file")
    run.add_argument("--recipe", default=None, help="recipe YAML (default: configs/glip_odinw.yaml)")
    run.add_argument("--wandb", choices=("off", "offline", "online"), default=None, help="W&B logging")
    run.add_argument("--prompt", default=None, help="prompt variant of every task, e.g. odinw_35")
    run.add_argument("--split", default=None, help="split to report (default: each task's test split)")
    run.add_argument("--devices", type=int, default=None, help="GPUs of each run (Lightning DDP)")
    run.add_argument("--precision", default=None, help="Lightning precision of each run")
    run.add_argument("--checkpoint-every", type=seconds_value, default=None, metavar="SECONDS",
                     help="as `run --checkpoint-every`: how often a cell writes its resume checkpoint")
    run.add_argument("--search", default=None, metavar="lr,wd",
                     help="as `run --search`: search these on val before each cell's final run")
    run.add_argument("--search-epochs", type=positive_int, default=None, metavar="N",
                     help="as `run --search-epochs`: epochs of each search trial")
    run.add_argument("--no-feature-cache", action="store_true",
                     help="as `run --no-feature-cache`: compute frozen features at every pass")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every cell")
    launch = parser.add_argument_group("launching")
    launch.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                        help="local: this machine; slurm: a submitit job array; submitit-local: the same job "
                        "array on this machine (no cluster) (default: local)")
    launch.add_argument("--workers", type=int, default=1, help="local worker processes (default: 1, in-process)")
    launch.add_argument("--gpus", default=None, help="comma list of GPU ids, one per local worker")
    launch.add_argument("--threads", type=int, default=None,
                        help="CPU threads of each run (default: the cores split evenly between the workers; "
                        "in-process: torch's default). Small models run faster as more single-thread workers")
    launch.add_argument("--dry-run", action="store_true", help="list the cells with their run ids and states")
    launch.add_argument("--retry-failed", action="store_true", help="rerun cells whose record says failed")
    launch.add_argument("--no-progress", action="store_true",
                        help="as `run --no-progress`; cells never draw progress bars in a sweep: each prints one "
                        "line per epoch (loss, lr, val AP, elapsed) into its log instead")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--slurm-partition", default=None, help="partition")
    slurm.add_argument("--slurm-time", type=int, default=None, help="time limit per job in minutes")
    slurm.add_argument("--slurm-gpus-per-job", type=int, default=None, help="GPUs per job (default: 1)")
    slurm.add_argument("--slurm-cpus-per-job", type=int, default=None, help="CPUs per job")
    slurm.add_argument("--slurm-array-parallelism", type=int, default=None, help="jobs running at once")
    slurm.add_argument("--slurm-log-dir", default=None, help="submitit logs (default: <output>/slurm)")
    slurm.add_argument("--slurm-account", default=None, help="account to charge (#SBATCH --account)")
    slurm.add_argument("--slurm-qos", default=None, help="quality of service (#SBATCH --qos)")
    slurm.add_argument("--slurm-mem", default=None, help="memory per job, e.g. 64G (#SBATCH --mem)")
    slurm.add_argument("--slurm-constraint", default=None, help="node features, e.g. a100 (#SBATCH --constraint)")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="KEY[=VALUE]",
                       help="any other #SBATCH option, repeatable: --slurm-option mail-type=END --slurm-option "
                       "exclusive")
    slurm.add_argument("--slurm-setup", action="append", default=[], metavar="COMMAND",
                       help="shell line each job runs first, repeatable, e.g. 'module load cuda'")


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def grid_spec(args: argparse.Namespace):
    """The :class:`~odinw_bench.runs.sweep.GridSpec` of the parsed arguments."""
    from pathlib import Path

    from odinw_bench.runs.sweep import GridSpec, parse_int_list, parse_shots_list

    run_args: list[str] = []
    for flag, dest, takes_value in RUN_OPTIONS:
        value = getattr(args, dest)
        if takes_value and value is not None:
            run_args += [flag, str(value)]
        elif not takes_value and value:
            run_args.append(flag)
    models = _split(args.models) or ([] if args.config else ["glip-t"])
    return GridSpec(tasks=args.suite or args.tasks, shots=parse_shots_list(args.shots),
                    seeds=parse_int_list(args.seeds, "--seeds"), regimes=_split(args.regimes), models=models,
                    output=Path(args.output), config=args.config, run_args=run_args, overrides=list(args.overrides))


def make_launcher(args: argparse.Namespace):
    """The launcher the arguments ask for."""
    from pathlib import Path

    from odinw_bench.errors import UserError
    from odinw_bench.runs.launchers import LocalLauncher, PoolLauncher, SubmititLauncher
    from odinw_bench.runs.submitted import JOBS_FILE

    if args.launcher == "local":
        gpus = _split(args.gpus)
        if args.threads is not None and args.threads < 1:
            raise UserError(f"expected at least 1 thread, got {args.threads}", field="--threads")
        if args.workers == 1 and not gpus:
            return LocalLauncher(threads=args.threads)
        if args.workers < 1:
            raise UserError(f"expected at least 1 worker, got {args.workers}", field="--workers")
        return PoolLauncher(args.workers, gpus=gpus, threads=args.threads)
    cluster = "slurm" if args.launcher == "slurm" else "local"
    log_dir = Path(args.slurm_log_dir) if args.slurm_log_dir else Path(args.output) / "slurm"
    gpus = args.slurm_gpus_per_job if args.slurm_gpus_per_job is not None else (1 if cluster == "slurm" else 0)
    return SubmititLauncher(cluster, log_dir, partition=args.slurm_partition, timeout_min=args.slurm_time,
                            gpus_per_job=gpus, array_parallelism=args.slurm_array_parallelism,
                            cpus_per_job=args.slurm_cpus_per_job, account=args.slurm_account, qos=args.slurm_qos,
                            mem=_slurm_mem(args.slurm_mem), constraint=args.slurm_constraint,
                            sbatch_options=sbatch_options(args.slurm_option), setup=args.slurm_setup,
                            jobs_file=Path(args.output) / JOBS_FILE)


def sbatch_options(items: list[str]) -> dict[str, str | bool]:
    """``["mail-type=END", "exclusive"]`` -> ``{"mail-type": "END", "exclusive": True}`` (``#SBATCH --KEY[=VALUE]``)."""
    import re

    from odinw_bench.errors import UserError

    options: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or (sep and not value.strip()):
            raise UserError(f"expected KEY or KEY=VALUE of an #SBATCH option, got {item!r}", field="--slurm-option")
        options[key] = value.strip() if sep else True
    return options


def _slurm_mem(text: str | None) -> str | None:
    import re

    from odinw_bench.errors import UserError

    if text is not None and not re.fullmatch(r"\d+[KMGT]?", text.strip(), flags=re.IGNORECASE):
        raise UserError(f"expected an amount like 64G or 32000M, got {text!r}", field="--slurm-mem")
    return None if text is None else text.strip().upper()


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from odinw_bench.runs.sweep import listing, plan_sweep, run_sweep

    spec = grid_spec(args)
    launcher = None if args.dry_run else make_launcher(args)  # bad launcher options fail before planning
    cells = plan_sweep(spec, fetch=not args.dry_run, check_data=not args.dry_run)
    if args.dry_run:
        print(listing(cells))
        n = {s: sum(c.state == s for c in cells) for s in ("done", "failed", "left")}
        print(f"{len(cells)} cells: {n['done']} done, {n['failed']} failed, {n['left']} left (dry run: nothing ran)")
        _print_submitted(cells, Path(args.output))
        return 0
    summary = run_sweep(cells, launcher, lambda line: print(line, flush=True), retry_failed=args.retry_failed)
    print(summary.text())
    if summary.counts["done"]:
        _print_table(cells, spec)
    return 0 if summary.ok else 1


def _print_submitted(cells, output) -> None:
    """Cells not done whose job an earlier sweep submitted (without asking the scheduler whether it still runs)."""
    from odinw_bench.runs.submitted import JOBS_FILE, SubmittedJobs, cell_key

    jobs = SubmittedJobs(output / JOBS_FILE)
    recorded = jobs.read()
    ids = [recorded[key]["job_id"] for key in (cell_key(c.argv) for c in cells if c.state != "done") if key in recorded]
    if ids:
        print(f"{len(ids)} of the cells not done have jobs submitted by an earlier sweep ({', '.join(ids)}; see "
              f"{jobs.path}): a rerun waits for those still queued or running instead of submitting them again")


def _print_table(cells, spec) -> None:
    """The leaderboard of this sweep's records (mean ± std over seeds), as ``report`` prints it."""
    import logging

    from odinw_bench.errors import UserError
    from odinw_bench.report.formats import format_table
    from odinw_bench.report.grid import build_report
    from odinw_bench.results.records import read_record

    records = [read_record(c.record_path) for c in cells if c.state == "done"]
    tasks = list(dict.fromkeys(c.task for c in cells))
    try:
        rep = build_report(records, tasks=tasks, seeds=list(spec.seeds), allow_partial=True)
        print(format_table(rep))
    except UserError as err:  # the sweep itself succeeded; a table that cannot be built is only reported
        logging.getLogger(__name__).warning("no table: %s", err)
    print(f"tables and CSV/Markdown files: python -m odinw_bench report {spec.output / 'runs'}")
