"""Owlv2Backend on a tiny random OWLv2 saved locally (never the network).

The model (a 2-block ViT on 64 px images in 8 px patches, so 64 boxes, and a 2-block text transformer over a made-up
CLIP vocabulary) is built once per module, saved with its processor as ``save_pretrained`` writes it, and loaded
through ``Owlv2Backend.from_pretrained(folder)`` by each test.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_models import save_tiny_owlv2
from PIL import Image, ImageDraw

from odinw_bench.errors import UserError
from odinw_bench.models.hf import owl_loss
from odinw_bench.models.hf.owl_presets import get_preset, presets
from odinw_bench.models.hf.owl_queries import (
    AUTHORS_TEMPLATES,
    query_texts,
    tokenize_queries,
)
from odinw_bench.models.hf.owlv2 import Owlv2Backend

SHAPES = ["red square", "green square", "blue square"]
COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread; on a loaded 2-core machine two threads mostly spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A folder with the tiny model and its processor (64 px squares, the tiny CLIP tokenizer)."""
    return save_tiny_owlv2(tmp_path_factory.mktemp("owlv2"))


@pytest.fixture
def backend(saved) -> Owlv2Backend:
    return Owlv2Backend.from_pretrained(saved)


def _scene(colour: tuple[int, int, int], size: tuple[int, int] = (96, 72),
           box: tuple[int, int, int, int] = (20, 10, 60, 50)) -> Image.Image:
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return image


def _training_data():
    images = [_scene(c, box=(10 + 10 * i, 8, 50 + 10 * i, 48)) for i, c in enumerate(COLOURS)]
    targets = [{"boxes": [[10 + 10 * i, 8, 50 + 10 * i, 48]], "labels": [i]} for i in range(3)]
    return images, targets


def _reference(saved: Path):
    """transformers' own processor and model from the same folder."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    return AutoProcessor.from_pretrained(saved), AutoModelForZeroShotObjectDetection.from_pretrained(saved).eval()


# --------------------------------------------------------------------------------------------------- loading
def test_loads_the_saved_model_with_its_processor(backend):
    assert type(backend.model).__name__ == "Owlv2ForObjectDetection"
    assert type(backend.processor).__name__ == "Owlv2Processor"
    assert (backend.image_size, backend.max_text_len) == (64, 16) and not backend.training
    assert backend.templates == AUTHORS_TEMPLATES and (backend.score_rule, backend.topk) == ("topk", 300)


def test_folder_of_another_model_type_is_one_clear_error(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        Owlv2Backend.from_pretrained(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "model_type 'bert'" in message
    assert err.value.field == "model_type"


def test_folder_that_is_not_a_model_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(UserError) as err:
        Owlv2Backend.from_pretrained(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert err.value.field == "config.json"


def test_model_saved_without_its_processor_is_one_clear_error(tmp_path):
    save_tiny_owlv2(tmp_path, processor=False)
    with pytest.raises(UserError, match="Owlv2Processor") as err:
        Owlv2Backend.from_pretrained(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value) and err.value.field == "processor"


def test_uncached_hub_id_offline_names_the_id():
    # The session's HF cache is an empty temporary folder, so nothing is cached and nothing may be downloaded.
    with pytest.raises(UserError, match="google/owlv2-base-patch16-ensemble"):
        Owlv2Backend.from_preset("owlv2-b", local_files_only=True)


# --------------------------------------------------------------------------------------------------- queries
def test_queries_are_the_authors_templates_over_canonical_names(backend):
    backend.set_vocabulary(["Red_Square", "traffic light (signal)"])
    captions = backend.captions
    assert len(captions) == 2 * len(AUTHORS_TEMPLATES)
    # Template-major; GLIP's name cleaning, then the authors' canonical form (no "." or brackets, lower case).
    assert captions[:3] == ["itap of a red square", "itap of a traffic light", "a bad photo of the red square"]
    # Letters outside a-z become spaces too (the authors' rule), dashes collapse, punctuation goes.
    assert query_texts(["Café--au  lait!"], templates=("a photo of a {}.",)) == ["a photo of a caf -au lait"]


def test_a_prompt_spec_changes_the_queries_and_the_scores(saved):
    from odinw_bench.tasks.spec import CaptionPart, PromptSpec

    backend = Owlv2Backend.from_pretrained(saved, templates=("{}",))
    image = [_scene(COLOURS[0])]
    plain = backend.predict_images(image, ["apple", "banana"])[0]
    assert backend.captions == ["apple", "banana"]
    backend.set_vocabulary(["x", "y"], PromptSpec(names=["cherry", "lemon"]))
    assert backend.captions == ["cherry", "lemon"]
    prompt = PromptSpec(caption=[CaptionPart(prefix="a ripe ", name="apple", suffix=" fruit"),
                                 CaptionPart(name="banana")])
    prompted = backend.predict_images(image, ["apple", "banana"], prompt)[0]
    assert backend.captions == ["a ripe apple fruit", "banana"]
    assert not torch.equal(prompted.scores, plain.scores)  # the model reads the new text


def test_long_queries_are_truncated_to_the_text_length_with_a_warning(backend, caplog):
    long_name = "x" * 20  # 20 unknown letters: 20 tokens
    with caplog.at_level(logging.WARNING):
        tokens = tokenize_queries(["apple", long_name], backend.processor.tokenizer, backend.max_text_len)
    assert "truncated" in caplog.text and long_name in caplog.text
    eos = backend.processor.tokenizer.eos_token_id
    assert tokens["input_ids"].shape == (2, 16) and tokens["input_ids"][1, -1] == eos  # the pooled token survives
    assert int(tokens["attention_mask"][0].sum()) == 3  # start, "apple", end


def test_names_without_text_and_bad_templates_are_user_errors(saved, backend):
    with pytest.raises(UserError) as err:
        backend.set_vocabulary(["apple", "???"])
    assert err.value.field == "categories[1]"
    with pytest.raises(UserError, match="exactly one") as err:
        Owlv2Backend.from_pretrained(saved, templates=("a photo",))
    assert err.value.field == "templates"


# --------------------------------------------------------------------------------------------------- predict
def test_pipeline_rule_equals_transformers_post_processing(saved):
    images = [_scene(COLOURS[0]), _scene(COLOURS[1], size=(70, 90), box=(5, 30, 40, 80))]
    sizes = [(image.height, image.width) for image in images]
    processor, model = _reference(saved)
    inputs = processor(images=images, text=[["apple", "banana"]] * 2, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    everything = processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    threshold = float(torch.cat([r["scores"] for r in everything]).median())  # keeps some patches, drops others
    expected = processor.post_process_grounded_object_detection(outputs, threshold=threshold, target_sizes=sizes)

    backend = Owlv2Backend.from_pretrained(saved, templates=("{}",), score_rule="pipeline", score_threshold=threshold)
    dets = backend.predict_images(images, ["apple", "banana"])
    for det, ref in zip(dets, expected):
        assert 0 < len(det.scores) < 64
        assert torch.equal(det.scores, ref["scores"]) and torch.equal(det.boxes, ref["boxes"])
        assert torch.equal(det.labels, ref["labels"])


def test_topk_rule_averages_the_templates_and_keeps_the_top_pairs(saved):
    from torchvision.ops import box_convert

    templates = ("{}", "a photo of a {}")
    image = _scene(COLOURS[2], size=(90, 60))
    backend = Owlv2Backend.from_pretrained(saved, templates=templates, topk=7)
    det = backend.predict_images([image], ["apple", "banana"])[0]
    # By hand with transformers' processor and model: 4 queries, logits averaged per category, top 7 pairs.
    processor, model = _reference(saved)
    inputs = processor(images=[image], text=[["apple", "banana", "a photo of a apple", "a photo of a banana"]],
                       return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    probs = outputs.logits[0].view(64, 2, 2).mean(1).sigmoid()
    top = probs.flatten().topk(7)
    torch.testing.assert_close(det.scores, top.values)
    assert det.labels.tolist() == (top.indices % 2).tolist()
    # Boxes: relative to the image (not the 90 x 90 square), clipped there as cxcywh, in pixels.
    size = torch.tensor([90.0, 60.0, 90.0, 60.0])
    relative = (outputs.pred_boxes[0][top.indices // 2] * 90 / size).clamp(0, 1)
    torch.testing.assert_close(det.boxes, box_convert(relative, "cxcywh", "xyxy") * size)


# --------------------------------------------------------------------------------------------------- train
def test_preprocess_pads_to_a_square_and_scales_the_targets(backend):
    image = _scene(COLOURS[0], size=(96, 72), box=(10, 20, 30, 40))
    target = [{"boxes": [[10, 20, 30, 40]], "labels": [0]}]
    backend.flip_prob = 1.0
    flipped = backend.preprocess([image.convert("L")], target, train=True)
    assert flipped.images.shape == (1, 3, 64, 64) and flipped.image_sizes == [(48, 64)]
    assert flipped.original_sizes == [(72, 96)]
    torch.testing.assert_close(flipped.targets[0]["boxes"], torch.tensor([[66.0, 20, 86, 40]]) * 64 / 96)
    backend.flip_prob = 0.0
    plain = backend.preprocess([image], target, train=True)
    torch.testing.assert_close(plain.targets[0]["boxes"], torch.tensor([[10.0, 20, 30, 40]]) * 64 / 96)
    # The square is padded at the bottom: below the image (rows 48+, past the resize blur) one value per channel.
    padding = plain.images[0, :, 52:, :]
    assert torch.equal(padding, padding[:, :1, :1].expand_as(padding))
    assert not torch.equal(plain.images[0, :, :40], padding[:, :1, :1].expand(3, 40, 64))


def test_parameter_groups_cover_every_parameter_once(backend):
    backend.set_vocabulary(SHAPES)
    backend.enable_prompt_tuning()
    groups = backend.parameter_groups()
    names = [name for name, _ in backend.named_parameters()]
    listed = [name for group in groups.values() for name in group]
    assert sorted(listed) == sorted(names) and len(set(listed)) == len(listed)
    assert groups["prompt"] == ["prompt_offset"]
    assert groups["head"] and all(n.startswith(("model.class_head.", "model.box_head.")) for n in groups["head"])
    assert any("logit_shift" in n for n in groups["head"]) and any("logit_scale" in n for n in groups["head"])
    assert all(n.startswith("model.objectness_head.") for n in groups["objectness"]) and groups["objectness"]
    assert all(n.startswith("model.owlv2.text_") for n in groups["language"]) and groups["language"]
    assert groups["backbone"] and set(backend.never_trained_names()) == set(groups["objectness"] +
                                                                            groups["contrastive"])


@pytest.mark.parametrize("regime", ["linear-probe", "prompt", "full"])
def test_one_step_changes_exactly_what_the_regime_trains(backend, regime):
    from odinw_bench.training.regimes import apply_regime, get_regime

    images, targets = _training_data()
    backend.set_vocabulary(SHAPES)
    trained = set(apply_regime(backend, get_regime(regime), freeze_conv_body_at=2))
    groups = backend.parameter_groups()
    expected = {"linear-probe": set(groups["head"]), "prompt": {"prompt_offset"},
                "full": {n for n, _ in backend.named_parameters()} - set(backend.never_trained_names())
                - set(backend.frozen_stage_names(2))}[regime]
    assert trained == expected
    before = {name: param.detach().clone() for name, param in backend.named_parameters()}
    backend.train()
    batch = backend.preprocess(images, targets, train=True, rng=random.Random(0))
    optimizer = torch.optim.SGD([p for p in backend.parameters() if p.requires_grad], lr=0.1)
    sum(backend.compute_losses(batch).values()).backward()
    optimizer.step()
    changed = {name for name, param in backend.named_parameters() if not torch.equal(before[name], param.detach())}
    assert changed == trained


def test_zero_prompt_offset_predicts_exactly_as_without(backend):
    images = [_scene(COLOURS[0]), _scene(COLOURS[1])]
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        backend.enable_prompt_tuning()
    before = backend.predict_images(images, SHAPES)
    backend.enable_prompt_tuning()
    assert backend.prompt_offset.shape == (3, 32) and not backend.prompt_offset.any()
    after = backend.predict_images(images)
    for a, b in zip(before, after):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
    with torch.no_grad():
        backend.prompt_offset.normal_()  # the offset is live: a non-zero one changes the scores
    assert not torch.equal(backend.predict_images(images)[0].scores, before[0].scores)
    with pytest.raises(UserError, match="one offset per category") as err:
        backend.set_vocabulary(SHAPES[:2])
    assert err.value.field == "categories"


def test_frozen_stage_names_treat_vit_blocks_as_stages(backend):
    assert backend.frozen_stage_names(-1) == []
    stem, two, three = (set(backend.frozen_stage_names(k)) for k in (0, 2, 3))
    assert stem and all(".embeddings." in n or ".pre_layernorm." in n for n in stem)
    assert stem < two < three and set(backend.frozen_stage_names(1)) == stem
    assert {n for n in two - stem} and all(".encoder.layers.0." in n for n in two - stem)
    assert all(".encoder.layers.1." in n for n in three - two)
    assert three <= set(backend.parameter_groups()["backbone"])


def test_the_matcher_assigns_each_target_to_one_patch():
    torch.manual_seed(1)
    logits, boxes = torch.randn(10, 3), torch.rand(10, 4) * 0.5 + 0.25
    labels = torch.tensor([2, 0, 1, 0])
    patches, targets = owl_loss.match(logits, boxes, labels, torch.rand(4, 4) * 0.5 + 0.25)
    assert sorted(targets.tolist()) == [0, 1, 2, 3] and len(set(patches.tolist())) == 4
    # Targets that sit exactly on patches 7, 2, 5, scored for their category there, go to those patches.
    planted = logits.clone()
    planted[[7, 2, 5], [2, 0, 1]] = 8.0
    patches, targets = owl_loss.match(planted, boxes, labels[:3], boxes[[7, 2, 5]])
    assert dict(zip(targets.tolist(), patches.tolist())) == {0: 7, 1: 2, 2: 5}
    empty = owl_loss.match(logits, boxes, labels[:0], boxes[:0])
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_loss_terms_follow_the_owl_vit_definition():
    from torchvision.ops import (
        box_convert,
        generalized_box_iou_loss,
        sigmoid_focal_loss,
    )

    torch.manual_seed(2)
    logits = torch.randn(2, 12, 3, requires_grad=True)
    boxes = (torch.rand(2, 12, 4) * 0.4 + 0.3).requires_grad_()
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]  # a negative image
    weights = owl_loss.LossWeights(class_weight=2.0, bbox_weight=5.0, giou_weight=3.0)
    terms = owl_loss.set_prediction_loss(logits, boxes, targets, weights)
    assert set(terms) == {"loss_class", "loss_bbox", "loss_giou"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    # By hand: image 0 with the matcher's pairs, normalised by its 2 targets; image 1 all negative, by 1.
    patches, order = owl_loss.match(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"], weights)
    onehot = torch.zeros(12, 3)
    onehot[patches, targets[0]["labels"][order]] = 1
    focal = [sigmoid_focal_loss(logits[0], onehot, alpha=0.3, gamma=2.0, reduction="sum") / 2,
             sigmoid_focal_loss(logits[1], torch.zeros(12, 3), alpha=0.3, gamma=2.0, reduction="sum")]
    mine = box_convert(boxes[0][patches], "cxcywh", "xyxy")
    wanted = box_convert(targets[0]["boxes"][order], "cxcywh", "xyxy")
    torch.testing.assert_close(terms["loss_class"], 2.0 * (focal[0] + focal[1]) / 2)
    torch.testing.assert_close(terms["loss_bbox"], 5.0 * (mine - wanted).abs().sum() / 2 / 2)
    torch.testing.assert_close(terms["loss_giou"], 3.0 * generalized_box_iou_loss(mine, wanted, reduction="sum") / 2 / 2)
    sum(terms.values()).backward()
    assert torch.isfinite(logits.grad).all() and boxes.grad[0].abs().sum() > 0 and not boxes.grad[1].any()


def test_compute_losses_scores_targets_in_the_frame_of_the_boxes(backend):
    images, targets = _training_data()
    backend.set_vocabulary(SHAPES)
    batch = backend.preprocess(images, targets)
    losses = backend.compute_losses(batch)
    with torch.no_grad():
        outputs = backend._forward(batch)
    # pred_boxes are normalised to the 64 px square: targets (processed pixels) are divided by 64, not by 48 x 64.
    from torchvision.ops import box_convert

    square = [{"labels": t["labels"], "boxes": box_convert(t["boxes"] / 64, "xyxy", "cxcywh")} for t in batch.targets]
    expected = owl_loss.set_prediction_loss(outputs.logits.view(3, 64, 7, 3).mean(2), outputs.pred_boxes, square)
    for name in expected:
        torch.testing.assert_close(losses[name], expected[name])


def test_a_few_steps_lower_the_loss(backend):
    images, targets = _training_data()
    backend.set_vocabulary(SHAPES)
    plain = backend.preprocess(images, targets)

    def loss() -> float:
        backend.eval()
        with torch.no_grad():
            return float(sum(backend.compute_losses(plain).values()))

    start = loss()
    optimizer = torch.optim.AdamW(backend.parameters(), lr=2e-3)
    rng = random.Random(0)
    for _ in range(15):
        backend.train()
        optimizer.zero_grad()
        sum(backend.compute_losses(backend.preprocess(images, targets, train=True, rng=rng)).values()).backward()
        optimizer.step()
    assert loss() < 0.8 * start


# --------------------------------------------------------------------------------------------------- presets
def test_presets_cite_every_value():
    table = presets()
    assert set(table) == {"owlv2-b", "owlv2-l"}
    assert table["owlv2-b"]["hub_id"] == "google/owlv2-base-patch16-ensemble"
    assert table["owlv2-l"]["hub_id"] == "google/owlv2-large-patch14-ensemble"
    assert (table["owlv2-b"]["image_size"], table["owlv2-l"]["image_size"]) == (960, 1008)
    for preset in table.values():
        assert {k for k in preset if k != "source"} == set(preset["source"])
        assert all(isinstance(s, str) and s for s in preset["source"].values())
        assert (preset["score_rule"], preset["topk"], preset["score_threshold"]) == ("topk", 300, 0.0)
        assert preset["prompt_templates"] == list(AUTHORS_TEMPLATES) and not preset["pretraining_includes_odinw"]
    with pytest.raises(UserError, match="did you mean: owlv2-b"):
        get_preset("owlv2-bb")


def test_the_catalog_runs_owlv2_names_with_their_preset_settings(saved):
    from odinw_bench.models.catalog import (
        ModelRef,
        hf_backend_of,
        load_hf_backend,
        resolve_model,
    )

    ref = resolve_model("owlv2-l")
    assert (ref.backend, ref.source) == ("owlv2", "google/owlv2-large-patch14-ensemble")
    assert hf_backend_of(saved) == "owlv2" and resolve_model(f"hf:{saved}").backend == "owlv2"
    # A preset's templates and scoring reach the backend (here changed, to see them arrive).
    preset = {**ref.preset, "prompt_templates": ["{}"], "score_rule": "pipeline", "score_threshold": 0.2}
    backend = load_hf_backend(ModelRef("owlv2-l", "owlv2", ref.source, preset), saved)
    assert (backend.templates, backend.score_rule, backend.score_threshold) == (("{}",), "pipeline", 0.2)
    plain = load_hf_backend(ModelRef(f"hf:{saved}", "owlv2", str(saved)), saved)
    assert (plain.templates, plain.score_rule, plain.topk) == (AUTHORS_TEMPLATES, "topk", 300)


def test_importing_the_backend_does_not_import_transformers():
    code = "import sys, odinw_bench.models.hf.owlv2; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
