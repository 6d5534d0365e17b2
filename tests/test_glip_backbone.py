"""GLIP visual backbone (Swin + FPN), BERT language backbone and image preprocessing against the official outputs.

Numbers come from the golden fixture of the official code (``glip_reference``); sizes of the full models come from
its key manifests. Everything runs on CPU with the small fixture model or on the meta device.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from odinw_bench.models.glip import swin as swin_module
from odinw_bench.models.glip.fpn import FPN, DropBlock2D
from odinw_bench.models.glip.language import BertEncoder, bert_config_from_dict
from odinw_bench.models.glip.preprocess import (
    batch_images,
    glip_test_transform,
    glip_train_transform,
    hflip_boxes,
    resize_image,
    resize_size,
)
from odinw_bench.models.glip.swin import SwinTransformer, shifted_window_mask

ATOL = 1e-4
FULL_SIZE = {
    # manifest: (Swin args, frozen_stages as the official config leaves it, FPN input channels)
    "keys_glip_t.json": ((96, (2, 2, 6, 2), (3, 6, 12, 24), 7), -1, (192, 384, 768)),
    "keys_glip_l.json": ((192, (2, 2, 18, 2), (6, 12, 24, 48), 12), 2, (384, 768, 1536)),
}


def _strip(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _fixture_swin(ref) -> SwinTransformer:
    overrides = ref.meta["config_overrides"]
    swin = SwinTransformer(
        overrides["MODEL.SWINT.EMBED_DIM"], overrides["MODEL.SWINT.DEPTHS"], overrides["MODEL.SWINT.NUM_HEADS"],
        overrides["MODEL.SWINT.WINDOW_SIZE"],
    )
    swin.load_state_dict(_strip(ref.state_dict, "backbone.body."), strict=True)
    return swin.eval()


def _fixture_fpn(ref) -> FPN:
    overrides = ref.meta["config_overrides"]
    fpn = FPN(overrides["MODEL.SWINT.OUT_CHANNELS"][1:], overrides["MODEL.BACKBONE.OUT_CHANNELS"])
    fpn.load_state_dict(_strip(ref.state_dict, "backbone.fpn."), strict=True)
    return fpn.eval()


def _fixture_bert(ref, attn_implementation: str) -> BertEncoder:
    bert = BertEncoder(bert_config_from_dict(ref.meta["bert_config"]), attn_implementation=attn_implementation)
    result = bert.load_state_dict(_strip(ref.state_dict, "language_backbone.body."), strict=False)
    # The only tolerated difference: transformers >= 4.31 no longer saves position_ids.
    assert result.missing_keys == []
    assert result.unexpected_keys == ["model.embeddings.position_ids"]
    return bert.eval()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    assert err <= ATOL, f"{name}: max |diff| {err:.3g} > {ATOL}"


def _manifest(ref, name: str, prefix: str) -> dict:
    return {e["key"][len(prefix):]: e for e in ref.json(name)["keys"] if e["key"].startswith(prefix)}


# ---------------------------------------------------------------- numbers of the official code


def test_swin_stage_outputs_match_reference(glip_reference):
    swin = _fixture_swin(glip_reference)
    with torch.no_grad():
        features = swin(glip_reference.inputs["images.tensor"])
    assert len(features) == 4
    for level, feature in enumerate(features, start=2):
        _assert_close(feature, glip_reference.outputs[f"backbone.c{level}"], f"c{level}")


def test_fpn_outputs_match_reference(glip_reference):
    fpn = _fixture_fpn(glip_reference)
    outputs = glip_reference.outputs
    with torch.no_grad():
        pyramid = fpn([outputs[f"backbone.c{i}"] for i in (3, 4, 5)])
    assert len(pyramid) == 5
    for level, feature in enumerate(pyramid, start=3):
        _assert_close(feature, outputs[f"fpn.p{level}"], f"p{level}")


def test_backbone_end_to_end_matches_reference(glip_reference):
    swin, fpn = _fixture_swin(glip_reference), _fixture_fpn(glip_reference)
    with torch.no_grad():
        pyramid = fpn(swin(glip_reference.inputs["images.tensor"])[1:])
    for level, feature in enumerate(pyramid, start=3):
        _assert_close(feature, glip_reference.outputs[f"fpn.p{level}"], f"p{level} (from images)")


def test_shift_mask_is_needed_for_parity(glip_reference, monkeypatch):
    """Without the -100 region mask the outputs leave the tolerance: the parity test really sees the mask."""
    swin = _fixture_swin(glip_reference)
    real_mask = swin_module.shifted_window_mask
    monkeypatch.setattr(swin_module, "shifted_window_mask", lambda *a, **k: torch.zeros_like(real_mask(*a, **k)))
    with torch.no_grad():
        c3 = swin(glip_reference.inputs["images.tensor"])[1]
    assert (c3 - glip_reference.outputs["backbone.c3"]).abs().max().item() > 100 * ATOL


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_bert_outputs_match_reference(glip_reference, attn_implementation):
    bert = _fixture_bert(glip_reference, attn_implementation)
    inputs, outputs = glip_reference.inputs, glip_reference.outputs
    with torch.no_grad():
        lang = bert(inputs["text.input_ids"], inputs["text.attention_mask"])
    for key in ("hidden", "embedded", "aggregate"):
        _assert_close(lang[key], outputs[f"language.{key}"], key)
    assert torch.equal(lang["masks"], inputs["text.attention_mask"])
    assert torch.equal(lang["masks"].to(outputs["language.masks"].dtype), outputs["language.masks"])
    assert len(lang["hidden_states"]) == glip_reference.meta["bert_config"]["num_hidden_layers"] + 1
    for i, state in enumerate(lang["hidden_states"]):
        _assert_close(state, outputs[f"language.bert.hidden_states.{i}"], f"hidden_states.{i}")
    # hidden is unmasked, embedded is masked: they differ exactly on the padding.
    pad = inputs["text.attention_mask"] == 0
    assert lang["embedded"][pad].abs().max() == 0 and lang["hidden"][pad].abs().max() > 0


def test_bert_config_is_not_mutated(glip_reference):
    config = bert_config_from_dict(glip_reference.meta["bert_config"])
    before = config.to_dict()
    BertEncoder(config, attn_implementation="sdpa")
    assert config.to_dict() == before


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("index", [0, 1])
def test_preprocessing_matches_reference(glip_reference, index):
    inputs, pre = glip_reference.inputs, glip_reference.meta["preprocessing"]
    raw = Image.fromarray(inputs[f"image{index}.raw_rgb_uint8"].numpy())
    resized = resize_image(raw, pre["MIN_SIZE_TEST"], pre["MAX_SIZE_TEST"])
    assert torch.equal(torch.from_numpy(np.asarray(resized).copy()), inputs[f"image{index}.resized_rgb_uint8"])
    tensor, size_hw = glip_test_transform(raw, pre["MIN_SIZE_TEST"], pre["MAX_SIZE_TEST"])
    assert list(size_hw) == inputs["images.image_sizes_hw"][index].tolist()
    _assert_close(tensor, inputs[f"image{index}.normalized"], f"image{index}.normalized")


def test_batch_matches_reference(glip_reference):
    inputs, pre = glip_reference.inputs, glip_reference.meta["preprocessing"]
    tensors = [
        glip_test_transform(Image.fromarray(inputs[f"image{i}.raw_rgb_uint8"].numpy()),
                            pre["MIN_SIZE_TEST"], pre["MAX_SIZE_TEST"])[0]
        for i in range(2)
    ]
    batch, sizes = batch_images(tensors, pre["SIZE_DIVISIBILITY"])
    assert list(batch.shape[-2:]) == glip_reference.meta["padded_batch_hw"]
    _assert_close(batch, inputs["images.tensor"], "images.tensor")
    assert torch.tensor(sizes).tolist() == inputs["images.image_sizes_hw"].tolist()


@pytest.mark.parametrize(
    ("wh", "min_size", "max_size", "expected"),
    [
        ((451, 300), 288, None, (432, 288)),  # glip_reference_notes §1: int() truncation of the long side
        ((640, 427), 288, None, (431, 288)),
        ((427, 640), 288, None, (288, 431)),  # portrait: same rule on the other axis
        ((800, 1000), 800, 1333, (800, 1000)),  # short side already at min_size: unchanged
        # max-size rule: min_size = round(1333 * 200 / 1000) = round(266.6) = 267, long = int(267 * 5) = 1335
        ((1000, 200), 800, 1333, (1335, 267)),
        ((600, 400), 320, 512, (480, 320)),  # fixture image 1
    ],
)
def test_resize_size_rule(wh, min_size, max_size, expected):
    assert resize_size(*wh, min_size, max_size) == expected


def test_batch_pads_with_zeros_to_multiple():
    a, b = torch.full((3, 5, 7), 2.0), torch.full((3, 33, 3), -1.0)
    batch, sizes = batch_images([a, b], size_divisible=32)
    assert batch.shape == (2, 3, 64, 32) and sizes == [(5, 7), (33, 3)]
    assert torch.equal(batch[0, :, :5, :7], a)
    assert batch[0, :, 5:].abs().sum() == 0 and batch[0, :, :, 7:].abs().sum() == 0
    assert torch.equal(batch[1, :, :33, :3], b) and batch[1, :, :, 3:].abs().sum() == 0


def test_hflip_boxes_uses_pixel_index_rule():
    boxes = torch.tensor([[10.0, 5.0, 19.0, 8.0], [0.0, 0.0, 99.0, 49.0]])
    flipped = hflip_boxes(boxes, width=100)
    # BoxList.transpose(FLIP_LEFT_RIGHT): x1' = w - x2 - 1, x2' = w - x1 - 1.
    assert flipped.tolist() == [[80.0, 5.0, 89.0, 8.0], [0.0, 0.0, 99.0, 49.0]]
    assert torch.equal(hflip_boxes(flipped, 100), boxes)


def test_train_transform_resizes_flips_and_scales_boxes():
    array = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    boxes = torch.tensor([[6.0, 3.0, 29.0, 19.0]])
    tensor, (h, w), out_boxes = glip_train_transform(image, boxes, min_sizes=(20,), max_size=None, flip_prob=1.0,
                                                     rng=random.Random(0))
    assert (h, w) == (20, 30)  # 60x40 at short side 20 -> 30x20
    assert out_boxes.tolist() == [[30 - 14.5 - 1, 1.5, 30 - 3.0 - 1, 9.5]]  # halved, then mirrored
    reference, _ = glip_test_transform(image, 20, None)
    assert torch.equal(tensor, reference.flip(-1))
    tensor, _, kept = glip_train_transform(image, boxes, min_sizes=(40,), max_size=None, flip_prob=0.0)
    assert torch.equal(kept, boxes) and tensor.shape == (3, 40, 60)


def test_train_transform_draws_short_side_from_list():
    image = Image.new("RGB", (30, 20))
    rng = random.Random(3)
    shorts = {glip_train_transform(image, torch.zeros(0, 4), (8, 12, 16), 1333, 0.5, rng)[1][0] for _ in range(30)}
    assert shorts == {8, 12, 16}


# ---------------------------------------------------------------- full-size key manifests (meta device)


@pytest.mark.parametrize("manifest", sorted(FULL_SIZE))
def test_full_size_swin_keys_and_shapes(glip_reference, manifest):
    swin_args, frozen_stages, _ = FULL_SIZE[manifest]
    with torch.device("meta"):
        swin = SwinTransformer(*swin_args, frozen_stages=frozen_stages)
    expected = _manifest(glip_reference, manifest, "backbone.body.")
    state = swin.state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == {k: e["shape"] for k, e in expected.items()}
    buffers = {name for name, _ in swin.named_buffers()}
    assert buffers == {k for k, e in expected.items() if e["kind"] == "buffer"}
    grads = {name: p.requires_grad for name, p in swin.named_parameters()}
    assert grads == {k: e["requires_grad_at_construction"] for k, e in expected.items() if e["kind"] == "parameter"}


@pytest.mark.parametrize("manifest", sorted(FULL_SIZE))
def test_full_size_fpn_keys_and_shapes(glip_reference, manifest):
    _, _, in_channels = FULL_SIZE[manifest]
    with torch.device("meta"):
        fpn = FPN(in_channels, 256, drop_block_prob=0.3)
    expected = _manifest(glip_reference, manifest, "backbone.fpn.")
    assert {k: list(v.shape) for k, v in fpn.state_dict().items()} == {k: e["shape"] for k, e in expected.items()}


def test_full_size_bert_keys_and_shapes(glip_reference):
    from transformers import BertConfig

    with torch.device("meta"):
        bert = BertEncoder(BertConfig())  # transformers' defaults are bert-base-uncased
    expected = _manifest(glip_reference, "keys_glip_t.json", "language_backbone.body.")
    expected.pop("model.embeddings.position_ids")  # non-persistent since transformers 4.31
    assert {k: list(v.shape) for k, v in bert.state_dict().items()} == {k: e["shape"] for k, e in expected.items()}


# ---------------------------------------------------------------- training-only stochastic parts


def _tiny_swin(**kwargs) -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(16, (2, 2, 2, 2), (1, 2, 2, 4), 4, **kwargs)


def test_swin_drop_path_only_in_training():
    swin, x = _tiny_swin(drop_path_rate=0.5), torch.randn(4, 3, 32, 32)
    swin.eval()
    with torch.no_grad():
        reference = swin(x)[-1]
        assert torch.equal(swin(x)[-1], reference)
        swin.train()
        torch.manual_seed(1)
        assert (swin(x)[-1] - reference).abs().max() > 1e-3
    quiet = _tiny_swin(drop_path_rate=0.0).train()
    with torch.no_grad():
        assert torch.allclose(quiet(x)[-1], quiet.eval()(x)[-1], atol=1e-6)


def test_swin_frozen_stages_stay_frozen_and_in_eval():
    swin = _tiny_swin(drop_path_rate=0.5, frozen_stages=2).train()
    assert not swin.patch_embed.training and not swin.layers[0].training and swin.layers[1].training
    assert not any(p.requires_grad for p in swin.layers[0].parameters())
    assert all(p.requires_grad for p in swin.layers[1].parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        c2_train = swin(x)[0]  # stage 0 is frozen, so no drop path there even in training
        assert torch.equal(c2_train, swin.eval()(x)[0])


def test_dropblock_only_in_training():
    x = torch.ones(2, 4, 16, 16)
    block = DropBlock2D(0.3, 3)
    assert torch.equal(block.eval()(x), x)
    torch.manual_seed(0)
    out = block.train()(x)
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # one mask per image, shared by channels
    # Kept activations are rescaled by (elements / kept elements): the total is preserved.
    assert torch.isclose(out.sum(), x.sum())
    assert torch.equal(DropBlock2D(0.0, 3).train()(x), x)


def test_fpn_dropblock_only_in_training():
    torch.manual_seed(0)
    fpn = FPN((8, 16, 32), 8, drop_block_prob=0.3)
    features = [torch.randn(1, 8, 32, 32), torch.randn(1, 16, 16, 16), torch.randn(1, 32, 8, 8)]
    with torch.no_grad():
        reference = fpn.eval()(features)
        torch.manual_seed(1)
        trained = fpn.train()(features)
    # P3 and P4 are dropped; P5 (and P6/P7, computed from it) never are.
    assert (trained[0] - reference[0]).abs().max() > 1e-3 and (trained[1] - reference[1]).abs().max() > 1e-3
    for level in (2, 3, 4):
        assert torch.equal(trained[level], reference[level])


# ---------------------------------------------------------------- shapes and checkpointing


def test_swin_handles_sizes_not_multiple_of_patch_or_window():
    swin = _tiny_swin().eval()
    with torch.no_grad():
        features = swin(torch.randn(1, 3, 50, 70))
    # stem: ceil(50/4)=13, ceil(70/4)=18, then ceil halving per stage
    assert [tuple(f.shape) for f in features] == [(1, 16, 13, 18), (1, 32, 7, 9), (1, 64, 4, 5), (1, 128, 2, 3)]


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(8, 8, window_size=4, shift=2)
    assert mask.shape == (4, 16, 16)
    assert mask[0].abs().sum() == 0  # the top-left window holds a single region
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    # bottom-right window: 4 regions of 2x2 tokens; token 0 (row 0, col 0) and token 3 (row 0, col 3) differ
    assert mask[3, 0, 3] == -100.0 and mask[3, 0, 1] == 0.0 and torch.equal(mask[3], mask[3].T)


def test_gradient_checkpointing_gives_same_gradients():
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for use_checkpoint in (False, True):
        swin = _tiny_swin(use_checkpoint=use_checkpoint).train()
        swin(x)[-1].square().sum().backward()
        grads.append(swin.layers[1].blocks[1].attn.relative_position_bias_table.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
