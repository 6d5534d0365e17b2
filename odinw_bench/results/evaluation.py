"""COCO box AP as GLIP reports it, per-category AP, and COCO results files.

Scoring is pycocotools' ``COCOeval(gt, dt, "bbox")`` with its default parameters (IoU .50:.05:.95, areas
all/small/medium/large, 100 detections), as GLIP's ``evaluate_predictions_on_coco``. Example::

    from odinw_bench.results.evaluation import evaluate_detections, detections_to_coco

    preds = detections_to_coco(image_id, boxes_xyxy, scores, labels, category_ids=task.category_ids)
    result = evaluate_detections(gt_dict, preds)
    result.metrics["AP"], result.per_category["fish"]

Metrics are fractions in [0, 1]; where pycocotools answers -1 (no ground truth in that area range or category)
the value is NaN.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

#: Names of pycocotools' 12 summary statistics, in ``COCOeval.stats`` order.
METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"
)
# (is AP, IoU threshold or None for .50:.95, area range, index into maxDets) of each statistic, as
# COCOeval.summarize computes them; the last maxDets entry is the ``max_dets`` argument.
_SUMMARY = (
    (True, None, "all", 2),
    (True, 0.5, "all", 2),
    (True, 0.75, "all", 2),
    (True, None, "small", 2),
    (True, None, "medium", 2),
    (True, None, "large", 2),
    (False, None, "all", 0),
    (False, None, "all", 1),
    (False, None, "all", 2),
    (False, None, "small", 2),
    (False, None, "medium", 2),
    (False, None, "large", 2),
)
_SHOW_IDS = 5  # unknown ids listed in an error message


@dataclass
class EvalResult:
    """Scores of one set of predictions against one ground truth.

    Attributes:
        metrics: ``METRIC_NAMES`` → value in [0, 1], NaN where undefined (pycocotools' -1).
        per_category: Category name → AP@[.50:.95] (all areas), NaN for a category without ground truth;
            in the ground truth's category order.
        stats: pycocotools' 12 raw summary statistics (-1 kept).
        num_images: Images in the ground truth.
        num_predictions: Predictions scored.
        max_dets: Detections per image and category considered (pycocotools ``maxDets[-1]``).
    """

    metrics: dict[str, float]
    per_category: dict[str, float]
    stats: list[float] = field(default_factory=list)
    num_images: int = 0
    num_predictions: int = 0
    max_dets: int = 100

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (NaN becomes ``None``)."""
        return {
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
            "per_category": {k: _json_number(v) for k, v in self.per_category.items()},
            "stats": [_json_number(v) for v in self.stats],
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
            "max_dets": self.max_dets,
        }


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _nan_if_missing(value: float) -> float:
    return float("nan") if value == -1 else float(value)


def evaluate_detections(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    *,
    max_dets: int = 100,
    source: str | Path | None = None,
) -> EvalResult:
    """COCO box AP of ``predictions`` against ``gt``.

    Args:
        gt: COCO ground-truth dict (``images``, ``annotations``, ``categories``); its category names are the
            ones reported (pass the task's overridden names). Not modified. Its annotation ids may start at 0:
            they are renumbered 1-based in a private copy (pycocotools never matches a box whose id is 0).
        predictions: COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``).
        max_dets: Detections per image and category kept, highest score first (COCO default 100).
        source: File the predictions came from, named in error messages.

    Raises:
        UserError: If a prediction lacks a field or has a bad value (naming its index), names image or
            category ids absent from the ground truth, or a ground-truth box is malformed (a negative width or
            height, naming ``annotations[i].bbox``).
    """
    if max_dets < 10:
        raise ValueError(f"max_dets must be at least 10 (pycocotools also reports AR1 and AR10), got {max_dets}")
    validate_predictions(predictions, source=source)
    coco_gt = _coco_from_dict(gt)
    _check_ids(coco_gt, predictions, source)
    coco_eval = _run_cocoeval(coco_gt, predictions, max_dets)
    stats = _summarize(coco_eval)
    return EvalResult(
        metrics={name: _nan_if_missing(v) for name, v in zip(METRIC_NAMES, stats, strict=True)},
        per_category=_per_category_ap(coco_eval, coco_gt),
        stats=stats,
        num_images=len(coco_gt.getImgIds()),
        num_predictions=len(predictions),
        max_dets=max_dets,
    )


def _coco_from_dict(gt: Mapping[str, Any]) -> Any:
    """An indexed pycocotools ``COCO`` over a private copy of ``gt`` (COCOeval writes into the annotations)."""
    from pycocotools.coco import COCO

    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise UserError(f"ground truth needs a '{key}' list", field=key)
    if not gt["images"]:
        raise UserError("ground truth has no images", field="images")
    dataset = copy.deepcopy(dict(gt))
    for index, ann in enumerate(dataset["annotations"]):
        _check_gt_box(ann, index)
        # COCOeval records a match as the matched ground truth's id and treats id 0 as "no match", so a box with
        # id 0 (Roboflow exports and hand-made files start there) could never be a true positive. The ids are
        # renumbered 1-based in this private copy; nothing else reads them.
        ann["id"] = index + 1
        # pycocotools reads both; ODinW files have them, hand-made ground truth may not.
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_gt_box(ann: Any, index: int) -> None:
    """A ground-truth box must be 4 finite numbers with a width and height >= 0 (a negative one is malformed)."""
    where = f"annotations[{index}]"
    if not isinstance(ann, Mapping):
        raise UserError("ground-truth annotation must be an object", field=where)
    problem = _bad_bbox(ann.get("bbox"))
    if problem:
        raise UserError(f"ground truth {problem}", field=f"{where}.bbox")


def _run_cocoeval(coco_gt: Any, predictions: Sequence[Mapping[str, Any]], max_dets: int) -> Any:
    """Run ``COCOeval.evaluate`` and ``accumulate`` silently."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if predictions:
            # loadRes adds fields to each result dict: hand it copies.
            coco_dt = coco_gt.loadRes([dict(p, bbox=list(p["bbox"])) for p in predictions])
        else:
            # loadRes cannot take an empty list; GLIP scores an empty COCO instead, giving AP 0.
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": [], "annotations": []}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def _summarize(coco_eval: Any) -> list[float]:
    """``COCOeval.summarize``'s 12 statistics without printing, honouring a non-default last ``maxDets``."""
    import numpy as np

    params = coco_eval.params
    stats = []
    for is_ap, iou, area, det_index in _SUMMARY:
        a = params.areaRngLbl.index(area)
        values = coco_eval.eval["precision" if is_ap else "recall"]
        if iou is not None:
            values = values[np.where(np.isclose(params.iouThrs, iou))[0]]
        values = values[:, :, :, a, det_index] if is_ap else values[:, :, a, det_index]
        valid = values[values > -1]
        stats.append(float(np.mean(valid)) if valid.size else -1.0)
    return stats


def _per_category_ap(coco_eval: Any, coco_gt: Any) -> dict[str, float]:
    """AP@[.50:.95], all areas, per category (GLIP's per-category CSV), keyed by category name."""
    import numpy as np

    precision = coco_eval.eval["precision"]  # (T iou, R recall, K categories, A areas, M maxDets)
    cat_ids = list(coco_eval.params.catIds)
    result: dict[str, float] = {}
    for cat in coco_gt.dataset["categories"]:
        values = precision[:, :, cat_ids.index(cat["id"]), 0, -1]
        valid = values[values > -1]
        name = str(cat["name"])
        if name in result:  # keep both when two categories share a name
            name = f"{name} (id {cat['id']})"
        result[name] = float(np.mean(valid)) if valid.size else float("nan")
    return result


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bad_bbox(bbox: Any) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "must be a list of 4 numbers [x, y, w, h]"
    if not all(_is_finite_number(v) for v in bbox):
        return f"must hold 4 finite numbers, got {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"width and height must be >= 0, got {bbox!r}"
    return None


def validate_predictions(predictions: Any, *, source: str | Path | None = None) -> None:
    """Check that ``predictions`` is a list of well-formed COCO box results.

    Raises:
        UserError: Naming the first bad prediction's index and field.
    """
    if not isinstance(predictions, (list, tuple)):
        raise UserError("predictions must be a JSON list of COCO results", path=source)
    for i, pred in enumerate(predictions):
        # In a file the JSON path is enough; otherwise say which argument.
        where = f"[{i}]" if source else f"predictions[{i}]"
        if not isinstance(pred, Mapping):
            raise UserError("must be an object with image_id, category_id, bbox, score", path=source, field=where)
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in pred:
                raise UserError("is missing", path=source, field=f"{where}.{key}")
        for key in ("image_id", "category_id"):
            if not _is_int(pred[key]):
                raise UserError(f"must be an integer, got {pred[key]!r}", path=source, field=f"{where}.{key}")
        problem = _bad_bbox(pred["bbox"])
        if problem:
            raise UserError(problem, path=source, field=f"{where}.bbox")
        if not _is_finite_number(pred["score"]):
            raise UserError(f"must be a finite number, got {pred['score']!r}", path=source, field=f"{where}.score")


def _check_ids(coco_gt: Any, predictions: Sequence[Mapping[str, Any]], source: str | Path | None) -> None:
    """Unknown ids would be dropped silently by pycocotools (categories) or fail an assert (images)."""
    for key, known, what in (
        ("image_id", set(coco_gt.getImgIds()), "image"),
        ("category_id", set(coco_gt.getCatIds()), "category"),
    ):
        unknown = sorted({int(p[key]) for p in predictions} - known)
        if unknown:
            shown = ", ".join(str(i) for i in unknown[:_SHOW_IDS])
            more = f", ... ({len(unknown)} in all)" if len(unknown) > _SHOW_IDS else ""
            raise UserError(
                f"{len(unknown)} {what} id(s) not in the ground truth: {shown}{more}", path=source, field=key
            )


def detections_to_coco(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Turn one image's detections into COCO results, as GLIP's ``prepare_for_coco_detection``.

    Width and height follow GLIP's legacy pixel convention: ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1``, computed
    in the boxes' own float precision.

    Args:
        image_id: COCO image id.
        boxes_xyxy: ``(N, 4)`` boxes in original-image pixels (tensor, array or nested lists).
        scores: ``(N,)`` scores.
        labels: ``(N,)`` 0-based indices into ``category_ids``.
        category_ids: COCO category id of each label index (the task's categories in label order).

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``.
    """
    import numpy as np

    boxes = _to_numpy(boxes_xyxy)
    if boxes.size == 0:
        return []
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    boxes = boxes.reshape(-1, 4)
    scores_list = _to_numpy(scores).reshape(-1).tolist()
    labels_list = _to_numpy(labels).reshape(-1).astype(np.int64).tolist()
    if not len(boxes) == len(scores_list) == len(labels_list):
        raise ValueError(f"{len(boxes)} boxes, {len(scores_list)} scores and {len(labels_list)} labels")
    bad = [label for label in labels_list if not 0 <= label < len(category_ids)]
    if bad:
        raise ValueError(f"labels {sorted(set(bad))} outside 0..{len(category_ids) - 1}")
    one = boxes.dtype.type(1)
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0] + one, boxes[:, 3] - boxes[:, 1] + one], 1)
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box, "score": float(score)}
        for box, score, label in zip(xywh.tolist(), scores_list, labels_list, strict=True)
    ]


def _to_numpy(values: Any) -> Any:
    import numpy as np

    if hasattr(values, "detach"):  # torch tensor, possibly on an accelerator
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def write_predictions(path: str | Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    """Write COCO results to ``path`` as a JSON list, atomically (temporary file, then rename)."""
    from odinw_bench.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(list(predictions), allow_nan=False))


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a COCO results file (a JSON list).

    Raises:
        UserError: If the file is missing, is not valid JSON (naming line, column and character position),
            is not a list, or holds a malformed prediction (naming its index and field).
    """
    from odinw_bench.jsonio import read_json_file

    path = Path(path)
    predictions = read_json_file(path, what="predictions file")
    validate_predictions(predictions, source=path)
    return predictions


# Summary metrics shown in tables (all of them stay in EvalResult.metrics and in run records).
TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def format_eval_table(title: str, result: EvalResult) -> str:
    """A plain-text table of the summary metrics and the per-category AP (x 100), headed by ``title``."""
    lines = [f"{title}: {result.num_images} images, {result.num_predictions} predictions", ""]
    width = max([len(m) for m in TABLE_METRICS] + [len(c) for c in result.per_category] + [len("category")])
    lines.append(f"{'metric':<{width}}  {'value':>6}")
    lines += [f"{name:<{width}}  {_percent(result.metrics[name]):>6}" for name in TABLE_METRICS]
    lines += ["", f"{'category':<{width}}  {'AP':>6}"]
    lines += [f"{name:<{width}}  {_percent(ap):>6}" for name, ap in result.per_category.items()]
    return "\n".join(lines)
