"""The GLIP backend contract on glip-micro: images and names in, detections with category indices out."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from odinw_bench.errors import UserError
from odinw_bench.models.base import load_backend
from odinw_bench.models.glip.backend import GLIPBackend, load_glip
from odinw_bench.tasks.spec import CaptionPart, PromptSpec


@pytest.fixture(scope="module")
def backend():
    torch.manual_seed(0)
    model = GLIPBackend.from_preset("glip-micro").eval()
    # Random weights score below GLIP's 0.05 threshold; a larger text scale spreads the logits (as the official
    # fixture does) so that detections exist and their contract can be checked.
    with torch.no_grad():
        model.model.rpn.head.log_scale.fill_(-2.3)
        model.model.rpn.head.bias0.fill_(0.0)
    return model


def _images():
    return [Image.new("RGB", (200, 120), (200, 30, 30)), Image.new("RGB", (90, 150), (30, 200, 30))]


def test_registry_resolves_glip_lazily():
    assert load_backend("glip") is GLIPBackend
    with pytest.raises(UserError, match="did you mean: glip"):
        load_backend("gilp")


@pytest.mark.parametrize("names", [["apple"], ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish",
                                               "stingray", "boat", "car", "dock", "jetski", "lift", "hand"]])
def test_predict_contract(backend, names):
    dets = backend.predict_images(_images(), names)
    assert len(dets) == 2
    for det, image in zip(dets, _images()):
        n = len(det.scores)
        assert n > 0 and det.boxes.shape == (n, 4) and det.labels.dtype == torch.int64
        assert int(det.labels.min()) >= 0 and int(det.labels.max()) < len(names)
        width, height = image.size
        # Boxes are in original-image pixels, clipped to the image (GLIP's legacy w-1 / h-1 bound, rescaled).
        assert float(det.boxes[:, 0::2].max()) <= width + 1e-3 and float(det.boxes[:, 1::2].max()) <= height + 1e-3
        assert float(det.boxes.min()) >= -1e-3
        assert n <= 100 + 5  # top-100 per image (ties at the cut may keep a few more)
        assert torch.all((det.scores > 0) & (det.scores <= 1))


def test_chunked_vocabulary_maps_labels_to_global_indices(backend, monkeypatch):
    names = ["apple", "banana", "cherry", "lemon"]
    image = _images()[:1]
    # Reference: each name alone as the whole vocabulary (one chunk, label 0).
    alone = []
    for name in names:
        backend.set_vocabulary([name])
        alone.append(backend.predict(backend.preprocess(image))[0])
    # Force one category per chunk: each chunk is a separate forward pass with the same single-name caption, and
    # its detections must come back with the name's index in the full list (no cross-chunk NMS).
    from odinw_bench.data import prompts

    backend.set_vocabulary(names)
    chunked = [prompts.PromptChunk(prompts.TaskPrompt.from_names([n]).chunks[0].caption, (i,),
                                   prompts.TaskPrompt.from_names([n]).chunks[0].positive_map)
               for i, n in enumerate(names)]
    monkeypatch.setattr(backend, "_prompt", dataclasses.replace(backend._prompt, chunks=tuple(chunked)))
    merged = backend.predict(backend.preprocess(image))[0]
    assert len(merged.scores) == sum(len(d.scores) for d in alone)
    for index, ref in enumerate(alone):
        mine = merged.labels == index
        torch.testing.assert_close(merged.scores[mine], ref.scores)
        torch.testing.assert_close(merged.boxes[mine], ref.boxes)


def test_losses_finite_with_and_without_boxes(backend):
    backend.set_vocabulary(["apple", "banana"])
    targets = [{"boxes": [[10.0, 10.0, 80.0, 60.0]], "labels": [1]}, {"boxes": [], "labels": []}]
    batch = backend.preprocess(_images(), targets, train=False)
    backend.train()
    try:
        losses = backend.compute_losses(batch)
    finally:
        backend.eval()
    assert set(losses) == {"loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_cls"].item() == 0.0 and losses["loss_dot_product_token"].item() > 0


def test_parameter_groups_partition_all_parameters(backend):
    backend.enable_prompt_tuning()
    groups = backend.parameter_groups()
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in backend.named_parameters())
    assert len(names) == len(set(names))
    assert groups["prompt"] == ["model.rpn.tunable_linear.weight"]
    assert all(n.startswith("model.rpn.head.dyhead_tower.") for n in groups["tower"])
    assert not any("dyhead_tower" in n for n in groups["head"])


def test_caption_prompt_vocabulary(backend):
    prompt = PromptSpec(caption=[CaptionPart(prefix="there is a ", name="apple", suffix=" on the table"),
                                 CaptionPart(name="pear")])
    backend.set_vocabulary(["apple", "pear"], prompt)
    assert backend.prompt.captions == ["there is a apple on the table. pear"]


def test_load_glip_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = GLIPBackend.from_preset("glip-micro")
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, str(tmp_path / "micro.safetensors"))
    loaded = load_glip("glip-micro", checkpoint=tmp_path / "micro.safetensors")
    assert loaded.checkpoint.endswith("micro.safetensors") and not loaded.training
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    bad = dict(state)
    bad.pop("rpn.head.bbox_pred.weight")
    bad["rpn.head.extra"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="bbox_pred.weight"):
        load_glip("glip-micro", checkpoint=tmp_path / "bad.safetensors")


def test_prompt_tuned_checkpoint_enables_the_prompt_offset(tmp_path):
    from safetensors.torch import save_file

    source = GLIPBackend.from_preset("glip-micro")
    source.enable_prompt_tuning()
    with torch.no_grad():
        source.model.rpn.tunable_linear.weight.normal_()
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(tmp_path / "p.safetensors"))
    loaded = load_glip("glip-micro", checkpoint=tmp_path / "p.safetensors")
    torch.testing.assert_close(loaded.model.rpn.tunable_linear.weight, source.model.rpn.tunable_linear.weight)


def test_load_glip_needs_exactly_one_source(tmp_path):
    with pytest.raises(UserError, match="either a preset"):
        load_glip()
    with pytest.raises(UserError, match="either a preset"):
        load_glip("glip-micro", config=tmp_path / "x.yaml")


def test_caption_is_tokenised_once_per_vocabulary(backend, monkeypatch):
    from odinw_bench.data import tokenizer

    calls = []
    original = tokenizer.tokenize_prompts

    def counting(captions, max_length=256):
        calls.append(list(captions))
        return original(captions, max_length=max_length)

    monkeypatch.setattr(tokenizer, "tokenize_prompts", counting)
    backend.set_vocabulary(["plum", "grape"])
    batch = backend.preprocess(_images())
    first = backend.predict(batch)
    second = backend.predict(batch)
    assert calls == [["plum. grape"]]  # one caption, tokenised once, shared by both images and both calls
    for a, b in zip(first, second):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    reference = original(["plum. grape"] * 3)
    width = int(reference["attention_mask"].sum(dim=1).max()) + 1  # the caption and one padding column
    ids, mask = backend.chunk_tokens(backend.prompt.chunks[0], 3, torch.device("cpu"))
    assert torch.equal(ids, reference["input_ids"][:, :width])
    assert torch.equal(mask, reference["attention_mask"][:, :width])
    backend.model.trim_text = False  # GLIP's padded captions
    ids, mask = backend.chunk_tokens(backend.prompt.chunks[0], 3, torch.device("cpu"))
    assert torch.equal(ids, reference["input_ids"]) and torch.equal(mask, reference["attention_mask"])
    backend.model.trim_text = True


def test_tokens_cached_during_inference_can_be_trained_on(backend):
    # Evaluation runs under torch.inference_mode; the cached caption tokens must still serve a training step.
    backend.set_vocabulary(["apple", "banana"])
    with torch.inference_mode():
        backend.predict(backend.preprocess(_images()))
    targets = [{"boxes": [[10.0, 10.0, 80.0, 60.0]], "labels": [1]}, {"boxes": [], "labels": []}]
    loss = sum(backend.compute_losses(backend.preprocess(_images(), targets)).values())
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("prompt_tuning", [False, True])
def test_trimmed_text_gives_the_padded_losses_and_gradients(prompt_tuning):
    """Fine-tuning batches (one caption, padded to 256) train the same with the text trimmed to the caption."""
    torch.manual_seed(0)
    model = GLIPBackend.from_preset("glip-micro")
    if prompt_tuning:
        model.enable_prompt_tuning()
        with torch.no_grad():  # a tuned offset, so that its rows matter
            model.model.rpn.tunable_linear.weight.normal_(std=0.1)
    for module in model.modules():  # dropout would draw different masks for different widths
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.model.rpn.head.apply(lambda m: setattr(m, "dropout", 0.0) if hasattr(m, "dropout")
                               and isinstance(m.dropout, float) else None)
    model.set_vocabulary(["apple", "banana split", "cherry"])
    targets = [{"boxes": [[10, 10, 60, 50], [70, 20, 110, 90]], "labels": [0, 2]},
               {"boxes": [[5, 30, 80, 100]], "labels": [1]}]
    batch = model.preprocess(_images(), targets)
    results = {}
    for trim in (False, True):
        model.model.trim_text = trim
        model.zero_grad()
        losses = model.compute_losses(batch)
        sum(losses.values()).backward()
        results[trim] = ({k: v.detach() for k, v in losses.items()},
                         {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (padded, padded_grads), (trimmed, trimmed_grads) = results[False], results[True]
    assert padded["loss_dot_product_token"] > 0
    for name in padded:
        torch.testing.assert_close(trimmed[name], padded[name], rtol=1e-5, atol=1e-6)
    assert padded_grads.keys() == trimmed_grads.keys()
    for name, grad in padded_grads.items():
        # float32 sums in another order (the fusion's shapes differ): equal up to rounding at the tensor's scale.
        scale = float(grad.abs().max())
        assert float((trimmed_grads[name] - grad).abs().max()) <= 1e-4 * scale + 1e-9, name
