"""Run records for predictions made elsewhere (another codebase, an API), so they sit in the same tables as runs.

``evaluate --predictions FILE --model-name NAME`` scores a COCO results file with the evaluation ``run`` uses and
writes it as a run record, with a copy of the predictions beside it and a leaderboard row. ``report`` then treats it
like any run. What this harness cannot know is recorded as unknown, never guessed:

- ``model.checkpoint`` and ``model.checkpoint_sha256`` are None (no checkpoint was loaded here); the provenance is
  ``source`` = ``{"kind": "predictions_file", "path", "sha256"}`` of the scored file;
- ``sample.sampler`` is ``external``, with no image ids (the k-shot sample, if any, was drawn elsewhere);
- ``params`` are None.

The run id hashes what identifies the result (task and version, split, prompt variant, model name, regime, shots,
seed), not the file: scoring a corrected predictions file replaces the record of the same cell and seed, as
rerunning a run does, instead of adding a second record that ``report`` would refuse as a duplicate.

Example::

    record = predictions_record(task=task, split="test", result=result, predictions_file=Path("preds.json"),
                                model_name="my-detector", regime="zero-shot", shots=0, seed=3)
    path = save_predictions_record("results", record, predictions)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.results.evaluation import EvalResult
    from odinw_bench.results.schema import RunRecord
    from odinw_bench.tasks.spec import TaskSpec

SOURCE_KIND = "predictions_file"
SAMPLER = "external"


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def predictions_record(*, task: TaskSpec, split: str, result: EvalResult, predictions_file: str | Path,
                       model_name: str, regime: str, shots: int | str, seed: int, prompt_variant: str = "default",
                       duration_s: float | None = None) -> RunRecord:
    """The run record of a predictions file scored against ``task``'s ``split``.

    Args:
        task: The task the predictions are for.
        split: The split they were scored against.
        result: Their scores (:func:`~odinw_bench.results.evaluation.evaluate_detections`).
        predictions_file: The scored file (its absolute path and sha256 are recorded).
        model_name: The model's name in tables (the ``model`` row key).
        regime, shots, seed: How the model was tuned, as ``run`` names them (``zero-shot``, 0, 3 for a model used
            as is).
        prompt_variant: The task's prompt variant the model was given (``default`` or e.g. ``odinw_35``).
        duration_s: Time the scoring took.
    """
    from odinw_bench.results.records import make_record, make_run_id
    from odinw_bench.tasks.registry import task_sha256

    identity = {"scored_from": SOURCE_KIND, "split": split, "prompt": prompt_variant}
    metrics: dict[str, float | None] = dict(result.metrics)
    metrics.update({f"AP-{name}": value for name, value in result.per_category.items()})
    path = Path(predictions_file)
    return make_record(
        run_id=make_run_id(task.name, task.version, model_name, None, regime, shots, seed, identity),
        task={"name": task.name, "version": task.version, "sha256": task_sha256(task),
              "display_name": task.display_name},
        split=split, prompt={"variant": prompt_variant, "captions": []}, shots=shots, seed=seed, regime=regime,
        sample={"sampler": SAMPLER, "train_ids": [], "train_ids_hash": None, "train_count": 0, "val_ids": None,
                "val_ids_hash": None, "val_count": None, "shortfall": {}},
        model={"name": model_name, "checkpoint": None, "checkpoint_sha256": None},
        config=identity, metrics=metrics, duration_s=duration_s,
        timings={} if duration_s is None else {"eval_s": duration_s},
        source={"kind": SOURCE_KIND, "path": str(path.resolve()), "sha256": file_sha256(path)})


def save_predictions_record(results_dir: str | Path, record: Mapping[str, Any],
                            predictions: Sequence[Mapping[str, Any]]) -> tuple[Path, dict | None]:
    """Write the predictions copy, the record and its leaderboard row under ``results_dir``, as a run does.

    Returns:
        The record's path, and the record it replaced (same run id) or None.
    """
    from odinw_bench.errors import UserError
    from odinw_bench.results.evaluation import write_predictions
    from odinw_bench.results.leaderboard import append_leaderboard_row
    from odinw_bench.results.records import read_record, record_path, write_record

    path = record_path(results_dir, record)
    previous = None
    if path.is_file():
        try:
            previous = dict(read_record(path))
        except UserError:
            previous = {}
    write_predictions(path.with_name(path.stem + "_predictions.json"), predictions)
    write_record(path, record)
    append_leaderboard_row(Path(results_dir) / "leaderboard.csv", record)
    return path, previous
