"""The synthetic ODinW-style export (odinw_bench.data.synthetic)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from odinw_bench.data import export_writer, synthetic
from odinw_bench.data.coco import read_split
from odinw_bench.data.images import load_rgb
from odinw_bench.data.sampling import (
    DEFAULT_SEEDS,
    ShortfallWarning,
    glip_kshot_ids,
    sample_kshot,
)
from odinw_bench.data.synthetic import (
    DEMO_CATEGORIES,
    QUIRK_INDEX,
    ensure_demo_data,
    write_synthetic_export,
)
from odinw_bench.tasks.spec import CategorySpec, SplitSpec, TaskSpec

SHOTS = (1, 3, 5, 10)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return write_synthetic_export(tmp_path_factory.mktemp("syn") / "export")


def _split(export: Path, folder: str, name: str = "annotations_without_background.json"):
    return read_split(export / folder / name, export / folder)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic(export, tmp_path):
    again = _files(write_synthetic_export(tmp_path / "again"))
    first = _files(export)
    assert again.keys() == first.keys()
    json_names = [name for name in first if name.endswith(".json")]
    assert len(json_names) == 3 * 2 + 2 * len(SHOTS) * len(DEFAULT_SEEDS)
    assert all(again[name] == first[name] for name in first)  # JSON and image bytes alike
    other_seed = _files(write_synthetic_export(tmp_path / "seed1", seed=1))
    assert other_seed["train/annotations_without_background.json"] != first["train/annotations_without_background.json"]


def test_layout_matches_odinw(export):
    for folder in ("train", "valid", "test"):
        raw = json.loads((export / folder / "_annotations.coco.json").read_text())
        clean = json.loads((export / folder / "annotations_without_background.json").read_text())
        assert raw["categories"][0] == {"id": 0, "name": "fruit", "supercategory": "none"}
        assert clean["categories"] == list(DEMO_CATEGORIES)
        assert raw["images"] == clean["images"] and raw["annotations"] == clean["annotations"]
        assert all((export / folder / im["file_name"]).is_file() for im in clean["images"])
    for folder, name in (("train", "train"), ("valid", "val")):
        for k in SHOTS:
            for s in DEFAULT_SEEDS:
                assert (export / folder / f"fewshot_{name}_shot{k}_seed{s}.json").is_file()
    assert not list((export / "test").glob("fewshot_*"))


def test_quirks_are_counted_by_read_split(export):
    train = _split(export, "train")
    assert train.stats["n_images"] == 24
    assert train.stats["n_clipped"] == 1
    assert train.stats["n_degenerate_dropped"] == 1
    assert train.stats["n_images_without_boxes"] == 1
    assert train.annotations[QUIRK_INDEX["no_boxes"]] == []
    assert " " in train.image_index[QUIRK_INDEX["spaces"]].file_name
    ann_ids = sorted(a["id"] for anns in train.original_annotations.values() for a in anns)
    assert len(set(ann_ids)) == len(ann_ids) and ann_ids != list(range(ann_ids[0], ann_ids[0] + len(ann_ids)))
    for folder in ("valid", "test"):  # the quirks live in train only
        stats = _split(export, folder).stats
        assert stats["n_clipped"] == stats["n_degenerate_dropped"] == stats["n_images_without_boxes"] == 0
    roboflow = _split(export, "train", "_annotations.coco.json")  # the fallback reads the same data
    assert roboflow.annotations == train.annotations and roboflow.categories == train.categories


def test_quirk_image_files(export):
    from PIL import Image

    train = _split(export, "train")
    path = {q: train.image_index[i].path for q, i in QUIRK_INDEX.items()}
    with Image.open(path["grayscale"]) as im:
        assert im.mode == "L"
    with Image.open(path["rgba"]) as im:
        assert im.mode == "RGBA"
    with Image.open(path["exif"]) as im:
        assert im.format == "JPEG" and im.getexif().get(0x0112) == synthetic.EXIF_ORIENTATION
        assert im.size == (128, 160)  # stored turned
    shown = load_rgb(path["exif"])
    assert shown.mode == "RGB" and shown.size == (160, 128)  # EXIF applied: width and height swapped back
    for q in ("grayscale", "rgba", "spaces"):
        assert load_rgb(path[q]).mode == "RGB"


def _looks_like(name: str, rgb: tuple[int, int, int]) -> bool:
    r, g, b = rgb
    return {
        "apple": r > 150 and g < 90 and b < 90,
        "banana": r > 190 and g > 160 and b < 120,
        "cherry": 60 < r < 170 and g < 60 and b < 80,
        "lemon": 130 < r < 230 and g > 180 and b < 120,
    }[name]


def test_objects_have_their_category_look(export):
    """The box's object is visible with its category colour (also checks EXIF-rotated boxes line up)."""
    checked = 0
    for folder in ("train", "valid", "test"):
        split = _split(export, folder)
        names = {c["id"]: c["name"] for c in split.categories}
        for image in split.images:
            if folder == "train" and image.id == QUIRK_INDEX["grayscale"]:
                continue
            pixels = load_rgb(image.path, expected_size=(image.width, image.height))
            boxes = split.annotations[image.id]
            for ann in boxes:
                x, y, w, h = ann["bbox"]
                # Cherry: the centre of the first disc; others: the box centre (skip centres another box covers).
                cx, cy = (x + h / 2, y + h / 2) if names[ann["category_id"]] == "cherry" else (x + w / 2, y + h / 2)
                if any(o is not ann and o["bbox"][0] <= cx <= o["bbox"][0] + o["bbox"][2]
                       and o["bbox"][1] <= cy <= o["bbox"][1] + o["bbox"][3] for o in boxes):  # fmt: skip
                    continue
                assert _looks_like(names[ann["category_id"]], pixels.getpixel((int(cx), int(cy)))), (image, ann)
                checked += 1
    assert checked > 40


def test_prepared_files_follow_the_glip_rule(export):
    task = TaskSpec(
        name="demo",
        display_name="Demo",
        root="export",
        categories=[CategorySpec(**c) for c in DEMO_CATEGORIES],
        splits={"train": SplitSpec("train/annotations_without_background.json", "train")},
        fewshot={"train": "train/fewshot_train_shot{shots}_seed{seed}.json",
                 "val": "valid/fewshot_val_shot{shots}_seed{seed}.json"},  # fmt: skip
        synthetic=True,
    )
    for folder, name in (("train", "train"), ("valid", "val")):
        split = _split(export, folder)
        for k in SHOTS:
            for s in DEFAULT_SEEDS:
                prepared = json.loads((export / folder / f"fewshot_{name}_shot{k}_seed{s}.json").read_text())
                ids = sorted(glip_kshot_ids(split, k, s))
                assert sorted(im["id"] for im in prepared["images"]) == ids
                assert {a["image_id"] for a in prepared["annotations"]} <= set(ids)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ShortfallWarning)  # valid has 8 images: 10-shot runs short
                    read = sample_kshot(split, k, s, "prepared", task=task, data_root=export.parent, split_name=name)
                    rule = sample_kshot(split, k, s, "glip", split_name=name)
                assert read.image_ids == rule.image_ids and read.ids_hash == rule.ids_hash


def test_no_quirks(tmp_path):
    out = write_synthetic_export(tmp_path / "plain", n_train=6, n_valid=2, n_test=2, quirks=False)
    split = _split(out, "train")
    assert split.stats["n_images"] == 6 and split.stats["n_boxes"] >= 6
    assert split.stats["n_clipped"] == split.stats["n_degenerate_dropped"] == split.stats["n_images_without_boxes"] == 0
    assert not list((out / "train").glob("*.png"))
    ann_ids = sorted(a["id"] for anns in split.annotations.values() for a in anns)
    assert ann_ids == list(range(1, len(ann_ids) + 1))  # 1-based: pycocotools never matches a box with id 0
    with pytest.raises(ValueError, match="n_train"):
        write_synthetic_export(tmp_path / "small", n_train=3)


def test_ensure_demo_data_writes_once_and_regenerates_on_version_change(tmp_path, monkeypatch):
    demo = ensure_demo_data(tmp_path / "root")
    assert demo == tmp_path / "root" / "demo"
    marker = json.loads((demo / export_writer.MARKER_NAME).read_text())
    assert marker["generator_version"] == synthetic.GENERATOR_VERSION
    assert (demo / "test" / "annotations_without_background.json").is_file()
    assert not [p for p in (tmp_path / "root").iterdir() if p.name != "demo"]  # no temp folders left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the data is current")

    monkeypatch.setattr(synthetic, "write_synthetic_export", fail)
    assert ensure_demo_data(tmp_path / "root") == demo
    monkeypatch.undo()

    (demo / "train" / "stale.txt").write_text("from an older version")
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    ensure_demo_data(tmp_path / "root")
    assert json.loads((demo / export_writer.MARKER_NAME).read_text())["generator_version"] == synthetic.GENERATOR_VERSION
    assert not (demo / "train" / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["demo"]


def test_ensure_demo_data_concurrent_callers_share_one_copy(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(ensure_demo_data, [tmp_path, tmp_path]))
    assert results == [tmp_path / "demo"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary or stale folders left
    assert read_split(tmp_path / "demo/train/annotations_without_background.json", tmp_path / "demo/train")
