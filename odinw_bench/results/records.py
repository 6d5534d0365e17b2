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

import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

from typing_extensions import NotRequired, TypedDict

from odinw_bench.atomic import atomic_write
from odinw_bench.errors import UserError
from odinw_bench.jsonio import read_json_file
from odinw_bench.results.provenance import collect_env, collect_git, utc_now

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# pydantic's strict JSON rules for every part of a record: no bool for an int, no string for a number, no NaN.
# A plain dict (pydantic reads it as its ConfigDict), so importing this module does not import pydantic.
_STRICT = {"strict": True, "allow_inf_nan": False}

#: Metric keys of the COCO summary, in pycocotools' order.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: Key of the validation AP of the selected (best-val) checkpoint, when model selection is used.
SELECT_VAL_AP = "select/val_AP"


class TaskInfo(TypedDict):
    """Which task: ``name`` (YAML stem), ``version``, ``sha256`` of its YAML (None if unknown), ``display_name``."""

    __pydantic_config__ = _STRICT
    name: str
    version: int
    sha256: str | None
    display_name: str


class PromptInfo(TypedDict):
    """``variant`` (``"default"`` or e.g. ``odinw_35``) and the exact ``captions`` seen (one per prompt chunk)."""

    __pydantic_config__ = _STRICT
    variant: str
    captions: list[str]


class SampleInfo(TypedDict):
    """The k-shot sample: ``sampler`` (``glip``, ``prepared``, ``none``), the sorted train image ids with their
    sha256 hex[:16] and count, the same for the validation images used for selection (None: full split or none),
    and ``shortfall`` = {category name: images available} for categories with fewer than k images."""

    __pydantic_config__ = _STRICT
    sampler: str
    train_ids: list[int]
    train_ids_hash: str | None
    train_count: int
    val_ids: list[int] | None
    val_ids_hash: str | None
    val_count: int | None
    shortfall: dict[str, int]


class ModelInfo(TypedDict):
    """``name`` of the model preset or config, ``checkpoint`` path or hub id, and its ``checkpoint_sha256``."""

    __pydantic_config__ = _STRICT
    name: str
    checkpoint: str | None
    checkpoint_sha256: str | None


class ParamsInfo(TypedDict):
    """Parameter counts as run: ``trainable`` under the regime, and ``total``."""

    __pydantic_config__ = _STRICT
    trainable: int | None
    total: int | None


class GitInfo(TypedDict):
    """``commit`` of the odinw_bench checkout and ``dirty`` (uncommitted changes present)."""

    __pydantic_config__ = _STRICT
    commit: str
    dirty: bool


class EpochInfo(TypedDict):
    """One training epoch: ``epoch`` (0-based), mean training ``loss``, ``lr`` of the first optimizer group,
    ``val_AP`` (None without validation that epoch) and ``elapsed_s`` since training started."""

    __pydantic_config__ = _STRICT
    epoch: int
    loss: float | None
    lr: float | None
    val_AP: float | None
    elapsed_s: float


class SourceInfo(TypedDict):
    """Where the numbers of a record came from when no run produced them: ``kind`` (``predictions_file``: scored by
    ``evaluate`` from a COCO results file), the file's ``path`` and its ``sha256``."""

    __pydantic_config__ = _STRICT
    kind: Literal["predictions_file"]
    path: str
    sha256: str


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
        history: Optional. One :class:`EpochInfo` per training epoch; None when nothing was trained.
        peak_gpu_memory_bytes: Optional. Peak CUDA memory allocated during the run; None when CUDA was not used.
        source: Optional. :class:`SourceInfo` of a record scored from a predictions file; None for a run.
    """

    __pydantic_config__ = _STRICT
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
    history: NotRequired[list[EpochInfo] | None]
    peak_gpu_memory_bytes: NotRequired[int | None]
    source: NotRequired[SourceInfo | None]


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
    history: list[EpochInfo] | None = None,
    peak_gpu_memory_bytes: int | None = None,
    source: SourceInfo | None = None,
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
        "history": None if history is None else [dict(entry) for entry in history],
        "peak_gpu_memory_bytes": peak_gpu_memory_bytes,
        "source": None if source is None else dict(source),
    }
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


def validate_record(data: Any, *, path: str | Path | None = None) -> RunRecord:
    """Check ``data`` against :class:`RunRecord` (its type annotations are the schema) and return it.

    The types are checked by pydantic in strict mode; the rules types cannot say (``shots >= 0``, a failed run
    carries its error, metrics are fractions) are checked here. Unknown extra keys are allowed, so optional fields
    can be added without a new schema version.

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
    _check_types(data, path)
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


@functools.cache
def _record_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(RunRecord)


# pydantic's wording, shortened to what a person reading a record error needs.
_EXPECTED = {"a valid integer": "integer", "a valid string": "string", "a valid boolean": "boolean",
             "a valid number": "number", "a finite number": "finite number", "a valid dictionary": "an object",
             "a valid list": "a list"}  # fmt: skip


def _check_types(data: dict, path: str | Path | None) -> None:
    """Raise one UserError for the first type mismatch pydantic finds, naming its dotted field."""
    from pydantic import ValidationError

    try:
        _record_adapter().validate_python(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        field = _field_of(data, errors[0]["loc"], errors[0]["type"] == "missing")
        if errors[0]["type"] == "missing":
            raise UserError("missing field", path=path, field=field) from None
        # A union (``int | 'all'``) reports one error per member at the same field: name every member.
        same = [e for e in errors if _field_of(data, e["loc"], e["type"] == "missing") == field]
        wanted = dict.fromkeys(_expected(e["msg"]) for e in same)
        got = errors[0]["input"]
        shown = "null" if got is None else f"{type(got).__name__} {got!r:.60}"
        raise UserError(f"expected {' or '.join(wanted)}, got {shown}", path=path, field=field) from None


def _expected(message: str) -> str:
    text = message.removeprefix("Input should be ")
    return _EXPECTED.get(text, text)


def _field_of(data: Any, loc: tuple, missing: bool) -> str:
    """The dotted field (``sample.train_ids[1]``) of a pydantic error location, without its union-member tags."""
    parts: list[str] = []
    node = data
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node:
            parts.append(str(key))
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            parts[-1] += f"[{key}]"
            node = node[key]
        elif missing and i == len(loc) - 1:
            parts.append(str(key))
    return ".".join(parts)


def _is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON ``true`` must not pass as ``1``)."""
    return isinstance(value, int) and not isinstance(value, bool)


# JSON files a results folder holds that are not records: the submitted jobs of a sweep (odinw_bench.runs.submitted).
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
