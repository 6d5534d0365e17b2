"""The frozen-feature cache: the same detections as without it, reuse where the weights allow, never stale."""

from __future__ import annotations

import pytest
import torch

from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.models.glip.feature_cache import FeatureCache, is_frozen, tensor_digest
from odinw_bench.training.regimes import apply_regime, get_regime

NAMES = ["cat", "dog", "red ball", "toy car"]


def _images(seed: int = 0, count: int = 2) -> list:
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(96, 128, 3, generator=gen) * 255).to(torch.uint8).numpy())
            for _ in range(count)]


def _backend(regime: str, seed: int = 0) -> GLIPBackend:
    torch.manual_seed(seed)
    backend = GLIPBackend.from_preset("glip-micro")
    backend.set_vocabulary(NAMES)
    apply_regime(backend, get_regime(regime))
    backend.model.rpn.post_processor.pre_nms_thresh = 0.0  # a random model's scores: keep detections to compare
    return backend.eval()


def _predict(backend: GLIPBackend, images: list) -> list:
    return [backend.predict(backend.preprocess([im])) for im in images]


def _assert_same(a: list, b: list) -> None:
    for x, y in zip(a, b):
        for dx, dy in zip(x, y):
            assert torch.equal(dx.boxes, dy.boxes) and torch.equal(dx.scores, dy.scores)
            assert torch.equal(dx.labels, dy.labels)


def _logits(backend: GLIPBackend, images: list) -> torch.Tensor:
    batch = backend.preprocess(images)
    input_ids, mask = backend.chunk_tokens(backend.prompt.chunks[0], len(images), batch.images.device)
    with torch.no_grad():
        outputs, _ = backend.model.forward_head(batch.images, input_ids, mask)
    return torch.cat(outputs["logits"], dim=1)


@pytest.mark.parametrize("regime, stages", [("zero-shot", {"tower", "image", "text"}),
                                            ("linear-probe", {"tower", "image", "text"}),
                                            ("prompt", {"image", "text"}),
                                            ("full", set())])
def test_cached_predictions_are_bitwise_the_same(regime, stages):
    backend, images = _backend(regime), _images()
    reference, reference_logits = _predict(backend, images), _logits(backend, images[:1])
    cache = FeatureCache()
    backend.model.feature_cache = cache
    first, second = _predict(backend, images), _predict(backend, images)
    _assert_same(reference, first)
    _assert_same(reference, second)
    assert sum(len(d.scores) for dets in reference for d in dets) > 0  # the comparison compares something
    assert torch.equal(_logits(backend, images[:1]), reference_logits)
    backend.model.feature_cache = cache = FeatureCache()  # counted: a first and a second pass over the images
    _predict(backend, images)
    _predict(backend, images)
    # Computed once: the image stages per image, the caption's text once (both images share it).
    n = len(images)
    expected_misses = n * len(stages - {"text"}) + ("text" in stages)
    assert cache.stats["misses"] == expected_misses
    # Reused: the caption for the second image, then on the second pass the tower (it holds image and text)
    # or else every frozen stage.
    second_pass = n if "tower" in stages else n * len(stages)
    assert cache.stats["hits"] == ("text" in stages) * (n - 1) + second_pass


def test_a_weight_change_is_never_served_stale():
    backend, images = _backend("linear-probe"), _images(count=1)
    backend.model.feature_cache = cache = FeatureCache()
    before = _logits(backend, images)
    with torch.no_grad():  # an in-place change of a frozen tower weight, as load_state_dict makes
        next(backend.model.rpn.head.dyhead_tower.parameters()).mul_(1.5)
    after = _logits(backend, images)
    backend.model.feature_cache = None
    assert torch.equal(after, _logits(backend, images)) and not torch.equal(before, after)
    # The tower is computed again; Swin's and BERT's unchanged weights still hit.
    assert cache.stats["misses"] == 4 and cache.stats["hits"] == 2


def test_the_same_weights_in_another_model_hit():
    images = _images(count=1)
    first, second = _backend("zero-shot", seed=0), _backend("linear-probe", seed=0)
    first.model.feature_cache = second.model.feature_cache = cache = FeatureCache()
    _predict(first, images)
    _assert_same(_predict(second, images), _predict(first, images))
    assert cache.stats["misses"] == 3  # tower, image, text once; everything else came from the cache
    other = _backend("linear-probe", seed=1)  # other weights: no entry is served to them
    other.model.feature_cache = cache
    _predict(other, images)
    assert cache.stats["misses"] == 6


def test_training_mode_never_uses_the_cache():
    backend = _backend("linear-probe")
    backend.model.feature_cache = cache = FeatureCache()
    backend.train()
    batch = backend.preprocess(_images(count=1), targets=[{"boxes": [[2, 2, 40, 30]], "labels": [1]}], train=True,
                               rng=__import__("random").Random(0))
    backend.compute_losses(batch)
    assert cache.stats["misses"] == cache.stats["hits"] == 0


def test_memory_bound_spills_to_disk_and_reads_back(tmp_path):
    cache = FeatureCache(max_bytes=1000, spill_dir=tmp_path, max_disk_bytes=2500)
    values = {f"k{i}": torch.full((200,), float(i)) for i in range(4)}  # 800 bytes each
    for key, value in values.items():
        cache.get_or_compute("s", [key], lambda v=value: v)
    assert cache.stats["bytes"] <= 1000 and cache.stats["spilled"] == 3
    assert len(list(tmp_path.glob("*.pt"))) == 3  # within the disk bound (3 x 800 <= 2500)
    got = cache.get_or_compute("s", ["k0"], lambda: pytest.fail("k0 was spilled, not lost"))
    assert torch.equal(got, values["k0"]) and cache.stats["disk_hits"] == 1
    cache.clear()
    assert not list(tmp_path.glob("*.pt"))


def test_without_spill_dir_old_entries_are_dropped():
    cache = FeatureCache(max_bytes=1000)
    for i in range(3):
        cache.get_or_compute("s", [str(i)], lambda: torch.zeros(200))
    assert cache.stats["dropped"] == 2 and cache.stats["bytes"] == 800
    calls = []
    cache.get_or_compute("s", ["0"], lambda: calls.append(1) or torch.zeros(200))
    assert calls == [1]


def test_digest_and_frozen_helpers():
    a = torch.arange(6.0)
    assert tensor_digest(a) == tensor_digest(a.clone()) != tensor_digest(a.reshape(2, 3))
    assert tensor_digest(a) != tensor_digest(a.double())
    layer = torch.nn.Linear(2, 2)
    assert not is_frozen(layer)
    layer.requires_grad_(False)
    assert not is_frozen(layer.train()) and is_frozen(layer.eval()) and is_frozen(None)


def test_entries_made_in_inference_mode_serve_a_forward_with_autograd():
    backend, images = _backend("linear-probe"), _images(count=1)
    backend.model.feature_cache = cache = FeatureCache()
    with torch.inference_mode():  # as Lightning validates
        _logits(backend, images)
    batch = backend.preprocess(images)
    input_ids, mask = backend.chunk_tokens(backend.prompt.chunks[0], 1, batch.images.device)
    outputs, _ = backend.model.forward_head(batch.images, input_ids, mask)  # eval mode, autograd on: a hit
    torch.cat(outputs["logits"], dim=1).sum().backward()
    assert cache.stats["hits"] == 1
    assert backend.model.rpn.head.dot_product_projection_text.weight.grad is not None


def test_anchors_are_built_once_per_grid_and_never_stale():
    from odinw_bench.models.glip.anchors import AnchorGenerator

    generator = AnchorGenerator()
    shapes = [(20, 30), (10, 15), (5, 8), (3, 4), (2, 2)]
    with torch.inference_mode():  # an evaluation builds them first...
        first = generator(shapes)
    second = generator(shapes)
    assert all(a is b for a, b in zip(first, second))  # ...and a later call reuses them
    assert not any(a.is_inference() for a in second)  # so a training step can read them
    fresh = generator._make(shapes)
    assert all(torch.equal(a, b) for a, b in zip(second, fresh))
    with torch.no_grad():
        generator.level_cell_anchor(0).add_(1.0)  # changed (as a load would): built again
    moved = generator(shapes)
    assert torch.equal(moved[0], fresh[0] + 1.0) and torch.equal(moved[1], fresh[1])
