"""The leaderboard CSV: one flat row per run, appended safely by many concurrent runs.

The run records (:mod:`odinw_bench.results.records`) stay the source of truth; this file is a convenient flat view of
them that a spreadsheet or ``pandas.read_csv`` opens directly. Writers serialise on a lock file, a row is
appended with one complete ``write``, a rerun of the same ``run_id`` replaces its row, and a torn last line left
by a crash is dropped rather than extended. :func:`repair_leaderboard` derives the rows again from the records
(``run`` and ``sweep`` call it), so a run killed between its record and its row loses nothing.

Example::

    from odinw_bench.results import leaderboard, records

    record = records.read_record("results/runs/aquarium/glip-t/prompt_tuning/k1_s3_0123456789ab.json")
    leaderboard.append_leaderboard_row("results/leaderboard.csv", record)
    leaderboard.repair_leaderboard("results/leaderboard.csv", "results/runs")  # rows of every ok record
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from odinw_bench.atomic import atomic_write_text
from odinw_bench.errors import UserError
from odinw_bench.results.records import read_record, to_plain
from odinw_bench.results.schema import COCO_METRICS, SELECT_VAL_AP, validate_record

logger = logging.getLogger(__name__)

#: Marks the regime of a run whose learning rate / weight decay were searched on val before it.
SEARCHED_SUFFIX = "+search"
#: Columns of the leaderboard CSV, in order. Metric values are fractions as in the record; empty = none.
LEADERBOARD_COLUMNS = (
    "run_id", "status", "task", "task_version", "split", "prompt", "model", "checkpoint_sha256", "regime",
    "shots", "seed", "sampler", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "val_AP",
    "trainable_params", "total_params", "duration_s", "created_at", "git_commit", "git_dirty",
)  # fmt: skip


def leaderboard_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a record into the :data:`LEADERBOARD_COLUMNS` (None for values it does not have)."""
    metrics, git = record["metrics"], record.get("git") or {}
    row = {
        "run_id": record["run_id"],
        "status": record["status"],
        "task": record["task"]["name"],
        "task_version": record["task"]["version"],
        "split": record["split"],
        "prompt": record["prompt"]["variant"],
        "model": record["model"]["name"],
        "checkpoint_sha256": record["model"]["checkpoint_sha256"],
        # A searched run (run --search) is its own row of every table: its lr / weight decay were chosen on val.
        "regime": record["regime"] + (SEARCHED_SUFFIX if record.get("search") else ""),
        "shots": record["shots"],
        "seed": record["seed"],
        "sampler": record["sample"]["sampler"],
        "val_AP": metrics.get(SELECT_VAL_AP),
        "trainable_params": record["params"]["trainable"],
        "total_params": record["params"]["total"],
        "duration_s": record["duration_s"],
        "created_at": record["created_at"],
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
    }
    row.update({name: metrics.get(name) for name in COCO_METRICS if name in LEADERBOARD_COLUMNS})
    return {col: row[col] for col in LEADERBOARD_COLUMNS}


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    # Newlines inside a value would split a row in two for line-based readers: flatten them.
    cells = ["" if v is None else str(v).replace("\r", " ").replace("\n", " ") for v in values]
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def append_leaderboard_row(csv_path: str | Path, record: Mapping[str, Any]) -> Path:
    """Add a record's row to a leaderboard CSV; safe when many processes append to the same file at once.

    An exclusive :class:`filelock.FileLock` on ``<csv_path>.lock`` serialises writers. The header is written once, with the
    first row. A new row is appended with a single ``write`` of the complete line, then flushed and fsynced, so
    a reader never sees a partial row. **A run_id already in the file is replaced** (the newest record of a run
    wins, e.g. a rerun after a failure); replacing rewrites the file atomically.

    Raises:
        UserError: If the record does not validate, or the existing file has different columns (written by
            another schema version).
    """
    from filelock import FileLock  # portable (POSIX and Windows), unlike fcntl

    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    row = leaderboard_row(validate_record(to_plain(record)))
    with FileLock(f"{csv_path}.lock"):
        _merge_rows(csv_path, {row["run_id"]: _csv_line(row.values())})
    return csv_path


def repair_leaderboard(csv_path: str | Path, records_dir: str | Path) -> list[str]:
    """Give every ok run record under ``records_dir`` its current row in the leaderboard; return the run ids fixed.

    The records are the source of truth and the leaderboard is derived from them: a row lost to a kill between
    writing a record and appending its row, or left stale by a rerun killed at that point, comes back here
    (replaced by run id, like :func:`append_leaderboard_row`). Rows without a record are kept; failed runs get
    no row; records that do not validate are skipped (``sweep`` reports them).

    Raises:
        UserError: If the existing file has different columns (written by another schema version).
    """
    from filelock import FileLock

    csv_path, records_dir = Path(csv_path), Path(records_dir)
    if not records_dir.is_dir():
        return []  # no records, nothing to derive: create no file
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{csv_path}.lock"):
        # Read under the lock: a writer replaces its record before it takes the lock for its row, so no stale
        # copy read here can overwrite the row of a newer record.
        return _merge_rows(csv_path, _record_lines(records_dir))


def _record_lines(records_dir: Path) -> dict[str, str]:
    """run_id -> leaderboard line of each readable ok record under ``records_dir`` (sorted by path)."""
    lines: dict[str, str] = {}
    for path in sorted(records_dir.rglob("*.json")):
        if path.name.startswith(".") or path.name.endswith("_predictions.json"):
            continue
        try:
            record = read_record(path)
        except UserError as err:
            logger.debug("leaderboard repair skips %s: %s", path, err)
            continue
        if record["status"] == "ok":
            row = leaderboard_row(record)
            lines[row["run_id"]] = _csv_line(row.values())
    return lines


def _merge_rows(csv_path: Path, wanted: Mapping[str, str]) -> list[str]:
    """Put each run_id's line in the file (append, or replace a different one); the caller holds the lock.

    Returns:
        The run ids whose line was added or replaced.
    """
    if not wanted:
        return []
    lines = _read_leaderboard_lines(csv_path)
    if not lines:
        _append(csv_path, _csv_line(LEADERBOARD_COLUMNS) + "".join(wanted.values()), truncate=True)
        return list(wanted)
    rows = lines[1:]
    ids = [next(csv.reader([ln]), [""])[0] for ln in rows]
    first = {run_id: rows[i] for i, run_id in reversed(list(enumerate(ids)))}  # run_id -> its first line
    stale = {run_id for run_id, line in wanted.items() if run_id in first and first[run_id] != line}
    missing = [run_id for run_id in wanted if run_id not in first]
    if stale:
        # The first row of a run id takes its new line, later duplicates go; one atomic rewrite for all.
        kept, seen = [], set()
        for run_id, line in zip(ids, rows):
            if run_id in stale:
                if run_id in seen:
                    continue
                seen.add(run_id)
                line = wanted[run_id]
            kept.append(line)
        atomic_write_text(csv_path, "".join([lines[0], *kept, *(wanted[i] for i in missing)]))
    elif missing:
        _append(csv_path, "".join(wanted[i] for i in missing))
    return [i for i in wanted if i in stale or i in missing]


def _read_leaderboard_lines(csv_path: Path) -> list[str]:
    """Lines of an existing leaderboard (with newlines), after checking its header; [] if absent or empty."""
    try:
        text = csv_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    if text and not text.endswith("\n"):
        # Only a crash during a write (power loss) leaves this; drop the torn line rather than extend it.
        logger.warning("%s: dropping an incomplete last line", csv_path)
        text = text[: text.rfind("\n") + 1]
        atomic_write_text(csv_path, text)
    lines = text.splitlines(keepends=True)
    if lines and next(csv.reader([lines[0]])) != list(LEADERBOARD_COLUMNS):
        raise UserError(
            "the leaderboard has different columns than this odinw_bench writes; move it aside to start a new one",
            path=csv_path,
            field="header",
        )
    return lines


def _append(csv_path: Path, text: str, *, truncate: bool = False) -> None:
    data = text.encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    fd = os.open(csv_path, flags, 0o666)  # the umask decides, as for open()
    try:
        written = os.write(fd, data)
        if written != len(data):  # regular files write fully; a short write means the disk is full
            raise OSError(f"short write to {csv_path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
