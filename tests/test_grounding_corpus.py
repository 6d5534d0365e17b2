"""The synthetic grounding corpus: vocabulary, scenes, captions with spans, writer and validating reader."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odinw_bench.data.captions import LARGE_ABOVE, PLACE_WORDS, SIZE_WORDS, SMALL_BELOW
from odinw_bench.data.corpus_reader import (
    CORPUS_FILE,
    IMAGES_DIR,
    caption_token_map,
    read_corpus,
)
from odinw_bench.data.drawing import COLOUR_WORDS, Part, Style, colour_word
from odinw_bench.data.grounding_corpus import write_corpus
from odinw_bench.data.scenes import MAX_OCCLUDED, instance_style
from odinw_bench.data.tokenizer import get_tokenizer
from odinw_bench.data.vocabulary import CATEGORIES, Category, draw
from odinw_bench.errors import UserError

IMAGE_SIZE = (96, 80)
N_IMAGES = 20


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c", N_IMAGES, seed=7, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return read_corpus(corpus_dir)


# --- vocabulary ----------------------------------------------------------------------------------------------


def test_vocabulary_names_are_whole_english_word_pieces_and_share_no_word():
    names = list(CATEGORIES)
    assert len(names) >= 50
    assert sum(" " in n for n in names) >= 5  # multi-word names
    tokenizer = get_tokenizer()
    caption_words = set(COLOUR_WORDS) | set(SIZE_WORDS) | set(PLACE_WORDS) | {"a", "an", "the", "and", "of", "to"}
    owner: dict[str, str] = {}
    for name in names:
        for word in name.split():
            assert tokenizer.tokenize(word) == [word], f"{name!r}: {word!r} is not one word piece"
            assert word not in caption_words, f"{name!r} uses the caption word {word!r}"
            assert owner.setdefault(word, name) == name, f"{name!r} and {owner[word]!r} share {word!r}"


def _thumbnail(category: Category, side: int, style: Style) -> np.ndarray:
    """The category drawn with its typical aspect in a ``side`` px square on gray, reduced to 8 x 8 RGB."""
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    w, h = (round(side / category.aspect), side) if category.aspect > 1 else (side, round(side * category.aspect))
    draw(category, canvas, ((side - w) // 2, (side - h) // 2, w, h), style)
    return np.asarray(canvas.resize((8, 8), Image.Resampling.BOX), dtype=np.float32)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute RGB difference of two thumbnails, the mirror image counting as the same look."""
    return float(min(np.abs(a - b).mean(), np.abs(a - b[:, ::-1]).mean()))


def _look_alikes(categories: list[Category], side: int) -> list[tuple[str, str]]:
    """Pairs whose own looks are no farther apart than a random instance of either is from its own look."""
    rng = np.random.default_rng(0)
    own = {c.name: _thumbnail(c, side, Style()) for c in categories}
    spread = {c.name: max(_distance(own[c.name], _thumbnail(c, side, instance_style(rng))) for _ in range(6))
              for c in categories}
    return [(a.name, b.name) for a, b in itertools.combinations(categories, 2)
            if _distance(own[a.name], own[b.name]) <= max(spread[a.name], spread[b.name], 1.0)]


@pytest.mark.parametrize("side", [16, 48])
def test_every_category_looks_unlike_every_other_at_small_sizes(side):
    assert _look_alikes(list(CATEGORIES.values()), side) == []


def test_the_look_alike_check_finds_a_copied_look():
    cone = CATEGORIES["traffic cone"]
    twin = Category("road marker", cone.parts, cone.aspect)  # same look, other name
    slightly_other = Category("road marker", (Part("disc", "orange"),), cone.aspect)
    assert _look_alikes([cone, twin, CATEGORIES["egg"]], 16) == [("traffic cone", "road marker")]
    assert _look_alikes([cone, slightly_other], 16) == []


def test_styles_change_the_look_but_draw_only_inside_the_box():
    base = Image.new("RGB", (40, 40), (128, 128, 128))
    looks = []
    for style in (Style(), Style(hue_shift=120), Style(outline_only=True), Style(texture="noise"),
                  Style(texture="hatch"), Style(saturation=0.0)):
        canvas = base.copy()
        mask = draw("sea star", canvas, (5, 6, 30, 28), style)
        pixels = np.asarray(canvas)
        assert mask.shape == (28, 30) and mask.any()
        outside = np.ones((40, 40), dtype=bool)
        outside[6:34, 5:35] = False
        assert (pixels[outside] == 128).all()
        looks.append(pixels)
    for a, b in itertools.combinations(looks, 2):
        assert np.abs(a.astype(int) - b).mean() > 1.0


@pytest.mark.parametrize("rgb, word", [((215, 40, 40), "red"), ((245, 130, 20), "orange"), ((40, 80, 210), "blue"),
                                       ((40, 160, 60), "green"), ((20, 20, 20), "black"), ((248, 248, 248), "white"),
                                       ((135, 135, 135), "gray"), ((125, 75, 35), "brown"), ((245, 150, 190), "pink")])
def test_colour_words(rgb, word):
    assert colour_word(rgb) == word


# --- the generated corpus ------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_corpus(tmp_path, corpus_dir):
    again = write_corpus(tmp_path / "again", N_IMAGES, seed=7, image_size=IMAGE_SIZE)
    files = sorted(p.relative_to(corpus_dir) for p in corpus_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((corpus_dir / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = write_corpus(tmp_path / "other", 3, seed=8, image_size=IMAGE_SIZE)
    assert (other / IMAGES_DIR / "000001.png").read_bytes() != (again / IMAGES_DIR / "000001.png").read_bytes()


def test_scenes_have_several_objects_inside_the_image_at_most_partly_hidden(corpus):
    per_image = [corpus.annotations_of(image.id) for image in corpus.images]
    assert all(1 <= len(a) <= 6 for a in per_image)
    assert max(len(a) for a in per_image) >= 4
    assert len({a.category_id for a in corpus.annotations}) >= 20
    sides = [max(a.bbox[2:]) for a in corpus.annotations]
    assert max(sides) / min(sides) > 2.5  # varied scales
    for image_annotations in per_image:
        for i, ann in enumerate(image_annotations):  # later annotations are drawn on top
            covered = np.zeros(IMAGE_SIZE[::-1], dtype=bool)
            for above in image_annotations[i + 1:]:
                x, y, w, h = (int(v) for v in above.bbox)
                covered[y:y + h, x:x + w] = True
            x, y, w, h = (int(v) for v in ann.bbox)
            assert covered[y:y + h, x:x + w].mean() <= MAX_OCCLUDED


def test_detection_prompts_name_present_categories_and_ungrounded_negatives(corpus):
    for image in corpus.images:
        detections = [c for c in corpus.captions_of(image.id) if c.kind == "detection"]
        assert len(detections) == 1
        caption = detections[0]
        present = {corpus.categories[a.category_id] for a in corpus.annotations_of(image.id)}
        listed = caption.text.split(". ")
        assert len(listed) == len(set(listed)) and present <= set(listed)
        assert len(set(listed) - present) >= 3  # negatives
        assert {b.annotation_id for b in caption.boxes} == {a.id for a in corpus.annotations_of(image.id)}
        spanned = set()
        for box in caption.boxes:
            name = corpus.categories[_annotation(corpus, box.annotation_id).category_id]
            assert [caption.text[s:e] for s, e in box.spans] == [name]
            spanned.add(name)
        assert spanned == present  # a negative name has no box


def _annotation(corpus, ann_id):
    return next(a for a in corpus.annotations if a.id == ann_id)


def test_grounding_phrases_name_objects_by_size_colour_and_place_read_off_the_scene(corpus):
    phrases = [c for c in corpus.captions if c.kind == "grounding"]
    assert len(phrases) == 2 * N_IMAGES
    relations_seen = set()
    for caption in phrases:
        assert 1 <= len(caption.boxes) <= 2
        for box in caption.boxes:
            ann = _annotation(corpus, box.annotation_id)
            assert ann.image_id == caption.image_id
            (start, end), = box.spans
            words = caption.text[start:end].split(" ")
            name = corpus.categories[ann.category_id]
            assert " ".join(words[-len(name.split()):]) == name
            attributes = words[:-len(name.split())]
            assert attributes[-1] in COLOUR_WORDS and len(attributes) <= 2
            relative = max(ann.bbox[2:]) / min(IMAGE_SIZE)
            if attributes[0] == "small":
                assert relative < SMALL_BELOW
            elif attributes[0] == "large":
                assert relative > LARGE_ABOVE
            else:
                assert SMALL_BELOW <= relative <= LARGE_ABOVE
        relation = re.search(r" (to the left of|to the right of|above|below) the ", caption.text)
        if relation:
            relations_seen.add(relation[1])
            first, second = (_annotation(corpus, b.annotation_id).bbox for b in caption.boxes)
            dx = (first[0] + first[2] / 2) - (second[0] + second[2] / 2)
            dy = (first[1] + first[3] / 2) - (second[1] + second[3] / 2)
            expected = {"to the left of": dx < 0, "to the right of": dx > 0, "above": dy < 0, "below": dy > 0}
            assert expected[relation[1]], caption.text
    assert relations_seen


def test_every_box_of_every_caption_maps_to_the_tokens_of_its_words(corpus):
    tokenizer = get_tokenizer()
    grounded = set()
    for caption in corpus.captions:
        token_map = caption_token_map(caption, tokenizer)
        ids = tokenizer(caption.text)["input_ids"]
        for box in caption.boxes:
            assert token_map[box.annotation_id], caption.text
            words = " ".join(caption.text[s:e] for s, e in box.spans)
            assert tokenizer.decode([ids[t] for t in token_map[box.annotation_id]]) == words
            grounded.add(box.annotation_id)
    assert grounded == {a.id for a in corpus.annotations}


def test_images_are_rgb_pngs_of_the_recorded_size(corpus):
    for image in corpus.images[:5]:
        with Image.open(corpus.image_path(image)) as opened:
            assert (opened.format, opened.mode, opened.size) == ("PNG", "RGB", IMAGE_SIZE)


def test_write_corpus_leaves_nothing_behind_when_it_fails(tmp_path, monkeypatch):
    from odinw_bench.data import scenes

    calls = []
    real = scenes.render_scene

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(scenes, "render_scene", failing)
    with pytest.raises(UserError, match="No space left"):
        write_corpus(tmp_path / "c", 5, seed=0, image_size=IMAGE_SIZE)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_corpus(tmp_path / "c", 1, seed=0, image_size=IMAGE_SIZE)
    with pytest.raises(UserError, match="already exists"):
        write_corpus(tmp_path / "c", 1, seed=0, image_size=IMAGE_SIZE)
    write_corpus(tmp_path / "c", 2, seed=0, image_size=IMAGE_SIZE, overwrite=True)
    assert len(read_corpus(tmp_path / "c").images) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


# --- the reader on corrupt corpora ---------------------------------------------------------------------------


def _first_box_caption(data, kind="detection"):
    return next(i for i, c in enumerate(data["captions"]) if c["kind"] == kind and c["boxes"])


def _span_out_of_range(data):
    i = _first_box_caption(data)
    data["captions"][i]["boxes"][0]["spans"][0] = [0, len(data["captions"][i]["text"]) + 1]
    return f"captions[{i}].boxes[0].spans[0]"


def _box_without_spans(data):
    i = _first_box_caption(data, "grounding")
    data["captions"][i]["boxes"][0]["spans"] = []
    return f"captions[{i}].boxes[0].spans"


def _unknown_category(data):
    data["annotations"][2]["category_id"] = 999
    return "annotations[2].category_id"


def _ungrounded(data):
    ann_id = data["annotations"][0]["id"]
    for caption in data["captions"]:
        caption["boxes"] = [b for b in caption["boxes"] if b["annotation_id"] != ann_id]
    return "annotations[0]"


def _span_not_the_name(data):
    i = _first_box_caption(data)
    start, end = data["captions"][i]["boxes"][0]["spans"][0]
    data["captions"][i]["boxes"][0]["spans"][0] = [start, end - 1]
    return f"captions[{i}].boxes[0].spans[0]"


def _box_outside(data):
    data["annotations"][1]["bbox"][0] = IMAGE_SIZE[0]
    return "annotations[1].bbox"


def _unknown_key(data):
    data["images"][4]["colour"] = "red"
    return "images[4].colour"


def _wrong_version(data):
    data["version"] = 2
    return "version"


def _float_span(data):
    i = _first_box_caption(data)
    data["captions"][i]["boxes"][0]["spans"][0][1] = 2.5
    return f"captions[{i}].boxes[0].spans[0]"


@pytest.mark.parametrize("corrupt", [_span_out_of_range, _box_without_spans, _unknown_category, _ungrounded,
                                     _span_not_the_name, _box_outside, _unknown_key, _wrong_version, _float_span])
def test_corrupt_field_gives_one_error_naming_the_file_and_the_field(corrupt, corpus_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(corpus_dir, broken)
    data = json.loads((broken / CORPUS_FILE).read_text())
    field = corrupt(data)
    (broken / CORPUS_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        read_corpus(broken)
    assert caught.value.path == str(broken / CORPUS_FILE)
    assert caught.value.field == field, str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_json_and_missing_image_are_named(corpus_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(corpus_dir, broken)
    text = (broken / CORPUS_FILE).read_text()
    (broken / CORPUS_FILE).write_text(text[:-20])
    with pytest.raises(UserError, match=r"corpus\.json: malformed JSON"):
        read_corpus(broken)
    (broken / CORPUS_FILE).write_text(text)
    (broken / IMAGES_DIR / "000003.png").unlink()
    with pytest.raises(UserError, match=r"images/000003\.png: image file of image 3 not found"):
        read_corpus(broken)
    (broken / IMAGES_DIR / "000003.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"images/000003\.png: cannot read the image"):
        read_corpus(broken)
    assert len(read_corpus(broken, check_images=False).images) == N_IMAGES
    with pytest.raises(UserError, match="corpus folder not found"):
        read_corpus(tmp_path / "nowhere")
