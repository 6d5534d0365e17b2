"""COCO evaluation: sanity cases, agreement with raw pycocotools, GLIP's xywh rule and results files."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random

import numpy as np
import pytest
import torch

from odinw_bench.errors import UserError
from odinw_bench.results.evaluation import (
    METRIC_NAMES,
    detections_to_coco,
    evaluate_detections,
    read_predictions,
    write_predictions,
)

# Non-contiguous category ids, as in many Roboflow exports.
CATEGORIES = [{"id": 3, "name": "fish"}, {"id": 7, "name": "shark"}, {"id": 42, "name": "starfish"}]


def make_gt() -> dict:
    """Two images with small (< 32²), medium and large boxes of every category."""
    images = [{"id": 10, "width": 640, "height": 480, "file_name": "a.jpg"},
              {"id": 20, "width": 640, "height": 480, "file_name": "b.jpg"}]  # fmt: skip
    boxes = [
        (10, 3, [5, 5, 20, 20]),  # small
        (10, 7, [100, 100, 60, 60]),  # medium
        (10, 42, [200, 50, 200, 300]),  # large
        (20, 3, [300, 300, 120, 100]),
        (20, 7, [20, 400, 25, 25]),
        (20, 42, [400, 10, 50, 70]),
    ]
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        for i, (img, cat, bbox) in enumerate(boxes)
    ]
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


def gt_as_predictions(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
    ]


def raw_pycocotools_stats(gt: dict, predictions: list[dict]) -> np.ndarray:
    """The 12 summary numbers straight from pycocotools, written independently of odinw_bench.results.evaluation."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_gt_as_predictions_scores_one():
    gt = make_gt()
    result = evaluate_detections(gt, gt_as_predictions(gt))
    assert set(result.metrics) == set(METRIC_NAMES)
    # One box per image and category, covering every area range: every statistic is defined and perfect.
    assert result.metrics == {name: pytest.approx(1.0) for name in METRIC_NAMES}
    assert result.per_category == {"fish": pytest.approx(1.0), "shark": pytest.approx(1.0), "starfish": 1.0}
    assert list(result.per_category) == ["fish", "shark", "starfish"]
    assert result.num_images == 2 and result.num_predictions == 6


def test_ground_truth_is_not_modified():
    gt = make_gt()
    before = json.dumps(gt, sort_keys=True)
    preds = gt_as_predictions(gt)
    evaluate_detections(gt, preds)
    assert json.dumps(gt, sort_keys=True) == before
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in preds)


def test_empty_predictions_score_zero():
    gt = make_gt()
    result = evaluate_detections(gt, [])
    assert all(value == 0.0 for value in result.metrics.values())
    assert all(value == 0.0 for value in result.per_category.values())


def test_undefined_area_is_nan_not_minus_one():
    gt = make_gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 32**2]  # no small objects left
    result = evaluate_detections(gt, gt_as_predictions(gt))
    assert math.isnan(result.metrics["APs"]) and math.isnan(result.metrics["ARs"])
    assert result.stats[3] == -1  # the raw statistic keeps pycocotools' marker
    assert result.metrics["AP"] == pytest.approx(1.0)
    as_json = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(as_json)["metrics"]["APs"] is None


def test_category_without_ground_truth_is_nan():
    gt = make_gt()
    gt["categories"].append({"id": 99, "name": "penguin"})
    result = evaluate_detections(gt, gt_as_predictions(gt))
    assert math.isnan(result.per_category["penguin"])
    assert result.metrics["AP"] == pytest.approx(1.0)


def test_shifted_boxes_lower_ap():
    gt = make_gt()
    preds = gt_as_predictions(gt)
    for p in preds:
        p["bbox"][0] += 0.15 * p["bbox"][2]  # IoU ~0.74: counts at 0.5, misses at 0.75 and above
    result = evaluate_detections(gt, preds)
    assert result.metrics["AP50"] == pytest.approx(1.0)
    assert result.metrics["AP75"] == pytest.approx(0.0)
    assert 0.0 < result.metrics["AP"] < 1.0


def test_unknown_ids_are_listed():
    gt = make_gt()
    preds = gt_as_predictions(gt) + [
        {"image_id": 900 + i, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5} for i in range(8)
    ]
    listed = r"8 image id\(s\) not in the ground truth: 900, 901, 902, 903, 904, \.\.\. \(8 in all\)"
    with pytest.raises(UserError, match=listed):
        evaluate_detections(gt, preds)
    preds = gt_as_predictions(gt) + [{"image_id": 10, "category_id": 5, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(UserError, match=r"1 category id\(s\) not in the ground truth: 5$") as err:
        evaluate_detections(gt, preds)
    assert err.value.field == "category_id"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"score": None}, "predictions[1].score"),
        ({"score": float("nan")}, "predictions[1].score"),
        ({"bbox": [1, 2, 3]}, "predictions[1].bbox"),
        ({"bbox": [1, 2, -3, 4]}, "predictions[1].bbox"),
        ({"image_id": True}, "predictions[1].image_id"),
        ({"category_id": "3"}, "predictions[1].category_id"),
    ],
)
def test_bad_prediction_fields_are_named(change, field):
    gt = make_gt()
    preds = gt_as_predictions(gt)
    preds[1].update(change)
    with pytest.raises(UserError) as err:
        evaluate_detections(gt, preds)
    assert err.value.field == field


def test_missing_field_is_named():
    gt = make_gt()
    preds = gt_as_predictions(gt)
    del preds[2]["score"]
    with pytest.raises(UserError, match="is missing") as err:
        evaluate_detections(gt, preds)
    assert err.value.field == "predictions[2].score"


def test_agrees_with_raw_pycocotools_on_random_case():
    rng = random.Random(0)
    images = [{"id": i, "width": 300, "height": 200} for i in (1, 4, 9)]
    annotations, preds = [], []
    for img in images:
        for _ in range(6):
            w, h = rng.uniform(4, 120), rng.uniform(4, 120)
            box = [rng.uniform(0, 300 - w), rng.uniform(0, 200 - h), w, h]
            cat = rng.choice(CATEGORIES)["id"]
            annotations.append({"id": len(annotations) + 1, "image_id": img["id"], "category_id": cat,
                                "bbox": box, "area": w * h, "iscrowd": 0})  # fmt: skip
            jitter = [v + rng.uniform(-6, 6) for v in box[:2]] + [max(1.0, v + rng.uniform(-6, 6)) for v in box[2:]]
            preds.append({"image_id": img["id"], "category_id": cat, "bbox": jitter, "score": rng.random()})
            if rng.random() < 0.5:  # a false positive with a random category
                box = [rng.uniform(0, 200), rng.uniform(0, 150), 30, 30]
                cat = rng.choice(CATEGORIES)["id"]
                preds.append({"image_id": img["id"], "category_id": cat, "bbox": box, "score": rng.random()})
    gt = {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}
    result = evaluate_detections(gt, preds)
    expected = raw_pycocotools_stats(gt, preds)
    np.testing.assert_allclose(result.stats, expected, rtol=0, atol=1e-12)
    assert 0.0 < result.metrics["AP"] < 1.0
    # Per-category APs over categories that all have ground truth average to the overall AP.
    assert {a["category_id"] for a in annotations} == {c["id"] for c in CATEGORIES}
    assert np.mean(list(result.per_category.values())) == pytest.approx(result.metrics["AP"])


def test_max_dets_limits_detections_per_image():
    gt = make_gt()
    # 20 higher-scoring false positives per image and category crowd out the true box under max_dets=10.
    preds = [dict(p, score=0.5) for p in gt_as_predictions(gt)]
    for p in list(preds):
        preds += [dict(p, bbox=[600, 440, 5, 5], score=0.9) for _ in range(20)]
    assert evaluate_detections(gt, preds, max_dets=100).metrics["AR100"] == pytest.approx(1.0)
    assert evaluate_detections(gt, preds, max_dets=10).metrics["AR100"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        evaluate_detections(gt, preds, max_dets=5)


def test_detections_to_coco_uses_glip_plus_one_width():
    boxes = torch.tensor([[10.0, 20.0, 30.5, 60.25], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
    preds = detections_to_coco(5, boxes, torch.tensor([0.9, 0.1]), torch.tensor([2, 0]), category_ids=[3, 7, 42])
    assert preds == [
        {"image_id": 5, "category_id": 42, "bbox": [10.0, 20.0, 21.5, 41.25], "score": pytest.approx(0.9)},
        {"image_id": 5, "category_id": 3, "bbox": [0.0, 0.0, 1.0, 1.0], "score": pytest.approx(0.1)},
    ]
    assert all(isinstance(v, float) for v in preds[0]["bbox"]) and isinstance(preds[0]["category_id"], int)
    assert detections_to_coco(5, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), [3]) == []
    with pytest.raises(ValueError, match="labels"):
        detections_to_coco(5, boxes, [0.9, 0.1], [3, 0], category_ids=[3, 7, 42])


def test_detections_to_coco_round_trips_glip_gt_convention():
    # GLIP reads a GT box [x, y, w, h] as x2 = x + w - 1; writing it back with w = x2 - x1 + 1 restores it,
    # so a perfect detector scores AP 1.
    gt = make_gt()
    preds = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        xyxy = np.array([[x, y, x + w - 1, y + h - 1]], dtype=np.float32)
        label = [c["id"] for c in CATEGORIES].index(a["category_id"])
        preds += detections_to_coco(a["image_id"], xyxy, [1.0], [label], [c["id"] for c in CATEGORIES])
    assert [p["bbox"] for p in preds] == [[float(v) for v in a["bbox"]] for a in gt["annotations"]]
    assert evaluate_detections(gt, preds).metrics["AP"] == pytest.approx(1.0)


def test_predictions_file_round_trip(tmp_path):
    preds = gt_as_predictions(make_gt())
    path = tmp_path / "out" / "preds.json"
    write_predictions(path, preds)
    assert read_predictions(path) == preds
    assert [p.name for p in path.parent.iterdir()] == ["preds.json"]  # no temporary file left behind


def test_read_predictions_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_predictions(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,\n  "score": }]')
    with pytest.raises(UserError, match=r"malformed JSON at line 2, column 12 \(char 28\)") as err:
        read_predictions(bad)
    assert err.value.path == str(bad)
    bad.write_text('{"image_id": 1}')
    with pytest.raises(UserError, match="JSON list"):
        read_predictions(bad)
    bad.write_text('[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]')
    with pytest.raises(UserError) as err:
        read_predictions(bad)
    assert err.value.field == "[0].score" and str(bad) in str(err.value)
