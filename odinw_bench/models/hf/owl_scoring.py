"""From OWLv2's per-patch category logits and boxes to detections in original-image pixels.

OWLv2 pads each image at the bottom and right to a square, then resizes the square; ``pred_boxes`` are normalised
``cxcywh`` of that square. Two rules, per image:

``topk`` (the authors' evaluation; scenic ``owl_vit/evaluator.py`` ``get_top_k`` with ``exclusive_classes=False``
and ``unpad_box``):
    every (patch, category) pair scores ``sigmoid(logit)``; the ``topk`` (300) highest pairs of the image are kept,
    a patch possibly under several categories, then those strictly above ``threshold`` (0: all). Boxes are made
    relative to the image (not the padded square) and clipped to ``[0, 1]`` in ``cxcywh``, as ``unpad_box`` does,
    then scaled to pixels.

``pipeline`` (transformers' ``Owlv2ImageProcessor.post_process_object_detection``):
    a patch's score is its highest category probability, its label that category; patches strictly above
    ``threshold`` are kept, boxes scaled by the padded square's side in original pixels, nothing clipped, so boxes
    and scores equal transformers' bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

SCORE_RULES = ("topk", "pipeline")


def unpad_boxes(boxes: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
    """(N, 4) normalised ``cxcywh`` of the padded square -> (N, 4) ``xyxy`` pixels of the original ``(h, w)`` image,
    clipped in ``cxcywh`` relative to the image (the authors' ``unpad_box``, less its 1e-6 guard against a zero
    image fraction, which a real image never has)."""
    from torchvision.ops import box_convert

    height, width = original
    size = boxes.new_tensor([width, height, width, height])
    relative = (boxes * max(height, width) / size).clamp(0.0, 1.0)
    return box_convert(relative, "cxcywh", "xyxy") * size


def topk_rule(logits: torch.Tensor, boxes: torch.Tensor, original: tuple[int, int], topk: int,
              threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``topk`` rule on one image.

    Args:
        logits: (P, C) float32 category logits (template-averaged).
        boxes: (P, 4) normalised ``cxcywh`` boxes of the padded square.
        original: ``(h, w)`` of the original image.
        topk: Most (patch, category) pairs kept.
        threshold: Keep scores strictly above it.

    Returns:
        ``(boxes (N, 4) xyxy original pixels, scores (N,), labels (N,) 0-based)``.
    """
    import torch

    probs = logits.float().sigmoid()
    top, index = probs.flatten().topk(min(topk, probs.numel()))
    patch, label = index // probs.shape[1], index % probs.shape[1]
    keep = top > threshold
    return unpad_boxes(boxes[patch[keep]].float(), original), top[keep], label[keep].to(torch.long)


def pipeline_rule(logits: torch.Tensor, boxes: torch.Tensor, original: tuple[int, int],
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``pipeline`` rule on one image (arguments as :func:`topk_rule`); boxes use transformers' own
    ``center_to_corners_format`` and one multiplication by ``max(h, w)``."""
    from transformers.image_transforms import center_to_corners_format

    best = logits.max(-1)
    scores = best.values.sigmoid()
    keep = scores > threshold
    pixels = center_to_corners_format(boxes[keep]) * float(max(original))
    return pixels, scores[keep], best.indices[keep]
