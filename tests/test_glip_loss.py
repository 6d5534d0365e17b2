"""GLIP ATSS assignment and training loss against the official golden outputs and a plain re-derivation."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from odinw_bench.models.glip.anchors import AnchorGenerator
from odinw_bench.models.glip.box_coder import BoxCoder
from odinw_bench.models.glip.loss import ATSSLoss

NUM_LEVELS = 5
LOSS_KEYS = ("loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token")


# --------------------------------------------------------------------------------------------------- fixture glue
def _fixture_batch(ref):
    """Head outputs, anchors, per-image targets and text mask of the fixture's training step."""
    out, inp = ref.outputs, ref.inputs
    head = {
        "logits": [out[f"head.logits.level{lv}"] for lv in range(NUM_LEVELS)],
        "bbox_reg": [out[f"head.bbox_regression.level{lv}"] for lv in range(NUM_LEVELS)],
        "centerness": [out[f"head.centerness.level{lv}"] for lv in range(NUM_LEVELS)],
        "cls_logits": [out[f"head.cls_logits.level{lv}"] for lv in range(NUM_LEVELS)],
    }
    anchors = AnchorGenerator()([tuple(x.shape[-2:]) for x in head["centerness"]])
    targets, offset = [], 0
    for i in range(2):
        boxes = inp[f"train.img{i}.boxes_xyxy"]
        rows = inp["train.positive_map"][offset : offset + boxes.shape[0]]  # boxes of image 0, then image 1
        offset += boxes.shape[0]
        targets.append({"boxes": boxes, "labels": inp[f"train.img{i}.labels"], "positive_map": rows})
    return head, anchors, targets, inp["text.attention_mask"]


def _run(loss_fn, head, anchors, targets, text_mask, **kwargs):
    return loss_fn(
        head["logits"], head["bbox_reg"], head["centerness"], anchors, targets, text_mask,
        cls_logits=head["cls_logits"], **kwargs,
    )


@pytest.fixture(scope="module")
def fixture_loss(glip_reference):
    head, anchors, targets, text_mask = _fixture_batch(glip_reference)
    losses, assignments = _run(ATSSLoss(), head, anchors, targets, text_mask, return_assignment=True)
    return losses, assignments


# --------------------------------------------------------------------------------------------------- fixture
def test_head_outputs_are_the_training_outputs(glip_reference):
    # The losses below are computed from the stored (eval) head outputs; that is only valid because every
    # dropout, drop-path and DropBlock of the fixture model is 0, which the fixture records.
    meta = glip_reference.meta
    assert meta["config_overrides"]["MODEL.FPN.DROP_PROB"] == 0.0
    assert meta["config_overrides"]["MODEL.SWINT.DROP_PATH_RATE"] == 0.0
    assert meta["bert_config"]["hidden_dropout_prob"] == 0.0
    assert meta["bert_config"]["attention_probs_dropout_prob"] == 0.0
    assert "0.0" in meta["fusion_attention_dropout"]


def test_losses_match_fixture(glip_reference, fixture_loss):
    losses, _ = fixture_loss
    assert tuple(losses) == LOSS_KEYS  # GLIP's dict order, which is also its summation order
    for key in LOSS_KEYS:
        expected = glip_reference.outputs[f"train.loss.{key}"].reshape(())
        torch.testing.assert_close(losses[key], expected, rtol=1e-4, atol=1e-7)
        assert losses[key].item() == pytest.approx(glip_reference.meta["training"]["losses"][key], rel=1e-4)
    total = sum(losses.values())
    torch.testing.assert_close(total, glip_reference.outputs["train.loss.total"].reshape(()), rtol=1e-4, atol=0)


def test_assignment_matches_fixture(glip_reference, fixture_loss):
    _, assignments = fixture_loss
    out = glip_reference.outputs
    for i, a in enumerate(assignments):
        prefix = f"train.atss.img{i}"
        assert torch.equal(a.labels, out[f"{prefix}.labels"])
        assert torch.equal(a.positive_indices, out[f"{prefix}.positive_anchor_indices"])
        assert a.positive_indices.numel() == glip_reference.meta["training"]["num_positive_anchors"][i]
        pos = a.positive_indices
        torch.testing.assert_close(a.reg_targets[pos], out[f"{prefix}.reg_targets_positive"], atol=1e-5, rtol=0)
        assert torch.equal(a.token_labels[pos], out[f"{prefix}.token_labels_positive"])
        # every negative targets only the last ("no object") token
        negatives = a.token_labels[a.labels == 0]
        assert torch.all(negatives[:, -1] == 1) and negatives[:, :-1].sum() == 0


def test_normalised_positive_map_is_binarised(glip_reference, fixture_loss):
    head, anchors, targets, text_mask = _fixture_batch(glip_reference)
    for t in targets:  # what the dataset produces before the collator casts to bool
        t["positive_map"] = t["positive_map"] / (t["positive_map"].sum(-1, keepdim=True) + 1e-6)
    losses = _run(ATSSLoss(), head, anchors, targets, text_mask)
    for key in LOSS_KEYS:
        assert torch.equal(losses[key], fixture_loss[0][key])


def test_image_without_boxes_gives_finite_losses(glip_reference):
    head, anchors, targets, text_mask = _fixture_batch(glip_reference)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                  "positive_map": torch.zeros(0, 256)}
    losses, assignments = _run(ATSSLoss(), head, anchors, targets, text_mask, return_assignment=True)
    assert all(torch.isfinite(v) for v in losses.values())
    assert assignments[1].positive_indices.numel() == 0
    assert torch.equal(assignments[0].labels, glip_reference.outputs["train.atss.img0.labels"])

    targets[0] = targets[1]
    head = {k: [x.clone().requires_grad_(True) for x in v] for k, v in head.items()}
    losses = _run(ATSSLoss(), head, anchors, targets, text_mask)
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    assert torch.isfinite(losses["loss_dot_product_token"]) and losses["loss_dot_product_token"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(x.grad).all() for x in head["logits"])


def test_loss_cls_stays_zero_for_extreme_logits(glip_reference):
    head, anchors, targets, text_mask = _fixture_batch(glip_reference)
    # log(sigmoid(-1e4)) is -inf in float32: GLIP's CPU formula would give 0 * inf = NaN here
    head["cls_logits"] = [torch.full_like(x, -1e4).requires_grad_(True) for x in head["cls_logits"]]
    head["cls_logits"][0].data[:, :, :2, :2] = 1e4
    losses = _run(ATSSLoss(), head, anchors, targets, text_mask)
    assert losses["loss_cls"].item() == 0.0
    losses["loss_cls"].backward()
    assert all(torch.equal(x.grad, torch.zeros_like(x)) for x in head["cls_logits"])


def test_positive_map_width_must_match_logits(glip_reference):
    head, anchors, targets, text_mask = _fixture_batch(glip_reference)
    targets[0]["positive_map"] = targets[0]["positive_map"][:, :100]
    with pytest.raises(ValueError, match="positive_map"):
        _run(ATSSLoss(), head, anchors, targets, text_mask)


# --------------------------------------------------------------------------------------------------- re-derivation
def _plain_atss(level_anchors, boxes, topk=9):
    """ATSS written out with Python floats: (best gt index or -1) per anchor."""
    anchors = [a for level in level_anchors for a in level.tolist()]
    sizes = [len(level) for level in level_anchors]
    centre = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors]

    def area(x):
        return (x[2] - x[0] + 1) * (x[3] - x[1] + 1)

    def iou(a, b):
        iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
        ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
        return iw * ih / (area(a) + area(b) - iw * ih)

    best = [(-math.inf, -1)] * len(anchors)
    for g, box in enumerate(boxes.tolist()):
        gc = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        candidates, start = [], 0
        for size in sizes:
            level = sorted(range(start, start + size), key=lambda a: math.dist(centre[a], gc))
            candidates += level[: min(topk, size)]
            start += size
        values = [iou(anchors[a], box) for a in candidates]
        threshold = statistics.mean(values) + statistics.stdev(values)
        for a, value in zip(candidates, values):
            cx, cy = centre[a]
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if value >= threshold and inside and value > best[a][0]:
                best[a] = (value, g)
    return [g for _, g in best]


def _plain_losses(head, anchors, boxes, token_rows, text_mask, matched):
    """The documented loss formulas, one positive anchor at a time (float64)."""
    coder, alpha, gamma = BoxCoder(), 0.25, 2.0
    all_anchors = torch.cat(anchors).double()
    logits = torch.cat(head["logits"], dim=1)[0].double()
    deltas = torch.cat([x[0].permute(1, 2, 0).reshape(-1, 4) for x in head["bbox_reg"]]).double()
    ctr = torch.cat([x[0].reshape(-1) for x in head["centerness"]]).double()
    positives = [a for a, g in enumerate(matched) if g >= 0]
    token_loss = 0.0
    for a in range(len(matched)):
        target = token_rows[matched[a]].double() if matched[a] >= 0 else torch.eye(logits.shape[1])[-1].double()
        x = logits[a][text_mask > 0]
        y = target[text_mask > 0]
        p = torch.sigmoid(x)
        p_t = p * y + (1 - p) * (1 - y)
        log_p_t = torch.nn.functional.logsigmoid(torch.where(y > 0, x, -x))
        token_loss += float((-(alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * log_p_t).sum())
    giou_sum = weight_sum = bce_sum = 0.0
    for a in positives:
        gt = boxes[matched[a]].double()
        anc = all_anchors[a]
        acx, acy = (anc[0] + anc[2]) / 2, (anc[1] + anc[3]) / 2
        lr = sorted([float(acx - gt[0]), float(gt[2] - acx)])
        tb = sorted([float(acy - gt[1]), float(gt[3] - acy)])
        weight = math.sqrt(lr[0] / lr[1] * tb[0] / tb[1])
        pred = coder.decode(deltas[a], anc).tolist()
        pred[2], pred[3] = max(pred[0], pred[2]), max(pred[1], pred[3])
        g = gt.tolist()
        iw, ih = min(pred[2], g[2]) - max(pred[0], g[0]), min(pred[3], g[3]) - max(pred[1], g[1])
        inter = iw * ih if iw > 0 and ih > 0 else 0.0
        union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
        enclose = (max(pred[2], g[2]) - min(pred[0], g[0])) * (max(pred[3], g[3]) - min(pred[1], g[1]))
        giou = inter / union - (enclose - union) / enclose
        giou_sum += (1 - giou) * weight
        weight_sum += weight
        z = float(ctr[a])
        bce_sum += max(z, 0) - z * weight + math.log1p(math.exp(-abs(z)))
    n_pos = max(len(positives), 1)
    return {"loss_reg": 2.0 * giou_sum / weight_sum, "loss_centerness": bce_sum / n_pos,
            "loss_dot_product_token": token_loss / n_pos}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_batch_matches_plain_derivation(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]  # a 64 x 80 padded input
    anchors = AnchorGenerator()(shapes)
    num_tokens = 12
    head = {
        "logits": [torch.randn(1, h * w, num_tokens, generator=gen) * 3 for h, w in shapes],
        "bbox_reg": [torch.randn(1, 4, h, w, generator=gen) for h, w in shapes],
        "centerness": [torch.randn(1, 1, h, w, generator=gen) for h, w in shapes],
    }
    for reg in head["bbox_reg"]:  # predictions narrower than one pixel decode with x2 < x1 (and y2 < y1)
        reg[0, 2:, ::2, ::2] = -30.0
    # overlapping boxes with non-integer corners, so distances and IoUs have no exact ties
    corners = torch.rand(3, 2, generator=gen) * torch.tensor([30.0, 25.0])
    sizes = 12 + torch.rand(3, 2, generator=gen) * torch.tensor([40.0, 35.0])
    boxes = torch.cat((corners, corners + sizes), dim=1)
    token_rows = torch.zeros(3, num_tokens)
    token_rows[0, 1], token_rows[1, 3:5], token_rows[2, 6] = 1, 1, 1
    text_mask = torch.tensor([1] * 9 + [0] * 3)
    target = {"boxes": boxes, "labels": torch.tensor([2, 5, 1]), "positive_map": token_rows}

    losses, (assignment,) = ATSSLoss()(
        head["logits"], head["bbox_reg"], head["centerness"], anchors, [target], text_mask[None],
        return_assignment=True,
    )
    matched = _plain_atss(anchors, boxes)
    assert assignment.matched_gt.tolist() == matched
    assert assignment.positive_indices.numel() > 3
    expected_labels = [0 if g < 0 else [2, 5, 1][g] for g in matched]
    assert assignment.labels.tolist() == expected_labels
    expected = _plain_losses(head, anchors, boxes, token_rows, text_mask, matched)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key
    assert losses["loss_cls"].item() == 0.0


def test_exact_anchor_box_is_positive_with_zero_targets():
    anchors = AnchorGenerator()([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
    box = anchors[1][5:6].clone()  # a level-1 anchor as the gt box
    assignment = ATSSLoss().assign(anchors, {"boxes": box, "positive_map": torch.ones(1, 4)}, num_tokens=4)
    index = anchors[0].shape[0] + 5
    assert assignment.labels[index].item() == 1 and assignment.matched_gt[index].item() == 0
    assert torch.equal(assignment.reg_targets[index], torch.zeros(4))
    assert assignment.token_labels[index].tolist() == [1.0, 1.0, 1.0, 1.0]


def _assign_one_level(anchor_boxes, gt_box):
    target = {"boxes": torch.tensor([gt_box]), "positive_map": torch.ones(1, 2)}
    return ATSSLoss().assign([torch.tensor(anchor_boxes)], target, num_tokens=2)


def test_iou_threshold_uses_unbiased_std():
    # candidate IoUs with the gt [0, 0, 99, 99] ("+1": 100 x 100 px): 0.8, 0.5 and 0
    anchors = [[0.0, 0.0, 79.0, 99.0], [0.0, 0.0, 49.0, 99.0], [300.0, 300.0, 310.0, 310.0]]
    ious = [0.8, 0.5, 0.0]
    unbiased = statistics.mean(ious) + statistics.stdev(ious)  # 0.837: nothing reaches it
    biased = statistics.mean(ious) + statistics.pstdev(ious)  # 0.763: would make anchor 0 positive
    assert biased < ious[0] < unbiased
    assert _assign_one_level(anchors, [0.0, 0.0, 99.0, 99.0]).labels.tolist() == [0, 0, 0]


def test_anchor_centre_must_be_inside_by_more_than_a_hundredth():
    # anchor 0 is centred at x = 49.5; it passes the IoU threshold (0.34 vs 0.31) in both cases below
    anchors = [[0.0, 0.0, 99.0, 99.0], [300.0, 300.0, 310.0, 310.0], [400.0, 400.0, 410.0, 410.0]]
    assert _assign_one_level(anchors, [49.495, 0.0, 149.0, 99.0]).labels.tolist() == [0, 0, 0]
    assert _assign_one_level(anchors, [49.48, 0.0, 149.0, 99.0]).labels.tolist() == [1, 0, 0]
