"""The transformers backends learn: fine-tuning a tiny random MM Grounding DINO, or a tiny random OWLv2 with the
OWL-ViT loss built here, on three synthetic images of coloured squares raises its COCO AP on them from nothing,
through the backend's own preprocess, losses and predict.
"""

from __future__ import annotations

import random

import pytest
import torch
from hf_models import save_tiny_grounding_dino, save_tiny_owlv2
from PIL import Image, ImageDraw

from odinw_bench.models.hf.grounding_dino import GroundingDinoBackend
from odinw_bench.models.hf.owlv2 import Owlv2Backend
from odinw_bench.results.evaluation import detections_to_coco, evaluate_detections
from odinw_bench.training.regimes import (
    apply_regime,
    get_regime,
    set_frozen_modules_eval,
)

NAMES = ["red square", "green square", "blue square"]
COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230)]


def _scenes() -> tuple[list, list, dict]:
    """Three 96x72 images, one coloured square each, their targets and the COCO ground truth."""
    images, targets, gt = [], [], {"images": [], "annotations": [], "categories": []}
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (96, 72), (128, 128, 128))
        box = [10 + 20 * i, 8 + 6 * i, 50 + 20 * i, 44 + 6 * i]
        ImageDraw.Draw(image).rectangle(box, fill=colour)
        images.append(image)
        targets.append({"boxes": [box], "labels": [i]})
        gt["images"].append({"id": i + 1, "width": 96, "height": 72, "file_name": f"{i}.png"})
        gt["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": i + 1, "iscrowd": 0,
                                  "bbox": [box[0], box[1], 40, 36], "area": 1440})
        gt["categories"].append({"id": i + 1, "name": NAMES[i]})
    return images, targets, gt


def _ap(backend, images: list, gt: dict) -> float:
    backend.eval()
    with torch.no_grad():
        detections = backend.predict(backend.preprocess(images))
    predictions = []
    for image_id, det in enumerate(detections, start=1):
        predictions += detections_to_coco(image_id, det.boxes, det.scores, det.labels, [1, 2, 3])
    return evaluate_detections(gt, predictions).metrics["AP"]


def _backend(kind: str, folder):
    if kind == "owlv2":
        return Owlv2Backend.from_pretrained(save_tiny_owlv2(folder))
    return GroundingDinoBackend.from_pretrained(save_tiny_grounding_dino(folder, kind))


@pytest.mark.parametrize(("kind", "steps"), [("mm-grounding-dino", 250), ("owlv2", 200)])
def test_fine_tuning_raises_ap_on_the_images_it_sees(tmp_path, kind, steps):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and the steps are reproducible
    try:
        backend = _backend(kind, tmp_path)
        backend.set_vocabulary(NAMES)
        images, targets, gt = _scenes()
        before = _ap(backend, images, gt)
        regime = get_regime("full")
        apply_regime(backend, regime, freeze_conv_body_at=2)
        optimizer = torch.optim.AdamW([p for p in backend.parameters() if p.requires_grad], lr=1e-3)
        rng = random.Random(0)
        for _ in range(steps):
            backend.train()
            set_frozen_modules_eval(backend, regime, freeze_conv_body_at=2)
            loss = sum(backend.compute_losses(backend.preprocess(images, targets, train=True, rng=rng)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = _ap(backend, images, gt)
    finally:
        torch.set_num_threads(threads)
    assert before < 0.05 and after > before + 0.25, (before, after)
