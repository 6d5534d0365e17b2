"""GroundingDinoBackend on tiny random Grounding DINO and MM Grounding DINO models saved locally (never the network).

Each model is built once per module (Swin and BERT of a few channels, 20 queries, a 16-token text window so that a
few categories already need two captions), saved with its processor as ``save_pretrained`` writes it, and loaded
through ``GroundingDinoBackend.from_pretrained(folder)`` by each test.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_models import save_tiny_grounding_dino, tiny_model
from PIL import Image, ImageDraw

from odinw_bench.errors import UserError
from odinw_bench.models.hf.grounding_dino import GroundingDinoBackend
from odinw_bench.models.hf.presets import get_preset, presets

KINDS = ("grounding-dino", "mm-grounding-dino")
MAX_TEXT_LEN = 16
FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach"]  # one token each: 2 captions
SHAPES = ["red square", "green square", "blue square"]
COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread; on a loaded 2-core machine two threads spin and each step
    takes ten times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory) -> Path:
    """A folder with a tiny model and its processor (64/96 resize, the shipped vocabulary)."""
    return save_tiny_grounding_dino(tmp_path_factory.mktemp(request.param), request.param, MAX_TEXT_LEN)


@pytest.fixture
def backend(saved) -> GroundingDinoBackend:
    return GroundingDinoBackend.from_pretrained(saved)


def _scene(colour: tuple[int, int, int], size: tuple[int, int] = (96, 72),
           box: tuple[int, int, int, int] = (20, 10, 60, 50)) -> Image.Image:
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return image


def _step(backend: GroundingDinoBackend, batch, names: set[str]) -> set[str]:
    """One SGD step training only ``names``; returns the names of the parameters that changed."""
    for name, param in backend.named_parameters():
        param.requires_grad_(name in names)
    before = {name: param.detach().clone() for name, param in backend.named_parameters()}
    optimizer = torch.optim.SGD([p for p in backend.parameters() if p.requires_grad], lr=0.1)
    sum(backend.compute_losses(batch).values()).backward()
    optimizer.step()
    return {name for name, param in backend.named_parameters() if not torch.equal(before[name], param.detach())}


def _training_batch(backend: GroundingDinoBackend):
    backend.set_vocabulary(SHAPES)
    images = [_scene(c, box=(10 + 10 * i, 8, 50 + 10 * i, 48)) for i, c in enumerate(COLOURS)]
    targets = [{"boxes": [[10 + 10 * i, 8, 50 + 10 * i, 48]], "labels": [i]} for i in range(3)]
    return images, targets, backend.preprocess(images, targets, train=True, rng=random.Random(0))


# --------------------------------------------------------------------------------------------------- loading
def test_loads_the_saved_model_with_its_class(saved):
    backend = GroundingDinoBackend.from_pretrained(saved)
    expected = "GroundingDinoForObjectDetection" if saved.name.startswith("grounding") else \
        "MMGroundingDinoForObjectDetection"
    assert type(backend.model).__name__ == expected
    assert backend.max_text_len == MAX_TEXT_LEN and not backend.training


def test_folder_of_another_model_type_is_one_clear_error(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        GroundingDinoBackend.from_pretrained(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "model_type 'bert'" in message
    assert err.value.field == "model_type"


def test_folder_that_is_not_a_model_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(UserError) as err:
        GroundingDinoBackend.from_pretrained(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert err.value.field == "config.json"


def test_uncached_hub_id_offline_names_the_id():
    # The session's HF cache is an empty temporary folder, so nothing is cached and nothing may be downloaded.
    with pytest.raises(UserError, match="IDEA-Research/grounding-dino-tiny"):
        GroundingDinoBackend.from_preset("gdino-t", local_files_only=True)


def test_folder_without_tokenizer_uses_the_shipped_vocabulary(tmp_path):
    tiny_model("grounding-dino", MAX_TEXT_LEN).save_pretrained(tmp_path)  # weights and config only: no processor files
    backend = GroundingDinoBackend.from_pretrained(tmp_path, shortest_edge=64, longest_edge=100)
    assert backend.processor.tokenizer("apple")["input_ids"] == [101, 6207, 102]
    batch = backend.preprocess([_scene(COLOURS[0], size=(150, 60))])
    assert batch.image_sizes == [(40, 100)] and batch.original_sizes == [(60, 150)]  # the longest edge bounds it
    assert len(backend.predict_images([_scene(COLOURS[0])], ["apple"])[0].scores) > 0


# --------------------------------------------------------------------------------------------------- predict
def test_pipeline_rule_equals_transformers_post_processing(saved):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    images = [_scene(COLOURS[0]), _scene(COLOURS[1], size=(70, 90), box=(5, 30, 40, 80))]
    sizes = [(image.height, image.width) for image in images]
    processor = AutoProcessor.from_pretrained(saved)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(saved).eval()
    inputs = processor(images=images, text=[SHAPES[:2]] * 2, return_tensors="pt")  # it writes the caption itself
    with torch.no_grad():
        outputs = model(**inputs)
    everything = processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    threshold = float(torch.cat([r["scores"] for r in everything]).median())  # keeps some queries, drops others
    expected = processor.post_process_grounded_object_detection(outputs, threshold=threshold, target_sizes=sizes)

    backend = GroundingDinoBackend.from_pretrained(saved, score_rule="pipeline", score_threshold=threshold)
    dets = backend.predict_images(images, SHAPES[:2])
    for det, ref in zip(dets, expected):
        assert 0 < len(det.scores) < 20
        assert torch.equal(det.scores, ref["scores"]) and torch.equal(det.boxes, ref["boxes"])
        assert set(det.labels.tolist()) <= {0, 1}


def test_mean_rule_scores_each_category_by_its_span(backend):
    backend.configure_scoring("mean", topk=7)
    image = _scene(COLOURS[2])
    backend.set_vocabulary(SHAPES)
    det = backend.predict_images([image])[0]
    # The rule by hand: mean probability over each name's tokens ("red square" is tokens 1-2, ...), top 7 pairs.
    batch = backend.preprocess([image])
    with torch.no_grad():
        out = backend._forward(batch, backend.chunks[0])
    probs = out.logits[0].sigmoid()
    spans = backend.chunks[0].token_spans
    assert spans == ((1, 2), (4, 5), (7, 8))
    by_hand = torch.stack([probs[:, list(span)].mean(-1) for span in spans], dim=1)
    assert torch.allclose(det.scores, by_hand.flatten().topk(7).values)
    assert det.labels.tolist() == (by_hand.flatten().topk(7).indices % 3).tolist()
    height, width = image.height, image.width
    assert float(det.boxes[:, 0::2].max()) <= width and float(det.boxes[:, 1::2].max()) <= height
    assert float(det.boxes.min()) >= 0


def test_long_vocabulary_is_predicted_in_chunks_with_global_labels(backend):
    image = [_scene(COLOURS[0])]
    backend.set_vocabulary(FRUIT)
    assert [c.labels for c in backend.chunks] == [tuple(range(7)), (7,)]  # [CLS] + 7 x (name, ".") + [SEP] = 16
    merged = backend.predict_images(image)[0]
    assert set(merged.labels.tolist()) == set(range(8))
    # Each chunk alone, as a whole vocabulary, gives the same detections once its labels are offset.
    offset = 0
    for names in (FRUIT[:7], FRUIT[7:]):
        alone = backend.predict_images(image, names)[0]
        mine = (merged.labels >= offset) & (merged.labels < offset + len(names))
        assert torch.equal(merged.scores[mine], alone.scores) and torch.equal(merged.boxes[mine], alone.boxes)
        assert torch.equal(merged.labels[mine] - offset, alone.labels)
        offset += len(names)


def test_training_on_a_chunked_vocabulary_is_a_user_error(backend):
    backend.set_vocabulary(FRUIT)
    batch = backend.preprocess([_scene(COLOURS[0])], [{"boxes": [[20, 10, 60, 50]], "labels": [7]}], train=True)
    with pytest.raises(UserError, match="needs 2") as err:
        backend.compute_losses(batch)
    assert err.value.field == "categories"


# --------------------------------------------------------------------------------------------------- train
def test_training_transform_flips_boxes_with_the_image(backend):
    backend.flip_prob = 1.0
    image = _scene(COLOURS[0], size=(96, 72), box=(10, 20, 30, 40))
    batch = backend.preprocess([image.convert("L")], [{"boxes": [[10, 20, 30, 40]], "labels": [0]}], train=True)
    assert batch.images.shape[1] == 3 and batch.image_sizes == [(64, 85)]
    scale = torch.tensor([85 / 96, 64 / 72, 85 / 96, 64 / 72])
    torch.testing.assert_close(batch.targets[0]["boxes"], torch.tensor([[66.0, 20, 86, 40]]) * scale)
    backend.flip_prob = 0.0
    plain = backend.preprocess([image], [{"boxes": [[10, 20, 30, 40]], "labels": [0]}], train=True)
    torch.testing.assert_close(plain.targets[0]["boxes"], torch.tensor([[10.0, 20, 30, 40]]) * scale)


def test_loss_terms_sum_to_the_models_loss(backend):
    _, _, batch = _training_batch(backend)
    losses = backend.compute_losses(batch)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_ce_enc"} <= set(losses)
    assert "cardinality_error" not in losses and all(v.ndim == 0 for v in losses.values())
    # In eval mode (no drop path) the same batch gives the same loss twice.
    torch.testing.assert_close(sum(losses.values()), backend.training_outputs(batch).loss)


def test_training_label_maps_mark_only_the_names_tokens(backend):
    from odinw_bench.tasks.spec import CaptionPart, PromptSpec

    # "[CLS] a red square on grey . green square . blue square . [SEP]": the model's own split at "." would make
    # tokens 1-5 the first category; its name is tokens 2-3 only.
    prompt = PromptSpec(caption=[CaptionPart(prefix="a ", name="red square", suffix=" on grey"),
                                 CaptionPart(name="green square"), CaptionPart(name="blue square")])
    backend.set_vocabulary(SHAPES, prompt)
    seen, library_loss = [], backend.model.loss_function

    def spy(*args, **kwargs):
        seen.append(args[5])  # label_maps: one (C, max_text_len) map per image
        return library_loss(*args, **kwargs)

    backend.model.loss_function = spy
    batch = backend.preprocess([_scene(COLOURS[0])], [{"boxes": [[20, 10, 60, 50]], "labels": [0]}], train=True)
    backend.compute_losses(batch)
    assert backend.model.loss_function is spy  # the wrapper is gone after the forward pass
    rows = [row.nonzero().flatten().tolist() for row in seen[0][0]]
    assert rows == [[2, 3], [7, 8], [10, 11]]


def test_parameter_groups_cover_every_parameter_once(backend):
    backend.enable_prompt_tuning()
    groups = backend.parameter_groups()
    names = [name for name, _ in backend.named_parameters()]
    listed = [name for group in groups.values() for name in group]
    assert sorted(listed) == sorted(names) and len(set(listed)) == len(listed)
    assert groups["prompt"] == ["prompt_offset"]
    assert all("bbox_embed" in n or "class_embed" in n for n in groups["head"]) and groups["head"]
    assert all(n.startswith("model.model.text_backbone.") for n in groups["language"])
    assert {"backbone", "fusion"} <= {g for g, members in groups.items() if members}


@pytest.mark.parametrize("group", ["head", "prompt", "language", "everything"])
def test_one_step_changes_exactly_the_trained_group(backend, group):
    backend.enable_prompt_tuning()
    with torch.no_grad():  # transformers zero-initialises the last box layers (DETR's init): no gradient would
        for param in backend.parameters():  # reach the layers before them; a trained checkpoint has no such zeros
            if not param.any():
                param.normal_(0.0, 0.02)
    backend.train()
    _, _, batch = _training_batch(backend)
    groups = backend.parameter_groups()
    trained = {n for members in groups.values() for n in members} if group == "everything" else set(groups[group])
    changed = _step(backend, batch, trained)
    assert changed <= trained
    if group in ("head", "prompt"):
        # transformers detaches the two-stage proposals before their loss, so the proposal box MLP never gets a
        # gradient (a property of the library's loss, kept as it is).
        detached = {n for n in trained if "encoder_output_bbox_embed" in n}
        assert changed == trained - detached
    else:  # a parameter may miss a gradient (an unused position row still sits in a used tensor) but few do
        assert len(changed) >= 0.9 * len(trained)


def test_zero_prompt_offset_predicts_exactly_as_without(backend):
    images = [_scene(COLOURS[0]), _scene(COLOURS[1])]
    before = backend.predict_images(images, SHAPES)
    backend.enable_prompt_tuning()
    after = backend.predict_images(images)
    for a, b in zip(before, after):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
    with torch.no_grad():
        backend.prompt_offset.normal_()  # the offset is live: a non-zero one changes the scores
    assert not torch.equal(backend.predict_images(images)[0].scores, before[0].scores)


def test_frozen_stage_names_follow_freeze_conv_body_at(backend):
    assert backend.frozen_stage_names(-1) == []
    stem = backend.frozen_stage_names(0)
    two = backend.frozen_stage_names(2)
    assert stem and all(".embeddings." in n for n in stem)
    assert set(stem) < set(two) and all(".embeddings." in n or ".encoder.layers.0." in n for n in two)
    assert set(two) <= set(backend.parameter_groups()["backbone"])


def test_a_few_steps_lower_the_loss(backend):
    images, targets, _ = _training_batch(backend)
    plain = backend.preprocess(images, targets)

    def loss() -> float:
        backend.eval()
        with torch.no_grad():
            return float(sum(backend.compute_losses(plain).values()))

    start = loss()
    optimizer = torch.optim.AdamW(backend.parameters(), lr=2e-3)
    rng = random.Random(0)
    for _ in range(20):
        backend.train()
        optimizer.zero_grad()
        sum(backend.compute_losses(backend.preprocess(images, targets, train=True, rng=rng)).values()).backward()
        optimizer.step()
    assert loss() < 0.8 * start


# --------------------------------------------------------------------------------------------------- presets
def test_presets_cite_every_value():
    table = presets()
    assert set(table) == {"gdino-t", "gdino-b", "mm-gdino-t", "llmdet-t"}
    for preset in table.values():
        assert {k for k in preset if k != "source"} == set(preset["source"])
        assert all(isinstance(s, str) and s for s in preset["source"].values())
        assert (preset["shortest_edge"], preset["longest_edge"], preset["topk"]) == (800, 1333, 300)
    assert [n for n, p in table.items() if p["pretraining_includes_odinw"]] == ["gdino-b"]
    assert table["llmdet-t"]["model_class"] == "MMGroundingDinoForObjectDetection"
    with pytest.raises(UserError, match="did you mean: gdino-t"):
        get_preset("gdino-tt")


def test_importing_the_backend_does_not_import_transformers():
    code = "import sys, odinw_bench.models.hf.grounding_dino; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
