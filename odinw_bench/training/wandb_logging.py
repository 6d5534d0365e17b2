"""W&B as a mirror of a run: never blocks, never prompts, never fails the run.

The run record (JSON) is the source of truth; W&B receives the training curves through Lightning's
``WandbLogger`` and, at the end, the final metrics, a per-category AP table and a few images with predicted and
ground-truth boxes. ``mode="offline"`` needs no network and no account: ``wandb sync <dir>`` uploads later.

Example:
    >>> logger = make_wandb_logger("offline", save_dir="results/wandb", group="glip-t-prompt-k1",
    ...                            name="aquarium-s3", tags=["aquarium"], config={})   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODES = ("off", "offline", "online")


def _warn(what: str, err: BaseException) -> None:
    message = f"W&B {what} failed ({type(err).__name__}: {err}); the run goes on without it"
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def wandb_enabled(mode: str) -> bool:
    """Check ``mode`` and, unless it is ``off``, make W&B quiet and prompt-free; True when W&B should start.

    Raises:
        ValueError: For a mode other than ``off``, ``offline`` or ``online``.
    """
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False
    # Never prompt for a login or print banners; online mode without credentials fails fast instead of asking.
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("WANDB_DISABLE_CODE", "true")
    return True


def make_wandb_logger(mode: str, *, save_dir: str | Path, group: str, name: str, tags: Sequence[str],
                      config: Mapping[str, Any], project: str = "odinw_bench", entity: str | None = None) -> Any:
    """A Lightning ``WandbLogger``, or None when ``mode`` is ``off`` or W&B cannot start.

    Args:
        mode: ``off`` (nothing is created), ``offline`` (local files only) or ``online``.
        save_dir: Folder that receives the ``wandb/`` run directory.
        group, name, tags: W&B grouping (model-regime-shots), run name (task-seed) and tags.
        config: Flat-ish dict logged as the run config.
        project, entity: W&B project and entity.
    """
    if not wandb_enabled(mode):
        return None
    try:
        from pytorch_lightning.loggers import WandbLogger

        Path(save_dir).mkdir(parents=True, exist_ok=True)
        wandb_logger = WandbLogger(project=project, entity=entity, group=group, name=name, tags=list(tags),
                                   mode=mode, save_dir=str(save_dir), config=dict(config))
        _ = wandb_logger.experiment  # start now, so a failure is caught here and not mid-training
        return wandb_logger
    except Exception as err:  # noqa: BLE001 - W&B must never fail a run
        _warn("start", err)
        return None


def log_final(wandb_logger: Any, metrics: Mapping[str, Any], per_category: Mapping[str, float],
              images: Iterable[tuple[Any, dict, dict]] = (), category_names: Sequence[str] = ()) -> None:
    """Push the final metrics, a per-category AP table and example images, then finish the W&B run.

    Args:
        wandb_logger: The logger from :func:`make_wandb_logger` (None: nothing happens).
        metrics: Final metrics (e.g. ``test/AP``), written to the run summary.
        per_category: Category name → AP.
        images: ``(pil_image, predictions, ground_truth)`` triples; each of the dicts has ``boxes`` (N, 4) xyxy in
            original pixels and ``labels`` (N,) 0-based; predictions also ``scores``.
        category_names: Names of the labels.
    """
    if wandb_logger is None:
        return
    try:
        import wandb

        run = wandb_logger.experiment
        for key, value in metrics.items():
            run.summary[key] = value
        table = wandb.Table(columns=["category", "AP"], data=[[k, v] for k, v in per_category.items()])
        payload: dict[str, Any] = {"test/per_category_AP": table}
        pictures = [_boxes_image(wandb, img, pred, gt, category_names) for img, pred, gt in images]
        if pictures:
            payload["test/examples"] = pictures
        run.log(payload)
        run.finish()
    except Exception as err:  # noqa: BLE001 - W&B must never fail a run
        _warn("final logging", err)


def _boxes_image(wandb: Any, image: Any, pred: dict, gt: dict, names: Sequence[str]) -> Any:
    class_labels = {i: str(n) for i, n in enumerate(names)}

    def box_data(entry: dict, with_scores: bool) -> list[dict]:
        rows = []
        scores = entry.get("scores")
        for i, (box, label) in enumerate(zip(entry["boxes"], entry["labels"])):
            x1, y1, x2, y2 = (float(v) for v in box)
            row = {"position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2}, "domain": "pixel",
                   "class_id": int(label)}
            if with_scores and scores is not None:
                row["scores"] = {"score": float(scores[i])}
                row["box_caption"] = f"{class_labels.get(int(label), label)} {float(scores[i]):.2f}"
            rows.append(row)
        return rows

    boxes = {"predictions": {"box_data": box_data(pred, True), "class_labels": class_labels},
             "ground_truth": {"box_data": box_data(gt, False), "class_labels": class_labels}}
    return wandb.Image(image, boxes=boxes)
