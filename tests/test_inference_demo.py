"""Predicting a split and scoring it (synthetic data, glip-micro, CPU); the demo command: tests/test_demo_command.py."""

from __future__ import annotations

import pytest
import torch

from odinw_bench.data.images import CorruptImageError, load_rgb
from odinw_bench.data.task_files import load_task_split, prepare_data_root
from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.results.evaluation import evaluate_detections
from odinw_bench.runs.inference import evaluate_split, predict_split
from odinw_bench.tasks.registry import load_task


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory):
    task = load_task("demo")
    root = prepare_data_root(task, tmp_path_factory.mktemp("data"))
    return task, load_task_split(task, "test", root)


@pytest.fixture(scope="module")
def detecting_backend(demo_split):
    task, _ = demo_split
    torch.manual_seed(0)
    backend = GLIPBackend.from_preset("glip-micro").eval()
    with torch.no_grad():  # spread the random logits so that detections pass GLIP's 0.05 threshold
        backend.model.rpn.head.log_scale.fill_(-2.3)
        backend.model.rpn.head.bias0.fill_(0.0)
    backend.set_vocabulary(task.category_names, task.prompt)
    return backend


def test_evaluate_split_scores_its_own_predictions(demo_split, detecting_backend):
    task, split = demo_split
    result, predictions = evaluate_split(detecting_backend, split, progress=False)
    assert predictions, "the tuned random model should produce detections"
    assert {p["image_id"] for p in predictions} <= {im.id for im in split.images}
    assert {p["category_id"] for p in predictions} <= set(task.category_ids)
    per_image = {}
    for p in predictions:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert max(per_image.values()) <= 105  # GLIP's 100 per image, ties at the cut aside
    again = evaluate_detections(split.to_coco_dict(), predictions)
    assert result.to_dict() == again.to_dict()  # NaN (no ground truth in an area range) becomes None
    assert list(result.per_category) == task.category_names


def test_batch_size_is_part_of_the_result(demo_split, detecting_backend):
    _, split = demo_split
    same = [im for im in split.images if (im.width, im.height) == (split.images[0].width, split.images[0].height)]
    subset = split.subset([im.id for im in same[:2]])
    # Images of one size need no padding: batching them changes nothing.
    one = predict_split(detecting_backend, subset, progress=False)
    two = predict_split(detecting_backend, subset, batch_size=2, progress=False)
    assert one and len(one) == len(two)
    for a, b in zip(one, two):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-2)
    # GLIP does not mask padding: next to a larger image, an image's detections change. Batch 1 is the protocol.
    image = load_rgb(same[0].path)
    alone = detecting_backend.predict(detecting_backend.preprocess([image]))[0]
    batch = detecting_backend.preprocess([image, image.resize((128, 256))])  # a portrait image: padding needed
    assert batch.images.shape[-2:] != tuple(detecting_backend.preprocess([image]).images.shape[-2:])
    padded = detecting_backend.predict(batch)[0]
    assert not (alone.scores.shape == padded.scores.shape and torch.allclose(alone.scores, padded.scores))


def test_corrupt_evaluation_image_is_an_error(demo_split, detecting_backend, tmp_path):
    _, split = demo_split
    image = split.images[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    bad = split.subset([image.id])
    bad.images[0].path = broken
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        predict_split(detecting_backend, bad, progress=False)
