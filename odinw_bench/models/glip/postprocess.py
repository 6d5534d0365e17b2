"""GLIP's ATSS post-processing: token scores -> category scores -> candidates -> class-wise NMS -> top 100.

This follows ``rpn/inference.ATSSPostProcessor`` of the official code as it runs on GPU:

* per level, the category score of label j is the mean sigmoid of its caption tokens; entries scoring above
  ``pre_nms_thresh`` (strictly, *before* centerness) are candidates, at most ``pre_nms_top_n`` of them are kept by
  score x sigmoid(centerness), decoded, clipped to the unpadded image, and scored sqrt(score x centerness);
* per image, the levels are concatenated, reduced by ``ml_nms`` (the CUDA kernel's class-wise NMS with "+1" IoU)
  and cut to ``detections_per_img`` with a ``kthvalue`` threshold that keeps ties.

``torchvision.ops.batched_nms`` is not a substitute: it measures IoU in continuous coordinates, so it never
suppresses the zero-width boxes that anchors over the batch padding produce once clipped to a narrower image.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from odinw_bench.models.glip.box_coder import (
    TO_REMOVE,
    BoxCoder,
    box_iou_legacy,
    clip_boxes_legacy,
)

logger = logging.getLogger(__name__)

PositiveMap = Mapping[int, Sequence[int]]


def category_scores(logits: torch.Tensor, positive_map: PositiveMap, num_columns: int) -> torch.Tensor:
    """Per-category scores from token logits: mean sigmoid over each label's tokens (SCORE_AGG "MEAN").

    Args:
        logits: (B, A, L) token logits of one level.
        positive_map: 1-based label -> token indices of that label in the caption.
        num_columns: Width of the score table (GLIP: ``NUM_CLASSES - 1``); labels must be <= it.

    Returns:
        (B, A, num_columns) float32 scores; columns of labels absent from the map are 0.
    """
    probs = logits.float().sigmoid()
    scores = probs.new_zeros(logits.shape[0], logits.shape[1], num_columns)
    for label, tokens in positive_map.items():
        label = int(label)
        if not 1 <= label <= num_columns:
            raise ValueError(f"label {label} does not fit a score table of {num_columns} columns")
        if len(tokens) == 0:  # a label whose span fell outside the caption can never score
            continue
        index = torch.as_tensor(list(tokens), dtype=torch.long, device=logits.device)
        scores[:, :, label - 1] = probs[:, :, index].mean(-1)
    return scores


def ml_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-wise NMS with the semantics of maskrcnn_benchmark's CUDA ``ml_nms`` kernel.

    Boxes are visited by decreasing score; a kept box suppresses every later box of the *same label* whose "+1"
    IoU with it exceeds ``iou_threshold`` (strictly, compared in float32 like the kernel).

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) scores.
        labels: (N,) integer labels.
        iou_threshold: IoU above which a lower-scoring box is dropped.

    Returns:
        (K,) int64 indices of the kept boxes, in ascending original order (not by score).
    """
    num = boxes.shape[0]
    keep = torch.zeros(num, dtype=torch.bool, device=boxes.device)
    if num == 0:
        return keep.nonzero().squeeze(1)
    threshold = torch.tensor(iou_threshold, dtype=torch.float32, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_labels = labels[order]
    # One IoU matrix per label: the kernel only ever compares boxes of equal label.
    for label in torch.unique(sorted_labels):
        members = order[sorted_labels == label]
        group = boxes[members].float()
        suppresses = (box_iou_legacy(group, group) > threshold).triu(diagonal=1)
        keep[members[_greedy_keep(suppresses)]] = True
    return keep.nonzero().squeeze(1)


def _greedy_keep(suppresses: torch.Tensor) -> torch.Tensor:
    """Greedy NMS pass over an upper-triangular "row i suppresses column j" matrix of score-sorted boxes.

    Args:
        suppresses: (n, n) bool, True where box i (higher score) would suppress box j > i.

    Returns:
        (k,) int64 positions (into the sorted order) of the kept boxes.
    """
    matrix = suppresses.cpu().numpy()
    removed = np.zeros(matrix.shape[0], dtype=bool)
    kept = []
    for i in range(matrix.shape[0]):
        if not removed[i]:
            kept.append(i)
            removed |= matrix[i]
    return torch.as_tensor(kept, dtype=torch.long, device=suppresses.device)


def rescale_boxes(boxes: torch.Tensor, from_hw: Sequence[int], to_hw: Sequence[int]) -> torch.Tensor:
    """Map xyxy boxes between image sizes the way GLIP's ``BoxList.resize`` does (plain ratios, no "+1").

    Args:
        boxes: (N, 4) xyxy in the ``from_hw`` image (e.g. resized-image pixels).
        from_hw: (h, w) the boxes refer to.
        to_hw: (h, w) to map to (e.g. the original image).

    Returns:
        (N, 4) xyxy boxes in ``to_hw`` pixels.
    """
    ratio_w = float(to_hw[1]) / float(from_hw[1])
    ratio_h = float(to_hw[0]) / float(from_hw[0])
    if ratio_w == ratio_h:
        return boxes * ratio_w
    scale = boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    return boxes * scale


def _image_hw(image_size) -> tuple[int, int]:
    return int(image_size[0]), int(image_size[1])


class ATSSPostProcessor:
    """Detections from the VLDyHead outputs, as GLIP's ``ATSSPostProcessor`` (dot-product token scoring).

    Args:
        pre_nms_thresh: Candidate threshold on the category score, applied before centerness (strict ``>``).
        pre_nms_top_n: Maximum candidates per level and image.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_img: Detections kept per image after NMS (ties at the cut are kept); <= 0 keeps all.
        num_classes: GLIP's ``DYHEAD.NUM_CLASSES``; the score table has ``num_classes - 1`` columns. ``None``
            sizes the table to the largest label of the positive map (same detections).
        box_coder: Decoder of the regression deltas (default: weights 10, 10, 5, 5).
        min_size: ``remove_small_boxes`` size in the "+1" convention (GLIP: 0).
    """

    def __init__(
        self,
        pre_nms_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        num_classes: int | None = None,
        box_coder: BoxCoder | None = None,
        min_size: float = 0.0,
    ):
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.num_classes = num_classes
        self.box_coder = box_coder or BoxCoder()
        self.min_size = min_size

    def __call__(
        self,
        logits: Sequence[torch.Tensor],
        bbox_reg: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        positive_map: PositiveMap,
        image_sizes: Sequence[Sequence[int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Final detections per image.

        Args:
            logits: Per level, (B, H_l*W_l, L) token logits.
            bbox_reg: Per level, (B, 4, H_l, W_l) regression deltas.
            centerness: Per level, (B, 1, H_l, W_l) centerness logits.
            anchors: Per level, (H_l*W_l, 4) xyxy anchors shared by the batch.
            positive_map: 1-based label -> caption token indices.
            image_sizes: (h, w) of each unpadded image, used for clipping.

        Returns:
            Per image, dict(boxes (N, 4) xyxy in resized-image pixels, scores (N,), labels (N,) int64 1-based),
            in concatenation order (levels, then row-major anchor x class), not sorted by score.
        """
        candidates = self.candidates(logits, bbox_reg, centerness, anchors, positive_map, image_sizes)
        return [self.select(c) for c in candidates]

    def candidates(
        self,
        logits: Sequence[torch.Tensor],
        bbox_reg: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        positive_map: PositiveMap,
        image_sizes: Sequence[Sequence[int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Pre-NMS candidates per image, concatenated over levels (same arguments as ``__call__``)."""
        num_columns = self._num_columns(positive_map)
        per_level = [
            self._level_candidates(lg, rg, ct, an, positive_map, num_columns, image_sizes)
            for lg, rg, ct, an in zip(logits, bbox_reg, centerness, anchors, strict=True)
        ]
        per_image = []
        for i in range(len(image_sizes)):
            levels = [level[i] for level in per_level]
            per_image.append({key: torch.cat([lv[key] for lv in levels]) for key in ("boxes", "scores", "labels")})
        return per_image

    def select(self, candidates: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Class-wise NMS and the per-image detection cut of one image's candidates."""
        keep = ml_nms(candidates["boxes"], candidates["scores"], candidates["labels"], self.nms_thresh)
        result = {key: value[keep] for key, value in candidates.items()}
        num = keep.numel()
        if num > self.detections_per_img > 0:
            # kthvalue threshold as in GLIP: boxes tied with the 100th score all survive.
            threshold, _ = torch.kthvalue(result["scores"].cpu().float(), num - self.detections_per_img + 1)
            kept = (result["scores"] >= threshold.item()).nonzero().squeeze(1)
            result = {key: value[kept] for key, value in result.items()}
        return result

    def _num_columns(self, positive_map: PositiveMap) -> int:
        if self.num_classes is not None:
            return self.num_classes - 1
        return max((int(label) for label in positive_map), default=0)

    def _level_candidates(self, logits, bbox_reg, centerness, anchors, positive_map, num_columns, image_sizes):
        """Candidates of one level for every image of the batch.

        Args:
            logits: (B, HW, L); bbox_reg: (B, 4, H, W); centerness: (B, 1, H, W); anchors: (HW, 4).

        Returns:
            Per image, dict(boxes (n, 4), scores (n,), labels (n,)) in row-major (anchor, class) order.
        """
        batch = logits.shape[0]
        scores = category_scores(logits, positive_map, num_columns)
        is_candidate = scores > self.pre_nms_thresh
        top_n = is_candidate.reshape(batch, -1).sum(1).clamp(max=self.pre_nms_top_n)
        ctr = centerness.permute(0, 2, 3, 1).reshape(batch, -1).float().sigmoid()
        combined = scores * ctr[:, :, None]
        deltas = bbox_reg.permute(0, 2, 3, 1).reshape(batch, -1, 4)
        results = []
        for i in range(batch):
            flat = is_candidate[i].reshape(-1).nonzero().squeeze(1)
            values = combined[i].reshape(-1)[flat]
            _, top = values.topk(int(top_n[i]), sorted=False)
            # Official order after topk(sorted=False) is implementation-defined; row-major order is reproducible.
            top = top.sort().values
            flat, values = flat[top], values[top]
            location, column = flat // num_columns, flat % num_columns
            boxes = self.box_coder.decode(deltas[i, location].float(), anchors[location])
            boxes = clip_boxes_legacy(boxes, _image_hw(image_sizes[i]))
            entry = {"boxes": boxes, "scores": torch.sqrt(values), "labels": column + 1}
            results.append(self._remove_small(entry))
        return results

    def _remove_small(self, entry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        boxes = entry["boxes"]
        widths = boxes[:, 2] - boxes[:, 0] + TO_REMOVE
        heights = boxes[:, 3] - boxes[:, 1] + TO_REMOVE
        keep = ((widths >= self.min_size) & (heights >= self.min_size)).nonzero().squeeze(1)
        return {key: value[keep] for key, value in entry.items()}
