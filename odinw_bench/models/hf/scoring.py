"""From Grounding DINO's per-token logits and normalised boxes to detections with category indices.

Two rules, both per caption chunk:

``mean`` (the authors' evaluation; IDEA's ``PostProcessCocoGrounding`` and mmdetection's
``GroundingDINOHead._predict_by_feat_single``):
    a query's score for a category is the mean, over the category's name tokens, of ``sigmoid(logit)``; the
    ``topk`` highest (query, category) pairs of the image are kept (a query may appear under several categories),
    then those above ``threshold``. Boxes are scaled to the resized image, clipped to it and mapped to the original
    image, as mmdetection does.

``pipeline`` (transformers' ``GroundingDinoProcessor.post_process_grounded_object_detection``):
    a query's score is its highest token probability over the whole caption; queries above ``threshold`` are kept,
    with boxes scaled straight to the original size (no clipping), so boxes and scores equal the pipeline's
    bit for bit. The label is the category owning the query's most probable name token (the pipeline returns the
    text of every token above ``text_threshold`` instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

SCORE_RULES = ("mean", "pipeline")


def mean_rule(logits: torch.Tensor, boxes: torch.Tensor, span_map: torch.Tensor, topk: int,
              threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``mean`` rule on one image.

    Args:
        logits: (Q, T) token logits (``-inf`` at padding).
        boxes: (Q, 4) normalised cxcywh boxes.
        span_map: (C, T) 0/1 name tokens of each chunk-local category.
        topk: Most (query, category) pairs kept.
        threshold: Keep scores strictly above it.

    Returns:
        ``(boxes (N, 4) normalised xyxy, scores (N,), labels (N,) chunk-local)``.
    """
    import torch
    from torchvision.ops import box_convert

    counts = span_map.sum(-1, keepdim=True).clamp(min=1)  # a category without tokens scores 0, never NaN
    scores = logits.float().sigmoid() @ (span_map / counts).T  # (Q, C), float32 whatever the model's precision
    k = min(topk, scores.numel())
    top, index = scores.flatten().topk(k)
    query, label = index // scores.shape[1], index % scores.shape[1]
    keep = top > threshold
    picked = box_convert(boxes[query[keep]].float(), "cxcywh", "xyxy")
    return picked, top[keep], label[keep].to(torch.long)


def pipeline_rule(logits: torch.Tensor, boxes: torch.Tensor, token_labels: torch.Tensor,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``pipeline`` rule on one image (arguments as :func:`mean_rule`; ``token_labels`` (T,) is each token's
    chunk-local category, -1 for none).

    Returns:
        ``(boxes (N, 4) normalised xyxy, scores (N,), labels (N,) chunk-local)``; boxes are computed with the
        pipeline's own ``center_to_corners_format``.
    """
    from transformers.image_transforms import center_to_corners_format

    probs = logits.float().sigmoid()  # float32 already in the pipeline's comparison: a no-op there
    scores = probs.max(-1).values
    keep = scores > threshold
    # Probabilities of name tokens only (others set below any probability) pick each query's category.
    named = probs[keep].masked_fill(token_labels[None, :] < 0, -1.0)
    labels = token_labels[named.argmax(-1)].clamp(min=0)
    return center_to_corners_format(boxes[keep].float()), scores[keep], labels


def to_original_pixels(boxes: torch.Tensor, resized: tuple[int, int], original: tuple[int, int], *,
                       clip: bool) -> torch.Tensor:
    """Normalised xyxy boxes (N, 4) -> original-image pixels.

    Args:
        boxes: (N, 4) xyxy relative to the resized image before padding (Grounding DINO's box frame).
        resized: ``(h, w)`` of the resized image.
        original: ``(h, w)`` of the original image.
        clip: mmdetection's path: scale to the resized image, clip to it, rescale to the original. Without it,
            transformers' pipeline path: one multiplication by the original size (float32), nothing clipped.
    """
    import torch

    oh, ow = original
    if not clip:
        return boxes * torch.tensor([ow, oh, ow, oh], dtype=torch.float32, device=boxes.device)
    rh, rw = resized
    pixels = boxes * boxes.new_tensor([rw, rh, rw, rh])
    pixels[:, 0::2] = pixels[:, 0::2].clamp(0, rw)
    pixels[:, 1::2] = pixels[:, 1::2].clamp(0, rh)
    return pixels * pixels.new_tensor([ow / rw, oh / rh, ow / rw, oh / rh])


def checked_scoring(rule: str, topk: int, threshold: float, known: Sequence[str]) -> tuple[str, int, float]:
    """``(rule, topk, threshold)`` of a backend's ``configure_scoring``, checked.

    Raises:
        UserError: For a rule not in ``known`` or a ``topk`` below 1.
    """
    from odinw_bench.errors import UserError

    if rule not in known:
        raise UserError(f"unknown score rule '{rule}' (known: {', '.join(known)})", field="score_rule")
    if int(topk) < 1:
        raise UserError(f"topk must be at least 1, got {topk}", field="topk")
    return rule, int(topk), float(threshold)
