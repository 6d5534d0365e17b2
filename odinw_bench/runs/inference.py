"""Run a detector over a task split and score it: the path every regime ends with.

Example:
    >>> from odinw_bench.data.task_files import load_task_split
    >>> split = load_task_split(task, "test", data_root)                          # doctest: +SKIP
    >>> backend.set_vocabulary(task.category_names, task.prompt)                   # doctest: +SKIP
    >>> result, predictions = evaluate_split(backend, split)                       # doctest: +SKIP
    >>> result.metrics["AP"], result.per_category                                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.data.coco import CocoSplit
    from odinw_bench.models.base import DetectorBackend
    from odinw_bench.results.evaluation import EvalResult

logger = logging.getLogger(__name__)


def predict_split(backend: DetectorBackend, split: CocoSplit, *, batch_size: int = 1, progress: bool = True,
                  device: str | None = None, autocast_dtype: str | None = None) -> list[dict[str, Any]]:
    """COCO results of ``backend`` on every image of ``split``.

    Evaluation images are never skipped: a corrupt test image is an error, since dropping it would change AP.
    GLIP's detections depend on the other images of a batch (padding is not masked), so the official zero-shot
    protocol uses ``batch_size=1``; the value is part of what a result means.

    Args:
        backend: A backend whose vocabulary is the split's categories, in ``split.categories`` order.
        split: The images and categories to predict.
        batch_size: Images per forward pass.
        progress: Show a progress bar.
        device: Where to run (the backend moves there); None: where its parameters are.
        autocast_dtype: ``bfloat16`` or ``float16`` to predict under autocast (a mixed-precision run's own
            evaluation); None: the parameters' precision.

    Returns:
        COCO results: ``image_id``, ``category_id`` (the split's ids), ``bbox`` [x, y, w, h], ``score``.
    """
    import torch
    from tqdm.auto import tqdm

    from odinw_bench.data.images import load_rgb
    from odinw_bench.results.evaluation import detections_to_coco

    category_ids = [c["id"] for c in split.categories]
    if device is not None:
        backend.to(device)
    device = next(backend.parameters()).device
    autocast = (torch.autocast(device.type, dtype=getattr(torch, autocast_dtype)) if autocast_dtype
                else contextlib.nullcontext())
    was_training = backend.training
    backend.eval()
    predictions: list[dict[str, Any]] = []
    images = split.images
    try:
        with torch.inference_mode(), autocast:
            bar = tqdm(total=len(images), desc="predict", unit="img", disable=not progress, leave=False)
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                pil = [load_rgb(im.path, expected_size=(im.width, im.height)) for im in chunk]
                detections = backend.predict(backend.preprocess(pil).to(device))
                for image, det in zip(chunk, detections, strict=True):
                    # float(): autocast may hand back reduced-precision boxes; COCO's arithmetic is 32-bit.
                    predictions += detections_to_coco(image.id, det.boxes.float().cpu(), det.scores.float().cpu(),
                                                      det.labels.cpu(), category_ids)
                bar.update(len(chunk))
            bar.close()
    finally:
        backend.train(was_training)
    return predictions


def evaluate_split(backend: DetectorBackend, split: CocoSplit, *, batch_size: int = 1, progress: bool = True,
                   device: str | None = None, autocast_dtype: str | None = None,
                   ) -> tuple[EvalResult, list[dict[str, Any]]]:
    """Predict ``split`` (:func:`predict_split`'s arguments) and score the predictions with pycocotools.

    Returns:
        ``(result, predictions)``: the COCO metrics (AP, AP50, ..., per-category AP) and the COCO results.
    """
    from odinw_bench.results.evaluation import evaluate_detections

    predictions = predict_split(backend, split, batch_size=batch_size, progress=progress, device=device,
                                autocast_dtype=autocast_dtype)
    result = evaluate_detections(split.to_coco_dict(), predictions, source=split.ann_file)
    logger.info("AP %.4f on %d images (%d predictions)", result.metrics["AP"], len(split.images), len(predictions))
    return result, predictions
