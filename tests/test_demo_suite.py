"""The demo suite of synthetic ODinW-style tasks (odinw_bench.data.demo_suite) and the shared export writer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from odinw_bench.cli import main
from odinw_bench.data import demo_suite, export_writer
from odinw_bench.data.demo_suite import demo_recipes, ensure_demo_task, write_demo_task
from odinw_bench.data.task_files import load_task_split, prepare_data_root
from odinw_bench.errors import UserError
from odinw_bench.tasks import registry
from odinw_bench.tasks.registry import load_task, resolve_tasks

SUITE = ("demo_playroom", "demo_sketches", "demo_pantry", "demo_gadgets")
SHOTS = (1, 3, 5, 10)
SEEDS = (3, 30, 300)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite_data")
    for task, _ in resolve_tasks("demo_suite"):
        prepare_data_root(task, root)
    return root


def test_suite_tasks_name_their_recipes_and_score_every_regime_on_test():
    pairs = resolve_tasks("demo_suite")
    assert [task.name for task, _ in pairs] == list(SUITE) == list(demo_recipes())
    for task, variant in pairs:
        recipe = demo_recipes()[task.name]
        assert task.synthetic and task.synthetic_recipe == task.name and variant is None
        assert task.zero_shot_split == task.test_split == "test"
        assert task.category_names == [c.name for c in recipe.categories]


@pytest.mark.parametrize("name", SUITE)
def test_every_split_loads_with_boxes_of_every_category(data_root, name):
    task = load_task(name)
    recipe = demo_recipes()[name]
    for split, count in zip(("train", "val", "test"), recipe.counts):
        loaded = load_task_split(task, split, data_root)
        assert loaded.stats["n_images"] == count
        seen = {a["category_id"] for anns in loaded.annotations.values() for a in anns}
        assert seen == set(task.category_ids), (split, seen)
        per_image = [len(anns) for anns in loaded.annotations.values()]
        assert min(per_image) >= 1 and max(per_image) <= recipe.n_objects[1]


@pytest.mark.parametrize("name", SUITE)
def test_fewshot_files_hold_k_images_of_every_category(data_root, name):
    task = load_task(name)
    for split in ("train", "val"):
        full = json.loads(task.split_files(split, data_root)[0].read_text())
        available = {c: len({a["image_id"] for a in full["annotations"] if a["category_id"] == c})
                     for c in task.category_ids}
        if split == "train":  # the train split is large enough for 10-shot of every category
            assert min(available.values()) >= max(SHOTS)
        for shots in SHOTS:
            for seed in SEEDS:
                chosen = json.loads(task.fewshot_file(split, shots, seed, data_root).read_text())
                ids = {im["id"] for im in chosen["images"]}
                for category in task.category_ids:
                    images = {a["image_id"] for a in chosen["annotations"] if a["category_id"] == category}
                    assert images <= ids and len(images) >= min(shots, available[category])


def test_generation_is_deterministic_and_matches_the_cached_copy(data_root, tmp_path):
    for name, recipe in demo_recipes().items():
        again = _files(write_demo_task(recipe, tmp_path / name))
        cached = _files(data_root / name)
        marker = cached.pop(export_writer.MARKER_NAME)
        assert json.loads(marker)["recipe"] == name
        assert again.keys() == cached.keys() and all(again[k] == cached[k] for k in cached)  # images and JSON
        json_names = [k for k in again if k.endswith(".json")]
        assert len(json_names) == 3 * 2 + 2 * len(SHOTS) * len(SEEDS)
    other = dataclasses.replace(demo_recipes()["demo_pantry"], seed=1)
    assert _files(write_demo_task(other, tmp_path / "other"))["test/annotations_without_background.json"] != \
        _files(data_root / "demo_pantry")["test/annotations_without_background.json"]


def _corpus_words(tmp_path: Path) -> set[str]:
    """Every word the pre-training corpus's captions can use: category names, caption vocabulary, and the words
    of the captions of a small corpus written by the corpus generator itself (templates included)."""
    from odinw_bench.data.captions import PLACE_WORDS, SIZE_WORDS
    from odinw_bench.data.drawing import COLOUR_WORDS
    from odinw_bench.data.grounding_corpus import write_corpus
    from odinw_bench.data.vocabulary import CATEGORIES

    words = {w for name in CATEGORIES for w in name.split()} | set(SIZE_WORDS) | set(PLACE_WORDS)
    words |= set(COLOUR_WORDS)
    corpus = json.loads((write_corpus(tmp_path / "corpus", n_images=30, seed=0) / "corpus.json").read_text())
    words |= {w.strip(".,").lower() for caption in corpus["captions"] for w in caption["text"].split()}
    return words


def test_renamed_and_new_names_are_not_corpus_words(tmp_path):
    from odinw_bench.data.tokenizer import get_tokenizer
    from odinw_bench.data.vocabulary import CATEGORIES

    recipes = demo_recipes()
    renamed = [c.name for c in recipes["demo_pantry"].categories if c.name != c.look]
    new = [c.name for c in recipes["demo_gadgets"].categories]
    assert renamed == ["solanum", "ovum"] and len(new) == 4
    assert all(c.look not in CATEGORIES for c in recipes["demo_gadgets"].categories)  # new looks too
    words = _corpus_words(tmp_path)
    assert {"tomato", "left", "small", "the"} <= words  # the word list is the real one
    tokenizer = get_tokenizer()
    corpus_pieces = {piece for word in words for piece in tokenizer.tokenize(word)}
    for name in renamed + new:
        assert name not in words, name
        assert not set(tokenizer.tokenize(name)) & corpus_pieces, name  # not even a word piece was trained


def test_pantry_odinw35_variant_restores_the_corpus_names():
    from odinw_bench.data.vocabulary import CATEGORIES

    pantry = load_task("demo_pantry")
    looks = [c.look for c in demo_recipes()["demo_pantry"].categories]
    assert pantry.prompt_for("odinw_35").names == looks
    assert all(name in CATEGORIES for name in looks)
    own = [n for n in pantry.category_names if n in CATEGORIES]
    assert len(own) == 2 and len(pantry.category_names) == 4  # zero-shot can find half of them
    assert resolve_tasks("demo_pantry")[0][1] is None  # the default prompt unless a suite asks for the variant


def test_each_task_shifts_the_domain_it_says(data_root):
    """Playroom: smaller objects on new floors; Sketches: grey; Gadgets and Pantry: the corpus's scenes."""
    import numpy as np

    from odinw_bench.data.images import load_rgb

    recipes = demo_recipes()
    assert not {"corpus"} & set(recipes["demo_playroom"].backgrounds)
    playroom = load_task_split(load_task("demo_playroom"), "train", data_root)
    long_sides = [max(a["bbox"][2:]) / 128 for anns in playroom.annotations.values() for a in anns]
    assert 0.09 <= min(long_sides) and max(long_sides) <= 0.31  # the corpus draws 0.12 - 0.5
    chroma = {}
    for name in ("demo_sketches", "demo_gadgets"):
        split = load_task_split(load_task(name), "test", data_root)
        pixels = np.stack([np.asarray(load_rgb(im.path), dtype=np.int16) for im in split.images])
        chroma[name] = float((pixels.max(axis=-1) - pixels.min(axis=-1)).mean())
    assert chroma["demo_sketches"] < 20 < chroma["demo_gadgets"]


def test_fruit_demo_annotation_files_are_unchanged(tmp_path):
    """Golden digest of the fruit ``demo`` export's JSON files (annotations and few-shot files), computed with the
    generator as it was before the export writer was shared with the demo suite (commit a62cd7f:
    ``write_synthetic_export(tmp)`` with default arguments, sha256 over sorted ``relative path NUL sha256 LF`` of
    every ``*.json``). Image bytes are not hashed: they depend on the JPEG encoder's version."""
    from odinw_bench.data.synthetic import write_synthetic_export

    out = write_synthetic_export(tmp_path / "demo")
    digest = hashlib.sha256()
    for path in sorted(out.rglob("*.json")):
        digest.update(f"{path.relative_to(out)}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    assert digest.hexdigest() == "d57818477e8665e7f1ef92aaeb2349e6884175ddee3bff1cae2593bcc8fe0e9f"


def test_ensure_regenerates_only_when_recipe_or_version_changes(tmp_path, monkeypatch):
    recipe = dataclasses.replace(demo_recipes()["demo_gadgets"], counts=(6, 4, 4))  # small: generated 3 times
    target = ensure_demo_task(recipe, tmp_path / "demo_gadgets")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_gadgets"]  # no temporary folder left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the data is current")

    monkeypatch.setattr(demo_suite, "write_demo_task", fail)
    assert ensure_demo_task(recipe, target) == target
    monkeypatch.undo()
    before = (target / "train" / "annotations_without_background.json").read_bytes()
    ensure_demo_task(dataclasses.replace(recipe, seed=7), target)
    assert (target / "train" / "annotations_without_background.json").read_bytes() != before
    monkeypatch.setattr(demo_suite, "DEMO_SUITE_VERSION", demo_suite.DEMO_SUITE_VERSION + 1)
    (target / "stale.txt").write_text("from an older version")
    ensure_demo_task(recipe, target)
    assert not (target / "stale.txt").exists()
    assert json.loads((target / export_writer.MARKER_NAME).read_text())["generator_version"] == \
        demo_suite.DEMO_SUITE_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_gadgets"]


def _custom_tasks(tmp_path: Path, monkeypatch, **changes) -> Path:
    import yaml

    folder = tmp_path / "tasks"
    folder.mkdir()
    data = yaml.safe_load((registry.tasks_dir() / "demo_gadgets.yaml").read_text())
    (folder / "demo_gadgets.yaml").write_text(yaml.safe_dump({**data, **changes}))
    monkeypatch.setenv(registry.TASKS_DIR_ENV, str(folder))
    return folder / "demo_gadgets.yaml"


def test_unknown_recipe_is_one_error_naming_the_yaml_and_the_field(tmp_path, monkeypatch, capsys):
    path = _custom_tasks(tmp_path, monkeypatch, synthetic_recipe="demo_garage")
    task = load_task("demo_gadgets")
    with pytest.raises(UserError) as info:
        prepare_data_root(task, tmp_path / "data")
    assert info.value.path == str(path) and info.value.field == "synthetic_recipe"
    assert "'demo_garage'" in info.value.message and "demo_gadgets" in info.value.message
    assert not (tmp_path / "data" / "demo_gadgets").exists()
    assert main(["validate", "--task", "demo_gadgets", "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "synthetic_recipe" in err[0]


def test_a_recipe_on_a_non_synthetic_task_is_rejected(tmp_path, monkeypatch):
    path = _custom_tasks(tmp_path, monkeypatch, synthetic=False)
    with pytest.raises(UserError) as info:
        load_task("demo_gadgets")
    assert info.value.path == str(path) and info.value.field == "synthetic_recipe"


def test_tasks_command_lists_the_suite(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "demo_suite: 4 tasks" in out
    for name in SUITE:
        assert f"\n{name} " in out
