"""Images, targets and losses between the backend contract and transformers' Grounding DINO.

The contract's targets are xyxy boxes in original-image pixels with 0-based category indices; transformers' loss
wants, per image, ``class_labels`` and ``boxes`` as cxcywh relative to the resized image before padding (the frame of
``pred_boxes``), plus label maps saying which caption tokens are each category.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

# transformers' weight of the focal classification loss (GroundingDinoForObjectDetectionLoss's weight_dict).
CLASS_LOSS_WEIGHT = 2.0


def prepare_image(image: Image.Image, flip: bool) -> Image.Image:
    """The image in RGB, mirrored left-right if ``flip``."""
    from PIL import ImageOps

    image = image.convert("RGB") if image.mode != "RGB" else image
    return ImageOps.mirror(image) if flip else image


def resize_target(target: dict, original: tuple[int, int], resized: tuple[int, int],
                  flip: bool) -> dict[str, torch.Tensor]:
    """A target's xyxy original-pixel boxes (G, 4), flipped if the image was, scaled to the resized image."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    (oh, ow), (rh, rw) = original, resized
    if flip:
        boxes = torch.stack([ow - boxes[:, 2], boxes[:, 1], ow - boxes[:, 0], boxes[:, 3]], dim=1)
    boxes = boxes * torch.tensor([rw / ow, rh / oh, rw / ow, rh / oh])
    return {"boxes": boxes, "labels": torch.as_tensor(target["labels"], dtype=torch.long).reshape(-1)}


def normalised_cxcywh(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(G, 4) xyxy resized pixels -> (G, 4) cxcywh relative to the resized image ``size`` (h, w)."""
    from torchvision.ops import box_convert

    h, w = size
    return box_convert(boxes.to(torch.float32) / boxes.new_tensor([w, h, w, h], dtype=torch.float32),
                       "xyxy", "cxcywh")


@contextlib.contextmanager
def span_label_maps(model: nn.Module, span_map: torch.Tensor, batch_size: int) -> Iterator[None]:
    """Run the model's own loss function with ``span_map`` (C, T) as every image's label map.

    transformers derives label maps from the ``"."`` delimiters of ``input_ids`` (``build_label_maps``); the loss
    function receives them as an argument, so it is wrapped for the duration of one forward pass. Every image gets
    the same map (one caption per batch); that also keeps the loss right for batches above two, where it offsets the
    labels of every image after the first by one map's length instead of the running total.
    """
    library_loss = model.loss_function
    previous = model.__dict__.get("_loss_function")
    maps = tuple(span_map for _ in range(batch_size))

    def loss(logits, labels, device, pred_boxes, config, label_maps, text_mask, **kwargs):
        return library_loss(logits, labels, device, pred_boxes, config, maps, text_mask, **kwargs)

    model.loss_function = loss
    try:
        yield
    finally:
        if previous is None:
            del model._loss_function
        else:
            model.loss_function = previous


def loss_terms(loss_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Weighted terms of transformers' ``loss_dict`` (its ``weight_dict``: ``loss_ce`` 2, ``loss_bbox`` and
    ``loss_giou`` their config coefficients, the same for the ``_enc`` and ``_<layer>`` copies)."""
    weights = {"loss_ce": CLASS_LOSS_WEIGHT, "loss_bbox": config.bbox_loss_coefficient,
               "loss_giou": config.giou_loss_coefficient}
    terms = {}
    for key, value in loss_dict.items():
        base = next((b for b in weights if key == b or key.startswith(f"{b}_")), None)
        if base is not None:
            terms[key] = value * weights[base]
    return terms
