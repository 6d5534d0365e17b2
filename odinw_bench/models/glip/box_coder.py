"""Box arithmetic of GLIP in the legacy "+1" pixel convention: delta coding, IoU, clipping.

maskrcnn_benchmark treats a box ``[x1, x2]`` as covering pixels ``x1..x2`` inclusive, so its width is
``x2 - x1 + 1``. The anchors, the box coder, the ATSS IoU, clipping and the class-wise NMS all follow this rule;
only the GIoU loss and the centre points use plain differences. torchvision uses continuous coordinates
throughout, hence the small functions here where the two disagree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

# The legacy "+1": a box [x1, x2] covers x2 - x1 + 1 pixels.
TO_REMOVE = 1.0
DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """GLIP's ATSS box coder (``rpn/vldyhead.BoxCoder``).

    Args:
        weights: (wx, wy, ww, wh) multipliers of the centre and log-size deltas.
        bbox_xform_clip: Upper clamp of the decoded log-size deltas (there is no lower clamp).
    """

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = DEFAULT_BBOX_XFORM_CLIP,
    ):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Regression targets of ``gt_boxes`` relative to ``anchors``.

        Args:
            gt_boxes: (..., 4) xyxy boxes.
            anchors: (..., 4) xyxy anchors, broadcastable to ``gt_boxes``.

        Returns:
            (..., 4) deltas (dx, dy, dw, dh).
        """
        wx, wy, ww, wh = self.weights
        ex_w = anchors[..., 2] - anchors[..., 0] + TO_REMOVE
        ex_h = anchors[..., 3] - anchors[..., 1] + TO_REMOVE
        ex_cx = (anchors[..., 2] + anchors[..., 0]) / 2
        ex_cy = (anchors[..., 3] + anchors[..., 1]) / 2
        gt_w = gt_boxes[..., 2] - gt_boxes[..., 0] + TO_REMOVE
        gt_h = gt_boxes[..., 3] - gt_boxes[..., 1] + TO_REMOVE
        gt_cx = (gt_boxes[..., 2] + gt_boxes[..., 0]) / 2
        gt_cy = (gt_boxes[..., 3] + gt_boxes[..., 1]) / 2
        # Same operation order as the official coder, so the float32 results agree bit for bit.
        dx = wx * (gt_cx - ex_cx) / ex_w
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * torch.log(gt_w / ex_w)
        dh = wh * torch.log(gt_h / ex_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes from regression deltas.

        Args:
            deltas: (..., 4) predicted (dx, dy, dw, dh).
            anchors: (..., 4) xyxy anchors, broadcastable to ``deltas``.

        Returns:
            (..., 4) xyxy boxes in the dtype of ``deltas``.
        """
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = anchors[..., 2] - anchors[..., 0] + TO_REMOVE
        heights = anchors[..., 3] - anchors[..., 1] + TO_REMOVE
        ctr_x = (anchors[..., 2] + anchors[..., 0]) / 2
        ctr_y = (anchors[..., 3] + anchors[..., 1]) / 2
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        # Only a max clamp: very negative deltas give tiny boxes, never overflow.
        dw = torch.clamp(deltas[..., 2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.bbox_xform_clip)
        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        return torch.stack(
            (
                pred_cx - 0.5 * (pred_w - 1),
                pred_cy - 0.5 * (pred_h - 1),
                pred_cx + 0.5 * (pred_w - 1),
                pred_cy + 0.5 * (pred_h - 1),
            ),
            dim=-1,
        )


def box_area_legacy(boxes: torch.Tensor) -> torch.Tensor:
    """(x2 - x1 + 1) * (y2 - y1 + 1) of (..., 4) xyxy boxes."""
    return (boxes[..., 2] - boxes[..., 0] + TO_REMOVE) * (boxes[..., 3] - boxes[..., 1] + TO_REMOVE)


def box_iou_legacy(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU in the "+1" convention (maskrcnn_benchmark ``boxlist_iou``).

    A degenerate box with x1 == x2 counts as one pixel wide, so it overlaps its neighbours; torchvision's
    ``box_iou`` would give it zero area.

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (M, 4) xyxy.

    Returns:
        (N, M) IoU.
    """
    area1 = box_area_legacy(boxes1)
    area2 = box_area_legacy(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + TO_REMOVE).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes_legacy(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Clamp xyxy boxes to an image: x to [0, w - 1], y to [0, h - 1] (``BoxList.clip_to_image``).

    Args:
        boxes: (N, 4) xyxy.
        image_hw: (h, w) of the unpadded image.

    Returns:
        (N, 4) clipped boxes (degenerate boxes are kept).
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    x1 = boxes[:, 0].clamp(min=0, max=width - TO_REMOVE)
    y1 = boxes[:, 1].clamp(min=0, max=height - TO_REMOVE)
    x2 = boxes[:, 2].clamp(min=0, max=width - TO_REMOVE)
    y2 = boxes[:, 3].clamp(min=0, max=height - TO_REMOVE)
    return torch.stack((x1, y1, x2, y2), dim=-1)
