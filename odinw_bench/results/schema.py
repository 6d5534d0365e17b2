"""The run-record schema: what every record holds, checked by pydantic in strict mode plus the rules types cannot say.

The TypedDicts below are the schema (:class:`RunRecord` and its parts); :func:`validate_record` checks a decoded
record against them and names the dotted field of the first problem. Writing and reading records is
:mod:`odinw_bench.results.records`. Example::

    from odinw_bench.results.schema import validate_record

    validate_record(json.loads(text), path="runs/x.json")   # UserError: runs/x.json: field 'task.version': ...
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict

from odinw_bench.errors import UserError

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
        regime: The regime's name (``zero-shot``, ``linear-probe``, ``prompt``, ``full``, ...).
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
        protocol_differences: Optional. How the run's regime departs from GLIP's protocol (absent: it does not).
        search: Optional. The learning-rate / weight-decay search before the run (``run --search``): its params,
            epochs, grid, every trial (values, val AP, run id), the chosen values and their val AP.
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
    protocol_differences: NotRequired[list[str]]
    search: NotRequired[dict[str, Any]]


# AP/AR metrics are fractions; a value above 1 almost always means someone stored percentages.
_FRACTION_KEY = re.compile(r"^(select/val_)?A[PR]")


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
