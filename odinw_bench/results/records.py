"""Run records: one JSON file per run, the single source of truth for every number odinw_bench reports.

A record says exactly what was run (task + version + YAML hash, split, prompt, shots, seed, sampled image ids,
regime, model + checkpoint hash, resolved config), what came out (COCO metrics, per-category AP, parameter counts,
timings) and where (git commit + dirty flag, library versions, GPU; collected by :mod:`odinw_bench.results.provenance`).
The CSV leaderboard (:mod:`odinw_bench.results.leaderboard`), Markdown tables and W&B summaries are derived from these
files (:mod:`odinw_bench.report.build`).

Example::

    from odinw_bench.results import leaderboard, records

    run_id = records.make_run_id("aquarium", 1, "glip_tiny", ckpt_sha, "prompt_tuning", 1, 3, config)
    record = records.make_record(run_id=run_id, task={...}, split="test", ..., metrics={"AP": 0.42, ...})
    path = records.record_path("results", record)
    records.write_record(path, record)
    leaderboard.append_leaderboard_row("results/leaderboard.csv", record)

Metrics are fractions in [0, 1] as pycocotools returns them; ``NaN`` ("no ground truth in this area") is stored as
``null`` so that every record is strict JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from odinw_bench.atomic import atomic_write
from odinw_bench.errors import UserError
from odinw_bench.jsonio import read_json_file
from odinw_bench.results.provenance import collect_env, collect_git, utc_now
from odinw_bench.results.schema import (
    SCHEMA_VERSION,
    EpochInfo,
    ModelInfo,
    ParamsInfo,
    PromptInfo,
    RunRecord,
    SampleInfo,
    SourceInfo,
    TaskInfo,
    validate_record,
)

logger = logging.getLogger(__name__)

def make_run_id(
    task: str,
    task_version: int,
    model: str,
    checkpoint_sha: str | None,
    regime: str,
    shots: int | str,
    seed: int,
    config: Mapping[str, Any],
) -> str:
    """A short stable hash of what identifies a run, so re-running the same thing gives the same id.

    Args:
        task: Task name.
        task_version: Task version.
        model: Model preset or config name.
        checkpoint_sha: sha256 of the checkpoint (None for random init).
        regime: Tuning regime name.
        shots: Shots per category or ``"all"``.
        seed: Seed.
        config: The resolved run config (plain dict; keys are sorted, so dict order does not matter).

    Returns:
        12 hex characters of the sha256 of the canonical JSON of all arguments.
    """
    identity = {
        "task": task,
        "task_version": int(task_version),
        "model": model,
        "checkpoint_sha": checkpoint_sha,
        "regime": regime,
        "shots": shots,
        "seed": int(seed),
        "config": config,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def make_record(
    *,
    run_id: str,
    task: TaskInfo,
    split: str,
    prompt: PromptInfo,
    shots: int | str,
    seed: int,
    regime: str,
    sample: SampleInfo,
    model: ModelInfo,
    config: dict[str, Any],
    metrics: Mapping[str, float | None] | None = None,
    params: ParamsInfo | None = None,
    duration_s: float | None = None,
    timings: Mapping[str, float] | None = None,
    created_at: str | None = None,
    error: str | None = None,
    history: list[EpochInfo] | None = None,
    peak_gpu_memory_bytes: int | None = None,
    source: SourceInfo | None = None,
    protocol_differences: list[str] | None = None,
    search: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Assemble a record, filling in schema version, git state, environment and creation time.

    A record with ``error`` set has status ``"failed"``; otherwise ``"ok"``. ``protocol_differences`` (the
    regime's departures from GLIP's protocol) is written only when there are some. The result is validated.
    """
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": created_at or utc_now(),
        "duration_s": duration_s,
        "status": "failed" if error else "ok",
        "error": error,
        "task": dict(task),
        "split": split,
        "prompt": dict(prompt),
        "shots": shots,
        "seed": seed,
        "regime": regime,
        "sample": dict(sample),
        "model": dict(model),
        "config": config,
        "metrics": dict(metrics or {}),
        "params": dict(params or {"trainable": None, "total": None}),
        "git": collect_git(),
        "env": collect_env(),
        "timings": dict(timings or {}),
        "history": None if history is None else [dict(entry) for entry in history],
        "peak_gpu_memory_bytes": peak_gpu_memory_bytes,
        "source": None if source is None else dict(source),
    }
    if protocol_differences:
        record["protocol_differences"] = list(protocol_differences)
    if search:
        record["search"] = dict(search)
    return validate_record(to_plain(record))


def record_path(results_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Where a record lives: ``<results_dir>/runs/<task>/<model>/<regime>/k<shots>_s<seed>_<run_id>.json``."""
    parts = [record["task"]["name"], record["model"]["name"], record["regime"]]
    folder = Path(results_dir, "runs", *(_path_part(p) for p in parts))
    return folder / f"k{record['shots']}_s{record['seed']}_{record['run_id']}.json"


def _path_part(text: str) -> str:
    # Model names may be hub ids ("org/name"); keep each record path exactly three folders deep.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)) or "_"


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Validate ``record`` and write it atomically as JSON: either the complete file appears, or nothing changes.

    Raises:
        UserError: If the record does not validate.
    """
    path = Path(path)
    clean = validate_record(to_plain(record), path=path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def serialise(fh: TextIO) -> None:
        # Streams into the temp file; if encoding fails halfway, atomic_write deletes the partial file.
        json.dump(clean, fh, indent=2, default=_json_default, allow_nan=False)
        fh.write("\n")

    atomic_write(path, serialise)
    return path


def to_plain(value: Any) -> Any:
    """Recursively turn NaN/inf into None and numpy scalars into Python numbers (strict JSON).

    Returns a new structure (mappings become dicts with str keys, tuples become lists); ``value`` is not changed.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # numpy / torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    """Serialise the few non-JSON types a resolved config may hold (paths, sets, dates)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_record(path: str | Path) -> RunRecord:
    """Read and validate one record file.

    Raises:
        UserError: Naming the file (and field) if it is missing, not JSON, or does not match the schema.
    """
    path = Path(path)
    data = read_json_file(path, what="run record")
    return validate_record(data, path=path)


_NOT_RECORDS = ("sweep_jobs.json",)


def iter_records(paths_or_dirs: Iterable[str | Path]) -> Iterator[tuple[Path, RunRecord]]:
    """Yield ``(path, record)`` for each record file given, and for every ``*.json`` under each folder given.

    Folders are searched recursively in sorted order; ``*_predictions.json`` files (COCO results stored beside a
    record), a sweep's ``sweep_jobs.json`` and hidden temp files are skipped.

    Raises:
        UserError: For a path that does not exist, or a record that does not validate.
    """
    for item in paths_or_dirs:
        item = Path(item)
        if item.is_dir():
            files = sorted(
                p
                for p in item.rglob("*.json")
                if not p.name.startswith(".") and not p.name.endswith("_predictions.json")
                and p.name not in _NOT_RECORDS
            )
        elif item.exists():
            files = [item]
        else:
            raise UserError("no such results file or folder", path=item)
        for file in files:
            yield file, read_record(file)
