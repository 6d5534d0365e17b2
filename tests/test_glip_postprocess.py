"""GLIP anchors, box coder and ATSS post-processing against first principles and the official golden outputs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from odinw_bench.models.glip.anchors import AnchorGenerator
from odinw_bench.models.glip.box_coder import (
    BoxCoder,
    box_iou_legacy,
    clip_boxes_legacy,
)
from odinw_bench.models.glip.postprocess import (
    ATSSPostProcessor,
    category_scores,
    ml_nms,
    rescale_boxes,
)

NUM_LEVELS = 5


# --------------------------------------------------------------------------------------------------- fixture glue
def _head_outputs(ref):
    """Per-level head outputs of the fixture: token logits, box regression, centerness."""
    out = ref.outputs
    logits = [out[f"head.logits.level{lv}"] for lv in range(NUM_LEVELS)]
    bbox_reg = [out[f"head.bbox_regression.level{lv}"] for lv in range(NUM_LEVELS)]
    centerness = [out[f"head.centerness.level{lv}"] for lv in range(NUM_LEVELS)]
    return logits, bbox_reg, centerness


def _fixture_anchors(ref):
    shapes = [tuple(ref.outputs[f"head.centerness.level{lv}"].shape[-2:]) for lv in range(NUM_LEVELS)]
    return AnchorGenerator()(shapes)


def _positive_map(ref) -> dict[int, list[int]]:
    return {int(k): v for k, v in ref.meta["positive_map_label_to_token"].items()}


def _image_sizes(ref) -> list[list[int]]:
    return ref.inputs["images.image_sizes_hw"].tolist()


@pytest.fixture(scope="module")
def fixture_run(glip_reference):
    """Candidates and detections of the fixture's two images, computed once per module."""
    logits, bbox_reg, centerness = _head_outputs(glip_reference)
    processor = ATSSPostProcessor(num_classes=81)
    candidates = processor.candidates(
        logits, bbox_reg, centerness, _fixture_anchors(glip_reference), _positive_map(glip_reference),
        _image_sizes(glip_reference),
    )
    return processor, candidates, [processor.select(c) for c in candidates]


def _sorted_by_score(result: dict) -> dict:
    order = torch.argsort(result["scores"], descending=True, stable=True)
    return {k: v[order] for k, v in result.items()}


# --------------------------------------------------------------------------------------------------- anchors
def test_cell_anchors_follow_detectron_plus_one_rule():
    generator = AnchorGenerator()
    # Independent derivation: centre (st-1)/2, half-width (8*st - 1)/2.
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        c, h = (stride - 1) / 2, (8 * stride - 1) / 2
        assert generator.level_cell_anchor(level).tolist() == [[c - h, c - h, c + h, c + h]]
    assert generator.level_cell_anchor(0).tolist() == [[-28.0, -28.0, 35.0, 35.0]]
    assert sorted(generator.state_dict()) == [f"cell_anchors.{lv}" for lv in range(NUM_LEVELS)]


def test_anchor_grid_is_row_major_over_the_padded_map():
    anchors = AnchorGenerator()([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])
    assert [a.shape for a in anchors] == [(6, 4), (2, 4), (1, 4), (1, 4), (1, 4)]
    # location index = y * W + x, shifted by stride 8 on level 0
    assert anchors[0][4].tolist() == [-28.0 + 8, -28.0 + 8, 35.0 + 8, 35.0 + 8]
    assert anchors[1][1].tolist() == [-56.0 + 16, -56.0, 71.0 + 16, 71.0]


def test_cell_anchors_equal_the_official_buffers(glip_reference):
    generator = AnchorGenerator()
    prefix = "rpn.anchor_generator."
    official = {k[len(prefix):]: v for k, v in glip_reference.state_dict.items() if k.startswith(prefix)}
    generator.load_state_dict(official, strict=True)  # same names and shapes
    for level in range(NUM_LEVELS):
        assert torch.equal(AnchorGenerator().level_cell_anchor(level), official[f"cell_anchors.{level}"])


def test_anchors_match_fixture_exactly(glip_reference):
    anchors = _fixture_anchors(glip_reference)
    for level in range(NUM_LEVELS):
        expected = glip_reference.outputs[f"anchors.level{level}"]
        assert anchors[level].shape == (glip_reference.outputs[f"head.logits.level{level}"].shape[1], 4)
        assert torch.equal(anchors[level], expected)


# --------------------------------------------------------------------------------------------------- box coder
def test_box_coder_round_trip_and_identity():
    coder = BoxCoder()
    anchors = torch.tensor([[-28.0, -28.0, 35.0, 35.0], [10.0, 20.0, 41.0, 83.0]])
    gts = torch.tensor([[0.0, 0.0, 63.0, 63.0], [5.5, 30.0, 60.25, 70.0]])
    deltas = coder.encode(gts, anchors)
    assert torch.allclose(coder.decode(deltas, anchors), gts, atol=1e-4)
    assert torch.equal(coder.encode(anchors, anchors), torch.zeros(2, 4))
    assert torch.equal(coder.decode(torch.zeros(2, 4), anchors), anchors)
    # +1 widths: the 64-px anchor vs a 32-px box of the same centre -> dw = 5 * log(32 / 64)
    half = torch.tensor([[-12.0, -12.0, 19.0, 19.0]])
    assert coder.encode(half, anchors[:1])[0, 2].item() == pytest.approx(5 * math.log(0.5), abs=1e-6)


def test_box_coder_clamps_size_deltas_from_above_only():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 15.0, 15.0]])  # 16 px wide
    big = coder.decode(torch.tensor([[0.0, 0.0, 1e4, -1e4]]), anchor)
    width, height = (big[0, 2] - big[0, 0] + 1).item(), (big[0, 3] - big[0, 1] + 1).item()
    assert width == pytest.approx(1000.0, rel=1e-5)  # exp(log(1000/16)) * 16
    assert height < 1e-6  # no lower clamp


def test_iou_and_clip_use_plus_one_pixels():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0], [319.0, 0.0, 319.0, 9.0]])
    b = torch.tensor([[0.0, 0.0, 4.0, 9.0], [319.0, 0.0, 319.0, 9.0]])
    iou = box_iou_legacy(a, b)
    assert iou[0, 0].item() == pytest.approx(50 / 100)
    assert iou[1, 1].item() == 1.0  # a zero-width box is one pixel wide, it overlaps itself
    clipped = clip_boxes_legacy(torch.tensor([[-5.0, -1.0, 500.0, 330.0]]), (320, 320))
    assert clipped.tolist() == [[0.0, 0.0, 319.0, 319.0]]


# --------------------------------------------------------------------------------------------------- ml_nms
def _brute_force_plus_one_nms(boxes, scores, labels, threshold):
    """Plain-Python greedy NMS in the "+1" convention, per label; returns ascending kept indices."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if labels[i] != labels[j]:
                continue
            bi, bj = boxes[i], boxes[j]
            iw = max(min(bi[2], bj[2]) - max(bi[0], bj[0]) + 1, 0.0)
            ih = max(min(bi[3], bj[3]) - max(bi[1], bj[1]) + 1, 0.0)
            inter = iw * ih
            area_i = (bi[2] - bi[0] + 1) * (bi[3] - bi[1] + 1)
            area_j = (bj[2] - bj[0] + 1) * (bj[3] - bj[1] + 1)
            if inter / (area_i + area_j - inter) > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return sorted(kept)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ml_nms_agrees_with_brute_force(seed):
    rng = random.Random(seed)
    boxes, scores, labels = [], [], []
    for _ in range(150):
        x1, y1 = rng.randint(0, 60), rng.randint(0, 60)
        # integer corners make many exact overlaps; some boxes are degenerate (zero width / height)
        boxes.append([x1, y1, x1 + rng.choice([0, 0, 3, 8, 15, 30]), y1 + rng.randint(0, 25)])
        scores.append(rng.random())
        labels.append(rng.randint(1, 3))
    threshold = rng.choice([0.3, 0.5, 0.6])
    # the brute force sees the float32 values the kernel sees
    boxes_t = torch.tensor(boxes, dtype=torch.float32)
    scores_t = torch.tensor(scores, dtype=torch.float32)
    expected = _brute_force_plus_one_nms(boxes_t.tolist(), scores_t.tolist(), labels, threshold)
    kept = ml_nms(boxes_t, scores_t, torch.tensor(labels), threshold)
    assert kept.tolist() == expected
    assert len(expected) < 150  # the case really suppresses something


def test_ml_nms_empty_and_order():
    assert ml_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6).tolist() == []
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [50.0, 50, 60, 60], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.8])
    labels = torch.tensor([1, 1, 1, 2])
    # box 1 suppresses box 0 (same label); box 3 has another label; output is in original order
    assert ml_nms(boxes, scores, labels, 0.6).tolist() == [1, 2, 3]


# --------------------------------------------------------------------------------------------------- post-processor
def test_category_scores_match_fixture(glip_reference):
    logits, _, _ = _head_outputs(glip_reference)
    positive_map = _positive_map(glip_reference)
    for level in range(NUM_LEVELS):
        scores = category_scores(logits[level], positive_map, num_columns=80)
        assert scores.shape[-1] == 80
        expected = glip_reference.outputs[f"postprocess.category_scores.level{level}"]
        torch.testing.assert_close(scores[..., :6], expected, atol=1e-5, rtol=0)
        assert torch.count_nonzero(scores[..., 6:]) == 0  # labels not in the prompt score 0


def test_category_scores_reject_labels_wider_than_table():
    with pytest.raises(ValueError, match="label 3"):
        category_scores(torch.zeros(1, 2, 4), {3: [1]}, num_columns=2)


def test_pre_nms_candidates_match_fixture(glip_reference, fixture_run):
    _, candidates, _ = fixture_run
    expected_counts = glip_reference.meta["num_pre_nms_candidates"]
    for i, cand in enumerate(candidates):
        got = _sorted_by_score(cand)
        prefix = f"postprocess.img{i}.pre_nms"
        assert got["scores"].numel() == expected_counts[i]
        torch.testing.assert_close(got["scores"], glip_reference.outputs[f"{prefix}.scores_sorted"], atol=1e-4, rtol=0)
        torch.testing.assert_close(got["boxes"], glip_reference.outputs[f"{prefix}.boxes_sorted"], atol=1e-3, rtol=0)
        assert torch.equal(got["labels"], glip_reference.outputs[f"{prefix}.labels_sorted"])


def test_detections_match_fixture(glip_reference, fixture_run):
    _, _, detections = fixture_run
    outputs = glip_reference.outputs
    for i, det in enumerate(detections):
        assert det["scores"].numel() == glip_reference.meta["num_detections"][i]
        got = _sorted_by_score(det)
        torch.testing.assert_close(got["scores"], outputs[f"detections.img{i}.scores_sorted"], atol=1e-4, rtol=0)
        torch.testing.assert_close(got["boxes"], outputs[f"detections.img{i}.boxes_sorted"], atol=1e-3, rtol=0)
        assert torch.equal(got["labels"], outputs[f"detections.img{i}.labels_sorted"])
    # image 0 is padded from 320 to 480 columns: 20 final boxes are clipped onto x = 319 with zero width
    zero_width = detections[0]["boxes"][:, 0] == detections[0]["boxes"][:, 2]
    assert int(zero_width.sum()) == 20 and torch.all(detections[0]["boxes"][zero_width, 0] == 319)


def test_call_equals_candidates_then_select(glip_reference, fixture_run):
    processor, _, detections = fixture_run
    logits, bbox_reg, centerness = _head_outputs(glip_reference)
    direct = processor(
        logits, bbox_reg, centerness, _fixture_anchors(glip_reference), _positive_map(glip_reference),
        _image_sizes(glip_reference),
    )
    for a, b in zip(direct, detections):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


def test_boxes_rescaled_to_original_size_match_fixture(glip_reference, fixture_run):
    _, _, detections = fixture_run
    outputs = glip_reference.outputs
    resized, original = _image_sizes(glip_reference), glip_reference.inputs["images.original_sizes_hw"].tolist()
    for i, det in enumerate(detections):
        got = _sorted_by_score({"boxes": rescale_boxes(det["boxes"], resized[i], original[i]), "scores": det["scores"]})
        order = torch.argsort(outputs[f"detections.img{i}.scores"], descending=True, stable=True)
        expected = outputs[f"detections.img{i}.boxes_original_size"][order]
        torch.testing.assert_close(got["boxes"], expected, atol=1e-3, rtol=0)


def test_rescale_boxes_uses_plain_ratios_per_axis():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert rescale_boxes(boxes, (100, 200), (50, 400)).tolist() == [[20.0, 10.0, 60.0, 20.0]]
    assert rescale_boxes(boxes, (100, 100), (200, 200)).tolist() == [[20.0, 40.0, 60.0, 80.0]]


def test_torchvision_batched_nms_does_not_reproduce_glip(fixture_run):
    from torchvision.ops import batched_nms

    _, candidates, _ = fixture_run
    cand = candidates[0]
    ours = ml_nms(cand["boxes"], cand["scores"], cand["labels"], 0.6)
    theirs = batched_nms(cand["boxes"], cand["scores"], cand["labels"], 0.6)
    # torchvision's 0/0 IoU never suppresses the zero-width boxes clipped onto the right edge
    assert (ours.numel(), theirs.numel()) == (143, 426)
    degenerate = cand["boxes"][:, 0] == cand["boxes"][:, 2]
    assert int(degenerate[theirs].sum()) > int(degenerate[ours].sum())


def test_detection_cut_keeps_ties():
    processor = ATSSPostProcessor(detections_per_img=2)
    boxes = torch.tensor([[0.0, 0, 5, 5], [20.0, 0, 25, 5], [40.0, 0, 45, 5], [60.0, 0, 65, 5]])
    result = processor.select(
        {"boxes": boxes, "scores": torch.tensor([0.75, 0.5, 0.5, 0.25]), "labels": torch.tensor([1, 1, 1, 1])}
    )
    assert result["scores"].tolist() == [0.75, 0.5, 0.5]  # 3 > 2: the tie at the cut survives, order kept


def test_threshold_is_strict_and_before_centerness():
    # one location, one label with two tokens; mean sigmoid exactly 0.5 > thresh 0.5? no (strict)
    logits = [torch.zeros(1, 1, 4)]
    bbox_reg, centerness = [torch.zeros(1, 4, 1, 1)], [torch.full((1, 1, 1, 1), -20.0)]
    anchors = [torch.tensor([[0.0, 0.0, 9.0, 9.0]])]
    strict = ATSSPostProcessor(pre_nms_thresh=0.5, num_classes=3)
    assert strict(logits, bbox_reg, centerness, anchors, {2: [1, 2]}, [(20, 20)])[0]["scores"].numel() == 0
    # below 0.5 it is a candidate even though centerness makes the final score tiny
    loose = ATSSPostProcessor(pre_nms_thresh=0.49, num_classes=3)
    det = loose(logits, bbox_reg, centerness, anchors, {2: [1, 2]}, [(20, 20)])[0]
    assert det["labels"].tolist() == [2]
    assert det["scores"].item() == pytest.approx(math.sqrt(0.5 * torch.sigmoid(torch.tensor(-20.0)).item()))
    assert det["boxes"].tolist() == [[0.0, 0.0, 9.0, 9.0]]


def test_no_candidates_gives_empty_detections():
    processor = ATSSPostProcessor()
    logits = [torch.full((2, 6, 5), -30.0)]
    out = processor(logits, [torch.zeros(2, 4, 2, 3)], [torch.zeros(2, 1, 2, 3)],
                    [torch.zeros(6, 4)], {1: [1], 2: [3]}, [(16, 24), (16, 24)])
    assert [d["boxes"].shape for d in out] == [(0, 4), (0, 4)]
    assert all(d["labels"].dtype == torch.long for d in out)
