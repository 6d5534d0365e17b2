"""Where the cells of a sweep run: in this process, in a pool of local worker processes, or as a submitit job array.

A cell is the argument list of one ``python -m odinw_bench run`` (one task, shot count, seed, regime and model).
Every launcher runs :func:`run_cell` (a top-level function of plain data, so process pools and submitit can
pickle it) on each cell and calls ``on_finish(index, result)`` as cells end. The run records on disk stay the
source of truth: :mod:`odinw_bench.runs.sweep` reads them back after a launcher returns.

Example::

    from odinw_bench.runs.launchers import LocalLauncher, PoolLauncher, SubmititLauncher, run_cell

    launcher = PoolLauncher(workers=2, gpus=["0", "1"])      # or LocalLauncher(), SubmititLauncher("slurm", ...)
    results = launcher.launch([["--task", "demo", "--shots", "1", "--model", "glip-micro"]], run_cell, print)

Under submitit every cell is a :class:`CellJob`: SLURM requeues it on timeout or preemption and it resumes from its
``last.ckpt``; submitted jobs are recorded in the output folder until they end, so a rerun of the sweep never
submits a queued or running cell a second time.

A worker keeps what it loaded in a :class:`~odinw_bench.runs.cache.RunCache`: a checkpoint read for one cell is
reused by its later cells (keyed by path, size and mtime), and so are the task splits it indexed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

from odinw_bench.errors import UserError
from odinw_bench.runs.cache import process_cache, reset_process_cache
from odinw_bench.runs.submitted import (
    JOBS_FILE,
    RESUME_FLAG,
    SubmittedJobs,
    cell_key,
    job_entry,
)

logger = logging.getLogger(__name__)

#: What a cell returns: ``status`` (``ok``/``failed``), ``run_id``, ``error``, ``record`` (path) and ``cache``
#: (this process's :attr:`~odinw_bench.runs.cache.RunCache.reads`), all plain data.
CellResult = dict
CellFn = Callable[[list[str]], CellResult]
OnFinish = Callable[[int, CellResult], None]


class Launcher(Protocol):
    """Runs cells; ``concurrency`` is how many may run at once (for progress lines)."""

    concurrency: int

    def launch(self, cells: Sequence[list[str]], cell_fn: CellFn, on_finish: OnFinish) -> dict[int, CellResult]:
        """Run ``cell_fn`` on every cell, call ``on_finish`` as each ends, return the results by cell index."""
        ...  # pragma: no cover


def run_cell(argv: list[str]) -> CellResult:
    """Run one cell (the arguments of a ``run`` for exactly one run) in this process.

    A run that fails writes its failed record (the runner does) and comes back as ``status: failed``; it never
    stops the sweep. Only ``KeyboardInterrupt`` propagates.
    """
    from odinw_bench.runs import runner
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    cache = process_cache()
    result: CellResult = {"status": "failed", "run_id": None, "error": None, "record": None}
    try:
        args = parse_run_args(argv)
        (request,) = requests_from_args(args)
        outcome = runner.run_request(request, cache=cache)
        result.update(status="ok", run_id=outcome.record["run_id"], record=str(outcome.record_path))
    except UserError as err:
        result["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - one failed cell must not stop the others
        logger.error("run %s failed", " ".join(argv), exc_info=True)
        result["error"] = f"{type(err).__name__}: {err}"
    result["cache"] = dict(cache.reads)
    return result


class LocalLauncher:
    """Runs the cells one after the other in this process, sharing one :class:`~odinw_bench.runs.cache.RunCache`.

    Args:
        threads: torch's CPU threads while the cells run (restored afterwards); None leaves torch's setting.
    """

    concurrency = 1

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def launch(self, cells: Sequence[list[str]], cell_fn: CellFn, on_finish: OnFinish) -> dict[int, CellResult]:
        reset_process_cache()
        results: dict[int, CellResult] = {}
        restore = _set_threads(self.threads)
        try:
            for index, argv in enumerate(cells):
                results[index] = cell_fn(list(argv))
                on_finish(index, results[index])
        finally:
            reset_process_cache()  # a CLI process should not keep a checkpoint alive after its sweep
            _set_threads(restore)
        return results


def _set_threads(threads: int | None) -> int | None:
    """Set torch's intra-op threads; returns the previous count (None: nothing was changed)."""
    if threads is None:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _init_worker(gpu_queue: Any, threads: int, log_level: int) -> None:
    """Pin a fresh worker to one GPU and its share of CPU threads, before torch is imported in it."""
    gpu = gpu_queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")


class PoolLauncher:
    """Runs the cells in ``workers`` spawned processes; each keeps its own :class:`~odinw_bench.runs.cache.RunCache` across its cells.

    Args:
        workers: Number of worker processes.
        gpus: GPU ids; worker i sees only ``gpus[i % len(gpus)]`` through ``CUDA_VISIBLE_DEVICES``.
        threads: CPU threads per worker (default: the CPU count split evenly, at least 1).
    """

    def __init__(self, workers: int, gpus: Sequence[str] = (), threads: int | None = None):
        if workers < 1:
            raise UserError(f"expected at least 1 worker, got {workers}", field="--workers")
        self.concurrency = workers
        self.gpus = list(gpus)
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)

    def launch(self, cells: Sequence[list[str]], cell_fn: CellFn, on_finish: OnFinish) -> dict[int, CellResult]:
        import multiprocessing

        # spawn, not fork: a forked child would inherit this process's torch/CUDA state and threads.
        ctx = multiprocessing.get_context("spawn")
        gpu_queue = ctx.Queue()
        for i in range(self.concurrency):
            gpu_queue.put(self.gpus[i % len(self.gpus)] if self.gpus else None)
        pool = ProcessPoolExecutor(self.concurrency, mp_context=ctx, initializer=_init_worker,
                                   initargs=(gpu_queue, self.threads, logging.getLogger().getEffectiveLevel()))
        results: dict[int, CellResult] = {}
        try:
            futures: dict[Future, int] = {pool.submit(cell_fn, list(argv)): i for i, argv in enumerate(cells)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=futures.get):
                    index = futures[future]
                    results[index] = _future_result(future)
                    on_finish(index, results[index])
        except BaseException:
            # Ctrl-C reaches the workers too; queued cells are dropped and stay "left" for the next sweep.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results


def _future_result(future: Future) -> CellResult:
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - a worker that died (killed, out of memory) fails its cell
        return {"status": "failed", "run_id": None, "error": f"worker died: {type(err).__name__}: {err}",
                "record": None}


class CellJob:
    """One cell as a submitit job that SLURM can requeue: on timeout or preemption submitit calls
    :meth:`checkpoint`, which resubmits the same cell with ``--resume`` so that it continues from its ``last.ckpt``.

    Args:
        argv: The cell's ``run`` arguments.
        cell_fn: What runs them (:func:`run_cell`).
        log_level: Logging level of the job's process (the sweep's own).
    """

    def __init__(self, argv: Sequence[str], cell_fn: CellFn = run_cell, log_level: int = logging.WARNING):
        self.argv, self.cell_fn, self.log_level = list(argv), cell_fn, log_level

    def __call__(self) -> CellResult:
        # A submitit job starts a bare interpreter: give it the sweep's log format and level.
        logging.basicConfig(level=self.log_level, format="%(levelname)s %(name)s: %(message)s")
        return self.cell_fn(list(self.argv))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The submission that replaces this one after a timeout or preemption (submitit's checkpointing)."""
        from submitit.helpers import DelayedSubmission

        argv = self.argv if RESUME_FLAG in self.argv else [*self.argv, RESUME_FLAG]
        logger.warning("requeued: %s continues from its last checkpoint", " ".join(argv))
        return DelayedSubmission(CellJob(argv, self.cell_fn, self.log_level))


class SubmititLauncher:
    """Submits the cells as one submitit job array (SLURM, or submitit's local executor without a cluster).

    Jobs are requeued on timeout or preemption and resume from their checkpoint (:class:`CellJob`). Submitted jobs
    are recorded in ``jobs_file`` until they end, so a rerun of the sweep waits for a cell that is still queued or
    running instead of submitting it twice (:mod:`odinw_bench.runs.submitted`).

    Args:
        cluster: ``slurm``, ``local`` (one subprocess per cell on this machine) or ``debug`` (in this process).
        log_dir: submitit's folder for job scripts, pickles and logs.
        partition, account, qos, constraint: SLURM ``--partition``, ``--account``, ``--qos``, ``--constraint``.
        mem: SLURM ``--mem`` of each job, e.g. ``64G``.
        timeout_min: Time limit of each job in minutes.
        gpus_per_job: GPUs of each job.
        array_parallelism: Jobs of the array that run at once (SLURM ``%N``); the local executor runs all.
        cpus_per_job: CPUs of each job (also its OMP threads under the local executor).
        sbatch_options: Further ``#SBATCH`` options, ``{"mail-type": "END", "exclusive": True}``.
        setup: Shell lines each SLURM job runs first (``module load ...``).
        jobs_file: Where submitted jobs are recorded (default: ``log_dir/sweep_jobs.json``; ``sweep`` passes
            ``<output>/sweep_jobs.json``).
        poll_s: Seconds between checks of the job states.

    Raises:
        UserError: For ``slurm`` where SLURM is not installed (no ``sbatch`` or ``srun`` on PATH).
    """

    def __init__(self, cluster: str, log_dir: str | Path, *, partition: str | None = None,
                 timeout_min: int | None = None, gpus_per_job: int | None = None,
                 array_parallelism: int | None = None, cpus_per_job: int | None = None, account: str | None = None,
                 qos: str | None = None, mem: str | None = None, constraint: str | None = None,
                 sbatch_options: Mapping[str, Any] | None = None, setup: Sequence[str] = (),
                 jobs_file: str | Path | None = None, poll_s: float = 2.0):
        if cluster == "slurm":
            _require_slurm()
        self.cluster, self.log_dir, self.poll_s = cluster, Path(log_dir), poll_s
        self.concurrency = array_parallelism or 0
        self.jobs = SubmittedJobs(Path(jobs_file) if jobs_file else self.log_dir / JOBS_FILE)
        self.params = {"name": "odinw_bench", "timeout_min": timeout_min, "gpus_per_node": gpus_per_job,
                       "cpus_per_task": cpus_per_job, "slurm_partition": partition,
                       "slurm_array_parallelism": array_parallelism, "slurm_account": account, "slurm_qos": qos,
                       "slurm_mem": mem, "slurm_constraint": constraint,
                       "slurm_additional_parameters": dict(sbatch_options) if sbatch_options else None,
                       "slurm_setup": list(setup) or None,
                       # Local jobs all run at once on this machine: one thread each unless told otherwise.
                       "local_setup": [f"export OMP_NUM_THREADS={cpus_per_job or 1}"]}

    def launch(self, cells: Sequence[list[str]], cell_fn: CellFn, on_finish: OnFinish) -> dict[int, CellResult]:
        jobs = self.submit(cells, cell_fn)
        self.concurrency = self.concurrency or len(jobs)
        return self.wait(jobs, {i: cell_key(argv) for i, argv in enumerate(cells)}, on_finish)

    def submit(self, cells: Sequence[list[str]], cell_fn: CellFn) -> dict[int, Any]:
        """Submit the cells that have no job queued or running yet; return every cell's job by index."""
        keys = [cell_key(argv) for argv in cells]
        recorded = self.jobs.active(self.cluster) if self.cluster != "debug" else {}
        jobs = {i: recorded[key] for i, key in enumerate(keys) if key in recorded}
        if jobs:
            logger.warning("%d cells already have a job queued or running (%s); waiting for those instead of "
                           "submitting them again", len(jobs), ", ".join(str(j.job_id) for j in jobs.values()))
        todo = [i for i in range(len(cells)) if i not in jobs]
        if not todo:
            return jobs
        submitted = self._submit_new([cells[i] for i in todo], cell_fn)
        jobs.update(zip(todo, submitted))
        if self.cluster != "debug":  # a debug job lives and dies with this process
            self.jobs.add({keys[i]: job_entry(job.job_id, self.cluster, self.log_dir, cells[i])
                           for i, job in zip(todo, submitted)})
        logger.info("submitted %d jobs (%s...) to %s; logs in %s", len(submitted), submitted[0].job_id,
                    self.cluster, self.log_dir)
        return jobs

    def _submit_new(self, cells: Sequence[list[str]], cell_fn: CellFn) -> list[Any]:
        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        executor = submitit.AutoExecutor(folder=str(self.log_dir), cluster=self.cluster)
        executor.update_parameters(**{k: v for k, v in self.params.items() if v is not None})
        log_level = logging.getLogger().getEffectiveLevel()
        try:
            with executor.batch():  # one job array on SLURM
                return [executor.submit(CellJob(argv, cell_fn, log_level)) for argv in cells]
        except (FailedJobError, FailedSubmissionError) as err:
            first_line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise UserError(f"the {self.cluster} scheduler refused the jobs: {first_line.strip()}",
                            field="--launcher") from err

    def wait(self, jobs: Mapping[int, Any], keys: Mapping[int, str], on_finish: OnFinish) -> dict[int, CellResult]:
        """Poll the jobs until all ended, calling ``on_finish`` and forgetting each job as it ends."""
        results: dict[int, CellResult] = {}
        pending = dict(jobs)
        try:
            while pending:
                for index, job in list(pending.items()):
                    if job.done():
                        results[index] = _job_result(job)
                        del pending[index]
                        if self.cluster != "debug":
                            self.jobs.remove([keys[index]])
                        on_finish(index, results[index])
                if pending:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            logger.warning("stopped waiting; %d submitted jobs keep running (logs in %s, job ids in %s); rerun the "
                           "sweep to collect them", len(pending), self.log_dir, self.jobs.path)
            raise
        return results


def _require_slurm() -> None:
    """One clear line where SLURM is absent, instead of submitit's traceback."""
    import shutil

    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"SLURM is not available here ({' and '.join(missing)} not found on PATH); run the sweep "
                        "on a SLURM login node, or use --launcher local or --launcher submitit-local",
                        field="--launcher")


def _job_result(job: Any) -> CellResult:
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - a job killed by the scheduler (time, memory) fails its cell
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {"status": "failed", "run_id": None, "record": None,
                "error": f"job {job.job_id} ended without a result: {first_line}"}
