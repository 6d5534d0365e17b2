"""Run records: one JSON file per run, the single source of truth for every number odinw_bench reports.

A record says exactly what was run (task + version + YAML hash, split, prompt, shots, seed, sampled image ids,
regime, model + checkpoint hash, resolved config), what came out (COCO metrics, per-category AP, parameter counts,
timings) and where (git commit + dirty flag, library versions, GPU). CSV leaderboards, Markdown tables and W&B
summaries are derived from these files (:mod:`odinw_bench.report`).

Example::

    from odinw_bench import results

    run_id = results.make_run_id("aquarium", 1, "glip_tiny", ckpt_sha, "prompt_tuning", 1, 3, config)
    record = results.make_record(run_id=run_id, task={...}, split="test", ..., metrics={"AP": 0.42, ...})
    path = results.record_path("results", record)
    results.write_record(path, record)
    results.append_leaderboard_row("results/leaderboard.csv", record)

Metrics are fractions in [0, 1] as pycocotools returns them; ``NaN`` ("no ground truth in this area") is stored as
``null`` so that every record is strict JSON.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypedDict, is_typeddict

from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Metric keys of the COCO summary, in pycocotools' order.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: Key of the validation AP of the selected (best-val) checkpoint, when model selection is used.
SELECT_VAL_AP = "select/val_AP"


class TaskInfo(TypedDict):
    """Which task: ``name`` (YAML stem), ``version``, ``sha256`` of its YAML (None if unknown), ``display_name``."""

    name: str
    version: int
    sha256: str | None
    display_name: str


class PromptInfo(TypedDict):
    """``variant`` (``"default"`` or e.g. ``odinw_35``) and the exact ``captions`` seen (one per prompt chunk)."""

    variant: str
    captions: list[str]


class SampleInfo(TypedDict):
    """The k-shot sample: ``sampler`` (``glip``, ``prepared``), sha256 hex[:16] of the sorted train image ids and
    their count, the same for the validation images used for selection (None: full split or none), and
    ``shortfall`` = {category name: images available} for categories with fewer than k images."""

    sampler: str
    train_ids_hash: str | None
    train_count: int
    val_ids_hash: str | None
    val_count: int | None
    shortfall: dict[str, int]


class ModelInfo(TypedDict):
    """``name`` of the model preset or config, ``checkpoint`` path or hub id, and its ``checkpoint_sha256``."""

    name: str
    checkpoint: str | None
    checkpoint_sha256: str | None


class ParamsInfo(TypedDict):
    """Parameter counts as run: ``trainable`` under the regime, and ``total``."""

    trainable: int | None
    total: int | None


class GitInfo(TypedDict):
    """``commit`` of the odinw_bench checkout and ``dirty`` (uncommitted changes present)."""

    commit: str
    dirty: bool


class RunRecord(TypedDict):
    """One run, schema version 1. The type annotations are the schema: :func:`validate_record` checks them.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION` of the writer; readers refuse newer versions.
        run_id: :func:`make_run_id` of the run's identity; also part of the file name.
        created_at: ISO-8601 UTC time the run started.
        duration_s: Wall time of the whole run in seconds (None if unknown).
        status: ``"ok"``, or ``"failed"`` with ``error`` holding the error text.
        error: Error text for failed runs, else None.
        task: See :class:`TaskInfo`.
        split: Name of the evaluated split (``test``, ``val``, ``minival``).
        prompt: See :class:`PromptInfo`.
        shots: Images per category (``0`` = zero-shot) or ``"all"`` (full training data).
        seed: Sampling and training seed.
        regime: ``zero_shot``, ``linear_probe``, ``prompt_tuning`` or ``full``.
        sample: See :class:`SampleInfo`.
        model: See :class:`ModelInfo`.
        config: The fully resolved run config as a plain dict.
        metrics: :data:`COCO_METRICS` in [0, 1] (None where pycocotools has no value), ``AP-<category>``
            per-category AP, and :data:`SELECT_VAL_AP` when model selection was used.
        params: See :class:`ParamsInfo`.
        git: See :class:`GitInfo`; None outside a git checkout.
        env: python, torch, torchvision, transformers, lightning, pycocotools, odinw_bench versions, cuda, gpu_name.
        timings: Named durations in seconds (``fit_s``, ``eval_s``, ...).
    """

    schema_version: int
    run_id: str
    created_at: str
    duration_s: float | None
    status: Literal["ok", "failed"]
    error: str | None
    task: TaskInfo
    split: str
    prompt: PromptInfo
    shots: int | Literal["all"]
    seed: int
    regime: str
    sample: SampleInfo
    model: ModelInfo
    config: dict[str, Any]
    metrics: dict[str, float | None]
    params: ParamsInfo
    git: GitInfo | None
    env: dict[str, str | None]
    timings: dict[str, float]


# AP/AR metrics are fractions; a value above 1 almost always means someone stored percentages.
_FRACTION_KEY = re.compile(r"^(select/val_)?A[PR]")


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
) -> RunRecord:
    """Assemble a record, filling in schema version, git state, environment and creation time.

    A record with ``error`` set has status ``"failed"``; otherwise ``"ok"``. The result is validated.
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
    }
    return validate_record(_plain(record))


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
    clean = validate_record(_plain(record), path=path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def serialise(fh: io.TextIOBase) -> None:
        # Streams into the temp file; if encoding fails halfway, _atomic_write deletes the partial file.
        json.dump(clean, fh, indent=2, default=_json_default, allow_nan=False)
        fh.write("\n")

    _atomic_write(path, serialise)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda fh: fh.write(text))
    return path


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Whatever failed, the half-written temp file must not survive: readers only ever see whole files.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/file system allows fsync on a directory.
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _plain(value: Any) -> Any:
    """Recursively turn NaN/inf into None and numpy scalars into Python numbers (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("run record not found", path=path) from None
    except OSError as err:
        raise UserError(f"cannot read run record: {err.strerror}", path=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})", path=path) from None
    return validate_record(data, path=path)


def validate_record(data: Any, *, path: str | Path | None = None) -> RunRecord:
    """Check ``data`` against :class:`RunRecord` (its type annotations are the schema) and return it.

    Unknown extra keys are allowed, so optional fields can be added without a new schema version.

    Raises:
        UserError: Naming ``path`` and the dotted field that is missing or has the wrong type or value.
    """
    if not isinstance(data, dict):
        raise UserError("a run record must be a JSON object", path=path)
    version = data.get("schema_version")
    if _is_int(version) and version > SCHEMA_VERSION:
        raise UserError(
            f"schema_version {version} is newer than this odinw_bench reads ({SCHEMA_VERSION}); upgrade odinw_bench",
            path=path,
            field="schema_version",
        )
    _check_type(data, RunRecord, "", path)
    if version != SCHEMA_VERSION:
        raise UserError(f"unsupported schema_version {version}", path=path, field="schema_version")
    if _is_int(data["shots"]) and data["shots"] < 0:
        raise UserError("shots must be >= 0 or 'all'", path=path, field="shots")
    if data["status"] == "failed" and not data["error"]:
        raise UserError("a failed run must carry its error text", path=path, field="error")
    if data["status"] == "ok" and data["metrics"].get("AP") is None:
        raise UserError("a successful run must have a numeric AP", path=path, field="metrics.AP")
    for name, value in data["metrics"].items():
        if value is not None and _FRACTION_KEY.match(name) and not 0.0 <= value <= 1.0:
            raise UserError(
                f"{value} is outside [0, 1]; metrics are stored as fractions, not percentages",
                path=path,
                field=f"metrics.{name}",
            )
    return data  # type: ignore[return-value]


def _check_type(value: Any, hint: Any, field: str, path) -> None:
    """Raise a UserError naming ``field`` unless ``value`` matches the annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_typeddict(hint):
        if not isinstance(value, dict):
            raise UserError(f"expected an object, got {_describe(value)}", path=path, field=field or None)
        for key, sub in typing.get_type_hints(hint).items():
            sub_field = f"{field}.{key}" if field else key
            if key not in value:
                raise UserError("missing field", path=path, field=sub_field)
            _check_type(value[key], sub, sub_field, path)
        return
    if origin in (typing.Union, types.UnionType):
        if not any(_matches(value, option) for option in args):
            raise UserError(f"expected {_hint_name(hint)}, got {_describe(value)}", path=path, field=field)
        for option in args:  # descend into the matching container for a precise field name
            if typing.get_origin(option) is dict or is_typeddict(option):
                if isinstance(value, dict):
                    _check_type(value, option, field, path)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected an object, got {_describe(value)}", path=path, field=field)
        for key, item in value.items():
            _check_type(item, args[1], f"{field}.{key}", path)
        return
    if not _matches(value, hint):
        raise UserError(f"expected {_hint_name(hint)}, got {_describe(value)}", path=path, field=field)


def _matches(value: Any, hint: Any) -> bool:
    """Shallow type test of ``value`` against one annotation (containers: only the container type)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict or is_typeddict(hint):
        return isinstance(value, dict)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_number(value)
    return isinstance(value, hint)


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        return f"a list of {_hint_name(typing.get_args(hint)[0])}"
    return {float: "number", int: "integer", str: "string", bool: "boolean"}.get(hint, "an object")


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.60}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def iter_records(paths_or_dirs: Iterable[str | Path]) -> Iterator[tuple[Path, RunRecord]]:
    """Yield ``(path, record)`` for each record file given, and for every ``*.json`` under each folder given.

    Folders are searched recursively in sorted order; ``*_predictions.json`` files (COCO results stored beside a
    record) and hidden temp files are skipped.

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
            )
        elif item.exists():
            files = [item]
        else:
            raise UserError("no such results file or folder", path=item)
        for file in files:
            yield file, read_record(file)


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with seconds (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def collect_git(cwd: str | Path | None = None) -> GitInfo | None:
    """Commit and dirty flag of the odinw_bench checkout (``cwd`` defaults to the package's folder).

    Returns:
        None outside a git repository or where git is not installed.
    """
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


# Distribution names whose versions go into every record; read from package metadata, never by importing.
_ENV_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "lightning": "pytorch-lightning",
    "pycocotools": "pycocotools",
    "odinw_bench": "odinw_bench",
}


def collect_env() -> dict[str, str | None]:
    """Python and library versions, CUDA version and GPU name, without importing heavy packages.

    CUDA and GPU are read from torch only if the run already imported it (a run that used the GPU has).
    """
    from importlib import metadata

    env: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _ENV_PACKAGES.items():
        try:
            env[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[key] = None
    env["cuda"], env["gpu_name"] = None, None
    torch = sys.modules.get("torch")
    if torch is not None:
        env["cuda"] = getattr(torch.version, "cuda", None)
        try:
            if torch.cuda.is_available():
                env["gpu_name"] = torch.cuda.get_device_name(0)
        except Exception:  # a broken driver must not fail the run record
            logger.debug("could not query the GPU name", exc_info=True)
    return env


# ---- Leaderboard CSV: one flat row per run, appended by concurrent runs ----

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
        "regime": record["regime"],
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

    An exclusive ``fcntl.flock`` on ``<csv_path>.lock`` serialises writers. The header is written once, with the
    first row. A new row is appended with a single ``write`` of the complete line, then flushed and fsynced, so
    a reader never sees a partial row. **A run_id already in the file is replaced** (the newest record of a run
    wins, e.g. a rerun after a failure); replacing rewrites the file atomically.

    Raises:
        UserError: If the existing file has different columns (written by another schema version).
    """
    import fcntl  # POSIX only; imported here so that reading records works everywhere

    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    row = leaderboard_row(validate_record(_plain(record)))
    line = _csv_line(row.values())
    lock_fd = os.open(f"{csv_path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        lines = _read_leaderboard_lines(csv_path)
        if not lines:
            _append(csv_path, _csv_line(LEADERBOARD_COLUMNS) + line, truncate=True)
            return csv_path
        ids = [next(csv.reader([ln]), [""])[0] for ln in lines[1:]]
        if row["run_id"] in ids:
            index = 1 + ids.index(row["run_id"])
            lines = lines[:index] + [line] + [ln for ln in lines[index + 1 :] if not ln.startswith(f"{row['run_id']},")]
            atomic_write_text(csv_path, "".join(lines))
        else:
            _append(csv_path, line)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    return csv_path


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
    fd = os.open(csv_path, flags, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # regular files write fully; a short write means the disk is full
            raise OSError(f"short write to {csv_path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
