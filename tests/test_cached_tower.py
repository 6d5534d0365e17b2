"""The ``linear-probe-cached`` regime: a linear probe whose frozen tower runs per image, once, and is reused.

It trains exactly what GLIP's linear probe trains; its tower output depends only on (image, resize, flip, caption,
weights), so the feature cache serves it in later epochs with bitwise the same losses; and a run with the cache
gives the same record as a run without it (for every regime).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from odinw_bench.cli import main
from odinw_bench.errors import UserError
from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.models.glip.feature_cache import FeatureCache
from odinw_bench.results.records import read_record
from odinw_bench.training.regimes import (
    apply_regime,
    get_regime,
    set_frozen_modules_eval,
)

NAMES = ["cat", "dog", "red ball"]
FAST = ["data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2", "trainer.log_every_n_steps=1"]


def _backend(regime: str, seed: int = 0) -> tuple[GLIPBackend, list[str]]:
    torch.manual_seed(seed)
    backend = GLIPBackend.from_preset("glip-micro")
    backend.set_vocabulary(NAMES)
    chosen = get_regime(regime)
    trainable = apply_regime(backend, chosen, freeze_conv_body_at=2)
    backend.train()
    set_frozen_modules_eval(backend, chosen, freeze_conv_body_at=2)
    return backend, trainable


def _batch(backend: GLIPBackend, sizes: list[tuple[int, int]], seed: int = 0):
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()) for w, h in sizes]
    targets = [{"boxes": [[4, 6, w // 2, h // 2]], "labels": [i % len(NAMES)]} for i, (w, h) in enumerate(sizes)]
    return backend.preprocess(images, targets, train=True, rng=random.Random(seed))


def _losses(backend: GLIPBackend, batch) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in backend.compute_losses(batch).items()}


def test_trains_exactly_what_the_linear_probe_trains():
    cached, trainable = _backend("linear-probe-cached")
    assert trainable == _backend("linear-probe")[1]
    before = {n: p.detach().clone() for n, p in cached.named_parameters()}
    optimizer = torch.optim.SGD([p for p in cached.parameters() if p.requires_grad], lr=0.1)
    sum(cached.compute_losses(_batch(cached, [(120, 96), (96, 128)])).values()).backward()
    optimizer.step()
    changed = sorted(n for n, p in cached.named_parameters() if not torch.equal(p, before[n]))
    assert changed and set(changed) <= set(trainable)
    assert "model.rpn.head.bbox_pred.weight" in changed


def test_the_tower_runs_in_eval_mode_unlike_glips_linear_probe():
    cached, _ = _backend("linear-probe-cached")
    default, _ = _backend("linear-probe")
    assert not any(m.training for m in cached.model.rpn.head.dyhead_tower.modules())
    assert any(m.training for m in default.model.rpn.head.dyhead_tower.modules())  # GLIP's dropout stays on
    assert len(get_regime("linear-probe-cached").protocol_differences) == 2
    assert get_regime("linear-probe").protocol_differences == ()


def test_equal_sizes_give_glips_batch_computation():
    """Images of one size need no padding: per image equals the batch, up to float summation order."""
    cached, _ = _backend("linear-probe-cached")
    batch = _batch(cached, [(128, 96), (128, 96)])
    per_image = _losses(cached, batch)
    cached.model.per_image_tower = False  # GLIP's batch computation, the same (eval-mode) tower
    batched = _losses(cached, batch)
    for key in per_image:
        torch.testing.assert_close(per_image[key], batched[key], rtol=1e-5, atol=1e-6)


def test_each_image_gets_what_it_gets_alone():
    cached, _ = _backend("linear-probe-cached")
    sizes = [(160, 96), (96, 128)]
    batch = _batch(cached, sizes)
    input_ids, mask = cached.chunk_tokens(cached._train_prompt.chunks[0], 2, batch.images.device)
    with torch.no_grad():
        together = cached.model._fused_per_image(batch.images, input_ids, mask, batch.image_sizes)
        for i, size in enumerate(batch.image_sizes):
            alone = cached.model._fused_per_image(batch.images[i:i + 1, :, :-(-size[0] // 32) * 32,
                                                                 :-(-size[1] // 32) * 32],
                                                  input_ids[i:i + 1], mask[i:i + 1], [size])
            for level, x in enumerate(alone["state"]["visual"]):
                h, w = x.shape[-2:]
                assert torch.equal(together["state"]["visual"][level][i:i + 1, :, :h, :w], x)
                assert not together["state"]["visual"][level][i, :, h:, :].any()  # zeros below the image
            assert torch.equal(together["state"]["lang"]["hidden"][i:i + 1], alone["state"]["lang"]["hidden"])
    assert together["state"]["visual"][0].shape[-2:] == (batch.images.shape[-2] // 8, batch.images.shape[-1] // 8)


def test_later_epochs_reuse_the_tower_with_bitwise_the_same_losses_and_gradients():
    cached, trainable = _backend("linear-probe-cached")
    batch = _batch(cached, [(120, 96), (96, 128)])
    reference = _losses(cached, batch)
    sum(cached.compute_losses(batch).values()).backward()
    reference_grads = {n: p.grad.clone() for n, p in cached.named_parameters() if p.grad is not None}
    assert sorted(reference_grads) == trainable
    cached.zero_grad(set_to_none=True)
    cached.model.feature_cache = cache = FeatureCache()
    for epoch in range(2):
        losses = cached.compute_losses(batch)
        assert all(torch.equal(losses[k].detach(), reference[k]) for k in reference)
        cached.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        assert all(torch.equal(p.grad, reference_grads[n]) for n, p in cached.named_parameters() if p.grad is not None)
    # Epoch 1 computed each image's tower (and its Swin/BERT inputs, the caption once); epoch 2 only hit.
    assert cache.stats["misses"] == 2 * 2 + 1
    assert cache.stats["hits"] == 1 + 2


def test_a_tower_that_trains_is_refused():
    backend, _ = _backend("full")
    backend.model.per_image_tower = True
    with pytest.raises(RuntimeError, match="frozen"):
        backend.compute_losses(_batch(backend, [(96, 96)]))


def test_a_backend_without_support_gets_one_clear_error():
    from odinw_bench.models.base import DetectorBackend

    class Plain(DetectorBackend):
        name = "plain"
        set_vocabulary = preprocess = predict = compute_losses = parameter_groups = None

    with pytest.raises(UserError, match="plain"):
        Plain().set_cached_tower(True)
    Plain().set_cached_tower(False)  # off is every backend's own computation


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _run(out: Path, data_root: str, regime: str, *extra: str) -> dict:
    assert main(["run", "--task", "demo", "--shots", "1", "--model", "glip-micro", "--regime", regime,
                 "--data-root", data_root, "--output", str(out), "--no-progress", *extra,
                 "schedule.max_epochs=2", *FAST]) == 0
    (path,) = [p for p in out.glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    return read_record(path)


@pytest.mark.parametrize("regime", ["linear-probe-cached", "linear-probe", "prompt"])
def test_a_cached_run_and_an_uncached_run_give_the_same_record(tmp_path, data_root, regime):
    cached = _run(tmp_path / "cached", data_root, regime)
    uncached = _run(tmp_path / "uncached", data_root, regime, "--no-feature-cache")
    assert cached["run_id"] == uncached["run_id"]  # the cache is not part of what a run is
    assert cached["metrics"] == uncached["metrics"]
    assert [(h["loss"], h["val_AP"]) for h in cached["history"]] == [(h["loss"], h["val_AP"])
                                                                     for h in uncached["history"]]
    assert cached["params"] == uncached["params"]
    differences = cached.get("protocol_differences")
    assert (differences is not None) == (regime == "linear-probe-cached")
    if differences:
        assert any("eval mode" in d for d in differences)
