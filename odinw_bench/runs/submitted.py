"""The submitit jobs of a sweep, recorded in its output folder so that a rerun never submits a pending cell twice.

``<output>/sweep_jobs.json`` maps each submitted cell (its ``run`` arguments without ``--resume``, hashed) to its
job: ``job_id``, ``cluster``, submitit's ``folder``, the cell's ``argv`` and ``submitted_at``. A sweep adds its jobs
as soon as the scheduler accepted them and drops each one when it ends, so what a killed sweep leaves behind is
what may still be queued or running. A rerun of the sweep then

- waits for a cell whose recorded job is still pending or running (SLURM: ``sacct`` says so; local executor: its
  process is alive), instead of submitting it again;
- submits a cell again once its job ended without leaving a record (killed, out of memory, ...).

The file is replaced atomically under a lock, so two sweeps writing into one output folder never lose an entry.

Example::

    jobs = SubmittedJobs(Path("results") / JOBS_FILE)
    active = jobs.active(cluster="slurm")            # key -> submitit job still queued or running
    jobs.add({cell_key(argv): job_entry(job, "slurm", folder, argv)})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

JOBS_FILE = "sweep_jobs.json"
#: SLURM states (``sacct``) of a job that is queued, running or about to run again.
ACTIVE_SLURM_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                                 "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "PREEMPTED", "SIGNALING",
                                 "STAGE_OUT", "READY"})
RESUME_FLAG = "--resume"


def cell_key(argv: Sequence[str]) -> str:
    """A cell's identity across sweeps: its ``run`` arguments, except ``--resume`` (added once it has a checkpoint)."""
    canonical = json.dumps([a for a in argv if a != RESUME_FLAG], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def job_entry(job_id: str, cluster: str, folder: str | Path, argv: Sequence[str]) -> dict[str, Any]:
    """What the file holds for one submitted cell."""
    from odinw_bench.results.provenance import utc_now

    return {"job_id": str(job_id), "cluster": cluster, "folder": str(folder), "argv": list(argv),
            "submitted_at": utc_now()}


class SubmittedJobs:
    """The jobs file of one output folder.

    Args:
        path: The JSON file (``<output>/sweep_jobs.json``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path.with_name(f".{self.path.name}.lock"))):
            yield

    def read(self) -> dict[str, dict[str, Any]]:
        """Cell key -> job entry (empty when there is no file).

        Raises:
            UserError: Naming the file if it is not a jobs file.
        """
        from odinw_bench.jsonio import read_json_file

        if not self.path.is_file():
            return {}
        data = read_json_file(self.path, what="sweep jobs file")
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if not isinstance(jobs, dict) or not all(_is_entry(e) for e in jobs.values()):
            raise UserError("not a sweep jobs file (expected {\"jobs\": {key: {job_id, cluster, folder, argv}}}); "
                            "delete it if no job of this sweep is queued or running", path=self.path, field="jobs")
        return jobs

    def _write(self, jobs: Mapping[str, Any]) -> None:
        from odinw_bench.atomic import atomic_write_text

        atomic_write_text(self.path, json.dumps({"jobs": dict(jobs)}, indent=2, sort_keys=True) + "\n")

    def add(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Record jobs just submitted (replacing older entries of the same cells)."""
        if not entries:
            return
        with self._locked():
            jobs = self.read()
            jobs.update({key: dict(entry) for key, entry in entries.items()})
            self._write(jobs)

    def remove(self, keys: Iterable[str]) -> None:
        """Forget jobs that ended; the file goes away when no job is left."""
        keys = set(keys)
        with self._locked():
            jobs = self.read()
            if not keys & set(jobs):
                return
            left = {key: entry for key, entry in jobs.items() if key not in keys}
            if left:
                self._write(left)
            else:
                self.path.unlink(missing_ok=True)

    def active(self, cluster: str) -> dict[str, Any]:
        """Cell key -> a submitit job object for each recorded job of ``cluster`` that is still queued or running.

        Entries of jobs that ended are dropped from the file on the way.
        """
        jobs = {key: entry for key, entry in self.read().items() if entry["cluster"] == cluster}
        if not jobs:
            return {}
        attach = _attach_slurm if cluster == "slurm" else _attach_local
        alive = attach(jobs)
        ended = set(jobs) - set(alive)
        if ended:
            logger.info("%d recorded jobs ended: %s", len(ended), ", ".join(jobs[k]["job_id"] for k in sorted(ended)))
            self.remove(ended)
        return alive


def _is_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("job_id", "cluster", "folder")) \
        and isinstance(entry.get("argv"), list)


def _attach_slurm(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The SLURM jobs that are still queued or running, as ``submitit.SlurmJob`` objects (one ``sacct`` call)."""
    from submitit import SlurmJob

    handles = {key: SlurmJob(folder=entry["folder"], job_id=entry["job_id"]) for key, entry in jobs.items()}
    alive: dict[str, Any] = {}
    if not handles:
        return alive
    watcher = next(iter(handles.values())).watcher
    watcher.update()  # one sacct call for every registered job
    for key, job in handles.items():
        state = watcher.get_state(job.job_id, mode="cache").split()[0].upper()  # "CANCELLED by 123" -> CANCELLED
        if state in ACTIVE_SLURM_STATES and not job.paths.result_pickle.exists():
            alive[key] = job
    return alive


class LocalJobHandle:
    """A job of submitit's local executor started by an earlier sweep process: its id is its controller's pid."""

    def __init__(self, folder: str | Path, job_id: str):
        from submitit.local.local import LocalJob

        self._job = LocalJob(folder=folder, job_id=job_id)
        self.job_id = job_id

    def done(self) -> bool:
        return self._job.paths.result_pickle.exists() or not _process_alive(self.job_id)

    def result(self) -> Any:
        return self._job.result()


def _process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, but another user's process
        return True
    return True


def _attach_local(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    handles = {key: LocalJobHandle(entry["folder"], entry["job_id"]) for key, entry in jobs.items()}
    return {key: handle for key, handle in handles.items() if not handle.done()}
