"""GLIP's ATSS training loss (``rpn/loss.ATSSLossComputation`` with the dot-product token loss).

Assignment (per image, anchors of all levels concatenated):
  "+1" IoU between anchors and gt boxes; per level the ``topk`` anchors whose centres are closest to each gt centre
  (centres without "+1") are candidates; a candidate is positive when its IoU reaches mean + unbiased std of its
  gt's candidate IoUs and its centre lies inside the gt by more than 0.01 px; an anchor positive for several gts
  takes the one with the highest IoU.

Losses (N_pos = positives over the batch, averaged over processes, at least 1):
  * ``loss_dot_product_token``: sigmoid focal loss (alpha 0.25, gamma 2) of every anchor's token logits against the
    matched gt's binary positive-map row (unmatched anchors: only the last token is 1), over text-mask positions,
    summed / N_pos;
  * ``loss_reg``: GIoU loss (continuous coordinates) of the positives, weighted by their centerness targets and
    normalised by the targets' sum, x ``reg_loss_weight``;
  * ``loss_centerness``: BCE-with-logits of the centerness logits of the positives, summed / N_pos;
  * ``loss_cls``: 0 x the sigmoid focal loss of the dead ``cls_logits`` classifier, kept so that the loss dict and
    its logged values match GLIP's; computed from logits with a stable formula so it cannot turn NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from odinw_bench.models.glip.box_coder import BoxCoder, box_iou_legacy

logger = logging.getLogger(__name__)

# GLIP marks "not a candidate" with -INF in the anchor x gt IoU table before taking the max over gts.
INF = 1e8


@dataclass
class AtssAssignment:
    """ATSS targets of one image.

    Attributes:
        labels: (A,) int64 gt label of each anchor; 0 for negatives.
        matched_gt: (A,) int64 index of the matched gt box; -1 for negatives.
        reg_targets: (A, 4) box-coder targets against the matched gt (negatives: meaningless, as in GLIP).
        token_labels: (A, L) float 0/1 token targets; negatives have only the last token set.
    """

    labels: torch.Tensor
    matched_gt: torch.Tensor
    reg_targets: torch.Tensor
    token_labels: torch.Tensor

    @property
    def positive_indices(self) -> torch.Tensor:
        """(P,) int64 indices of the positive anchors, ascending."""
        return (self.labels > 0).nonzero().squeeze(1)


def _anchor_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 2) centres (x1 + x2) / 2, (y1 + y2) / 2 of (N, 4) xyxy boxes (no "+1")."""
    return torch.stack(((boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0), dim=1)


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Sum of a scalar over the distributed processes divided by their number (GLIP's ``reduce_sum / world``).

    GLIP takes the result back to the host (``.item()``); it stays a 0-dim tensor here (the same float32 value), so
    a GPU step does not wait for it. Every process must call this the same number of times, which is why the
    no-positive branch calls it too.
    """
    value = value.detach()
    world = _world_size()
    if world > 1:
        value = value.clone().float()
        torch.distributed.all_reduce(value)
        return value / world
    return value


def _flatten_levels(per_level: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, C, H, W) maps -> (B, sum_l H_l*W_l, C), row-major over (y, x) within each level."""
    batch = per_level[0].shape[0]
    return torch.cat([x.permute(0, 2, 3, 1).reshape(batch, -1, x.shape[1]) for x in per_level], dim=1)


class ATSSLoss:
    """GLIP's ATSS loss for the dot-product token head.

    Args:
        topk: Candidates per level and gt (``MODEL.ATSS.TOPK``).
        reg_loss_weight: Multiplier of the GIoU loss (``MODEL.ATSS.REG_LOSS_WEIGHT``).
        focal_alpha, focal_gamma: Focal parameters of the zero-weighted ``cls_logits`` loss (``MODEL.FOCAL``).
        token_alpha, token_gamma: Focal parameters of the token loss (``FUSE_CONFIG.TOKEN_ALPHA/GAMMA``).
        dot_product_token_loss_weight: Multiplier of the token loss.
        box_coder: Box coder of the regression targets (default weights 10, 10, 5, 5).
        inside_margin: How far (px) an anchor centre must lie inside its gt box.
    """

    def __init__(
        self,
        topk: int = 9,
        reg_loss_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        token_alpha: float = 0.25,
        token_gamma: float = 2.0,
        dot_product_token_loss_weight: float = 1.0,
        box_coder: BoxCoder | None = None,
        inside_margin: float = 0.01,
    ):
        self.topk = topk
        self.reg_loss_weight = reg_loss_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.token_alpha = token_alpha
        self.token_gamma = token_gamma
        self.dot_product_token_loss_weight = dot_product_token_loss_weight
        self.box_coder = box_coder or BoxCoder()
        self.inside_margin = inside_margin

    def __call__(
        self,
        logits: Sequence[torch.Tensor],
        bbox_reg: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        text_masks: torch.Tensor,
        cls_logits: Sequence[torch.Tensor] | None = None,
        return_assignment: bool = False,
        real_tokens: int | None = None,
    ):
        """Loss dict of one batch.

        Args:
            logits: Per level, (B, H_l*W_l, L) token logits.
            bbox_reg: Per level, (B, 4, H_l, W_l) regression deltas.
            centerness: Per level, (B, 1, H_l, W_l) centerness logits.
            anchors: Per level, (H_l*W_l, 4) xyxy anchors shared by the batch.
            targets: Per image, dict(boxes (G, 4) xyxy in input pixels, positive_map (G, L) token map (any
                positive value counts as 1), optional labels (G,) int64 category ids, default 1).
            text_masks: (B, L) attention mask of the caption tokens.
            cls_logits: Per level, (B, C, H_l, W_l) outputs of the dead classifier, for ``loss_cls``; without
                them ``loss_cls`` is a plain 0.
            return_assignment: Also return the per-image :class:`AtssAssignment`.
            real_tokens: When the caller knows that every row of ``text_masks`` is ``real_tokens`` ones and then
                zeros, the token loss slices them instead of indexing by the mask (the same sum, and a GPU step
                need not wait for the mask's count).

        Returns:
            dict(loss_reg, loss_centerness, loss_cls, loss_dot_product_token) of scalar tensors (GLIP's order),
            and the list of assignments when ``return_assignment``.
        """
        # Like GLIP's custom_fwd(cast_inputs=float32): the loss always runs in float32, also under AMP.
        token_logits = torch.cat([x.float() for x in logits], dim=1)
        batch, _, num_tokens = token_logits.shape
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch}")
        assignments = [self.assign(anchors, target, num_tokens) for target in targets]

        labels = torch.cat([a.labels for a in assignments])
        positives = (labels > 0).nonzero().squeeze(1)
        # The positives' count is on the host already (nonzero's size); several processes average it on the device.
        num_pos: float | torch.Tensor = float(positives.numel())
        if _world_size() > 1:
            num_pos = _mean_over_processes(labels.new_tensor(num_pos, dtype=torch.float32))
        num_pos = max(num_pos, 1.0) if isinstance(num_pos, float) else num_pos.clamp(min=1.0)

        losses = self._box_losses(bbox_reg, centerness, anchors, assignments, positives, num_pos)
        losses["loss_cls"] = self._cls_loss(cls_logits, labels, num_pos, token_logits)
        token_targets = torch.stack([a.token_labels for a in assignments])
        losses["loss_dot_product_token"] = (
            self._token_loss(token_logits, token_targets, text_masks, real_tokens) / num_pos
            * self.dot_product_token_loss_weight
        )
        if return_assignment:
            return losses, assignments
        return losses

    def assign(
        self, anchors: Sequence[torch.Tensor], target: Mapping[str, torch.Tensor], num_tokens: int
    ) -> AtssAssignment:
        """ATSS assignment of one image.

        Args:
            anchors: Per level, (A_l, 4) xyxy anchors.
            target: dict(boxes (G, 4), positive_map (G, L), optional labels (G,)); G may be 0.
            num_tokens: L, the token dimension of the logits.

        Returns:
            The image's :class:`AtssAssignment` over the A = sum_l A_l anchors.
        """
        all_anchors = torch.cat(list(anchors)).float()
        boxes = target["boxes"].to(all_anchors).reshape(-1, 4)
        num_gt = boxes.shape[0]
        token_map = self._binary_token_map(target, num_gt, num_tokens, all_anchors.device)
        gt_labels = target.get("labels")
        if gt_labels is None:
            gt_labels = torch.ones(num_gt, dtype=torch.long, device=all_anchors.device)
        gt_labels = gt_labels.to(device=all_anchors.device, dtype=torch.long).reshape(-1)

        if num_gt == 0:
            best = torch.full((all_anchors.shape[0],), -INF, device=all_anchors.device)
            matched = torch.zeros(all_anchors.shape[0], dtype=torch.long, device=all_anchors.device)
        else:
            best, matched = self._match(anchors, all_anchors, boxes)
        negative = best == -INF

        labels = gt_labels[matched] if num_gt else torch.zeros_like(matched)
        labels = labels.masked_fill(negative, 0)
        token_labels = token_map[matched] if num_gt else all_anchors.new_zeros(matched.shape[0], num_tokens)
        # GLIP's leftover "no object" target: only the last token; it is masked out unless the caption is full.
        unmatched_row = all_anchors.new_zeros(num_tokens)
        unmatched_row[-1] = 1.0
        token_labels = torch.where(negative[:, None], unmatched_row, token_labels)  # no mask indexing: no GPU wait
        if num_gt:
            reg_targets = self.box_coder.encode(boxes[matched], all_anchors)
        else:
            reg_targets = all_anchors.new_zeros(all_anchors.shape)
        return AtssAssignment(labels, matched.masked_fill(negative, -1), reg_targets, token_labels)

    def _match(self, anchors: Sequence[torch.Tensor], all_anchors: torch.Tensor, boxes: torch.Tensor):
        """Best gt per anchor among its ATSS-positive gts.

        Args:
            anchors: Per level, (A_l, 4); all_anchors: (A, 4) their concatenation; boxes: (G, 4), G > 0.

        Returns:
            (A,) IoU with the chosen gt (-INF where the anchor is positive for none) and (A,) its index.
        """
        ious = box_iou_legacy(all_anchors, boxes)
        anchor_centres = _anchor_centres(all_anchors)
        distances = (anchor_centres[:, None, :] - _anchor_centres(boxes)[None, :, :]).pow(2).sum(-1).sqrt()

        candidates, start = [], 0
        for level_anchors in anchors:
            count = level_anchors.shape[0]
            k = min(self.topk, count)
            _, nearest = distances[start : start + count].topk(k, dim=0, largest=False)
            candidates.append(nearest + start)
            start += count
        candidates = torch.cat(candidates)  # (K, G)

        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # unbiased std, as torch.std defaults
        is_positive = candidate_ious >= threshold[None, :]
        centre_x = anchor_centres[candidates, 0]
        centre_y = anchor_centres[candidates, 1]
        margins = torch.stack(
            (centre_x - boxes[:, 0], centre_y - boxes[:, 1], boxes[:, 2] - centre_x, boxes[:, 3] - centre_y), dim=1
        )
        is_positive &= margins.min(dim=1).values > self.inside_margin

        # Each column's candidates are distinct anchors (top-k per level, levels disjoint): scattering the positive
        # candidates' IoUs (-INF for the others) writes what indexing by the positives would, with no GPU wait.
        masked_ious = torch.full_like(ious, -INF)
        masked_ious.scatter_(0, candidates, torch.where(is_positive, candidate_ious, -INF))
        return masked_ious.max(dim=1)

    @staticmethod
    def _binary_token_map(target, num_gt: int, num_tokens: int, device) -> torch.Tensor:
        token_map = target.get("positive_map")
        if num_gt == 0:
            return torch.zeros(0, num_tokens, device=device)
        if token_map is None:
            raise ValueError("each target with boxes needs a 'positive_map' (G, L) for the token loss")
        token_map = token_map.to(device)
        if token_map.dim() != 2 or token_map.shape[0] != num_gt:
            raise ValueError(f"positive_map must be (G={num_gt}, L), got {tuple(token_map.shape)}")
        if token_map.shape[1] != num_tokens:
            raise ValueError(f"positive_map has {token_map.shape[1]} tokens, the logits have {num_tokens}")
        # GLIP's collator binarises the (row-normalised) maps by casting them to bool.
        return (token_map != 0).float()

    def _box_losses(self, bbox_reg, centerness, anchors, assignments, positives, num_pos) -> dict:
        """loss_reg and loss_centerness over the positive anchors of the batch."""
        deltas = _flatten_levels([x.float() for x in bbox_reg]).reshape(-1, 4)[positives]
        ctr_logits = _flatten_levels([x.float() for x in centerness]).reshape(-1)[positives]
        if positives.numel() == 0:
            _mean_over_processes(deltas.new_zeros(()))  # keep collectives in step with the other branch
            return {"loss_reg": deltas.sum() * self.reg_loss_weight, "loss_centerness": ctr_logits.sum()}
        batch_anchors = torch.cat(list(anchors)).float().repeat(len(assignments), 1)[positives]
        reg_targets = torch.cat([a.reg_targets for a in assignments])[positives]
        ctr_targets = self._centerness_targets(reg_targets, batch_anchors)
        ctr_sum = _mean_over_processes(ctr_targets.sum())

        pred_boxes = self.box_coder.decode(deltas, batch_anchors)
        # GLIP raises the predicted x2, y2 to at least x1, y1 before its (continuous) GIoU.
        pred_boxes = torch.cat((pred_boxes[:, :2], torch.max(pred_boxes[:, :2], pred_boxes[:, 2:])), dim=1)
        gt_boxes = self.box_coder.decode(reg_targets, batch_anchors)
        giou = _giou_loss(pred_boxes, gt_boxes, eps=1e-7)
        loss_reg = (giou * ctr_targets).sum() / ctr_sum
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="sum") / num_pos
        return {"loss_reg": loss_reg * self.reg_loss_weight, "loss_centerness": loss_ctr}

    def _centerness_targets(self, reg_targets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of the decoded targets around anchor centres."""
        gts = self.box_coder.decode(reg_targets, anchors)
        centres = _anchor_centres(anchors)
        left_right = torch.stack((centres[:, 0] - gts[:, 0], gts[:, 2] - centres[:, 0]), dim=1)
        top_bottom = torch.stack((centres[:, 1] - gts[:, 1], gts[:, 3] - centres[:, 1]), dim=1)
        return torch.sqrt(
            (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
            * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
        )

    def _token_loss(self, token_logits, token_targets, text_masks, real_tokens=None) -> torch.Tensor:
        """Summed token sigmoid focal loss over (anchor, token) pairs whose token is in the text mask.

        With ``real_tokens`` (every mask a prefix of that many ones) the first columns are taken by slicing: the
        same elements in the same order as the mask selects, so the same sum, bit for bit.
        """
        if real_tokens is not None:
            logits, targets = token_logits[..., :real_tokens], token_targets[..., :real_tokens]
            return sigmoid_focal_loss(logits.reshape(-1), targets.reshape(-1), self.token_alpha, self.token_gamma,
                                      reduction="sum")
        mask = (text_masks > 0)[:, None, :].expand_as(token_logits)
        return sigmoid_focal_loss(
            token_logits[mask], token_targets[mask], self.token_alpha, self.token_gamma, reduction="sum"
        )

    def _cls_loss(self, cls_logits, labels, num_pos, reference) -> torch.Tensor:
        """0 x sigmoid focal loss of the frozen classifier against one-hot labels 1..C (GLIP's ``loss_cls``)."""
        if cls_logits is None:
            return reference.new_zeros(())
        flat = _flatten_levels([x.float() for x in cls_logits]).reshape(-1, cls_logits[0].shape[1])
        classes = torch.arange(1, flat.shape[1] + 1, device=flat.device)
        # Labels above C (category ids beyond the classifier's width) simply match no column, as in GLIP.
        onehot = (labels[:, None] == classes[None, :]).float()
        focal = sigmoid_focal_loss(flat, onehot, self.focal_alpha, self.focal_gamma, reduction="sum")
        return 0.0 * focal / num_pos


def _giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``torchvision.ops.generalized_box_iou_loss(..., reduction="none")`` with the same values and gradients.

    torchvision writes the intersection through a boolean mask, which makes a GPU step wait for the host; a
    ``torch.where`` computes the same numbers without that.

    Args:
        boxes1, boxes2: (N, 4) xyxy boxes.

    Returns:
        (N,) 1 - GIoU.
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intersection = torch.where(overlap, (xkis2 - xkis1) * (ykis2 - ykis1), torch.zeros_like(x1))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    iou = intersection / (union + eps)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - ((area_c - union) / (area_c + eps)))
