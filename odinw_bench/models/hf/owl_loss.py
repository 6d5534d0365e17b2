"""The OWL-ViT set-prediction loss (transformers ships OWLv2 without one): Hungarian matching, focal and box losses.

Every image patch predicts one box and one logit per category. Per image, the patches are matched one-to-one to the
ground-truth boxes by :func:`scipy.optimize.linear_sum_assignment` on a DETR cost (scenic
``owl_vit/losses.py`` ``compute_cost``):

* class cost: the sigmoid focal cost of the target's category, ``alpha (1 - p)^gamma (-log p) -
  (1 - alpha) p^gamma (-log (1 - p))`` (Deformable DETR's, as scenic's ``sigmoid_cost``);
* L1 cost between the normalised ``cxcywh`` boxes, and minus their generalised IoU;

each weighted by its loss coefficient. The loss (scenic ``matching_base_models.py``) is then

* ``loss_class``: sigmoid focal loss over *all* patches x categories, matched patches with their target's category
  as positive and everything else negative, summed and divided by the image's number of targets (at least 1);
* ``loss_bbox``: L1 between matched ``xyxy`` boxes (scenic's ``weighted_box_l1_loss`` on corners), summed over
  coordinates and targets, divided by the number of targets;
* ``loss_giou``: ``1 - GIoU`` of the matched boxes, summed and divided by the number of targets;

each averaged over the images (scenic's ``normalization = 'per_example'``) and multiplied by its weight. An image
without targets contributes its all-negative class loss and no box loss.

Weights (:class:`LossWeights`) are OWL-ViT's training configuration (scenic ``owl_vit/configs/clip_b32.py``, the
same in ``clip_l14_with_masks.py``): class, L1 and GIoU coefficients 1, focal ``alpha = 0.3``, ``gamma = 2``; the
OWLv2 configs in scenic hold inference settings only, so v1's training loss is the published one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossWeights:
    """Coefficients of the matching cost and the loss (scenic ``configs/clip_b32.py``: ``class_loss_coef``,
    ``bbox_loss_coef``, ``giou_loss_coef``, ``focal_alpha``, ``focal_gamma``)."""

    class_weight: float = 1.0
    bbox_weight: float = 1.0
    giou_weight: float = 1.0
    focal_alpha: float = 0.3
    focal_gamma: float = 2.0


def matching_cost(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor,
                  weights: LossWeights) -> torch.Tensor:
    """The (P, G) cost of assigning each patch to each target.

    Args:
        logits: (P, C) category logits of one image.
        boxes: (P, 4) predicted normalised ``cxcywh`` boxes.
        labels: (G,) 0-based categories of the targets.
        target_boxes: (G, 4) normalised ``cxcywh`` target boxes.
        weights: The cost coefficients and focal parameters.
    """
    from torchvision.ops import box_convert, generalized_box_iou

    chosen = logits[:, labels].float()  # (P, G): each patch's logit for each target's category
    prob = chosen.sigmoid()
    alpha, gamma = weights.focal_alpha, weights.focal_gamma
    positive = alpha * (1 - prob) ** gamma * -torch.nn.functional.logsigmoid(chosen)
    negative = (1 - alpha) * prob ** gamma * -torch.nn.functional.logsigmoid(-chosen)
    l1 = torch.cdist(boxes.float(), target_boxes.float(), p=1)
    giou = generalized_box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"),
                               box_convert(target_boxes.float(), "cxcywh", "xyxy"))
    cost = weights.class_weight * (positive - negative) + weights.bbox_weight * l1 - weights.giou_weight * giou
    # A degenerate box could give NaN; such a pair must simply never be preferred (scenic guards the same way).
    return torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)


@torch.no_grad()
def match(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor,
          weights: LossWeights = LossWeights()) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimum-cost one-to-one assignment of patches to targets (arguments as :func:`matching_cost`).

    Returns:
        ``(patches (M,), targets (M,))`` int64 on ``logits``' device, ``M = min(P, G)``, sorted by patch; each
        target appears at most once (exactly once while ``G <= P``).
    """
    from scipy.optimize import linear_sum_assignment

    device = logits.device
    if labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    cost = matching_cost(logits, boxes, labels, target_boxes, weights)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(cols, dtype=torch.long, device=device))


def image_losses(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor,
                 weights: LossWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unweighted ``(class, L1, GIoU)`` losses of one image (arguments as :func:`matching_cost`), each normalised by
    its number of targets (at least 1)."""
    from torchvision.ops import (
        box_convert,
        generalized_box_iou_loss,
        sigmoid_focal_loss,
    )

    patches, targets = match(logits, boxes, labels, target_boxes, weights)
    logits = logits.float()
    onehot = torch.zeros_like(logits)
    onehot[patches, labels[targets]] = 1.0
    count = max(int(labels.numel()), 1)
    focal = sigmoid_focal_loss(logits, onehot, alpha=weights.focal_alpha, gamma=weights.focal_gamma,
                               reduction="sum")
    if patches.numel() == 0:  # no box loss; zero still tied to the graph, so every term has a gradient path
        zero = boxes.float().sum() * 0.0
        return focal / count, zero, zero
    predicted = box_convert(boxes[patches].float(), "cxcywh", "xyxy")
    wanted = box_convert(target_boxes[targets].float(), "cxcywh", "xyxy")
    l1 = (predicted - wanted).abs().sum()
    giou = generalized_box_iou_loss(predicted, wanted, reduction="sum")
    return focal / count, l1 / count, giou / count


def set_prediction_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                        weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """The weighted loss terms of a batch; their sum is the training loss.

    Args:
        logits: (B, P, C) category logits.
        boxes: (B, P, 4) predicted normalised ``cxcywh`` boxes.
        targets: Per image ``{"labels": (G,) 0-based, "boxes": (G, 4) normalised cxcywh}`` (same frame as ``boxes``).
        weights: Coefficients and focal parameters.

    Returns:
        ``{"loss_class", "loss_bbox", "loss_giou"}``: scalar float32 tensors, weights applied.
    """
    per_image = [image_losses(image_logits, image_boxes, target["labels"].to(torch.long), target["boxes"], weights)
                 for image_logits, image_boxes, target in zip(logits, boxes, targets, strict=True)]
    classes, l1s, gious = (torch.stack(parts).mean() for parts in zip(*per_image))
    return {"loss_class": weights.class_weight * classes, "loss_bbox": weights.bbox_weight * l1s,
            "loss_giou": weights.giou_weight * gious}
