"""Reading COCO/Roboflow annotation files (odinw_bench.data.coco) and images (odinw_bench.data.images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odinw_bench.data.coco import read_json, read_split
from odinw_bench.data.images import CorruptImageCounter, CorruptImageError, load_rgb
from odinw_bench.data.task_files import load_task_split
from odinw_bench.errors import UserError
from odinw_bench.tasks.spec import CategorySpec, SplitSpec, TaskSpec


def _cats(*pairs):
    return [{"id": i, "name": n, "supercategory": "things"} for i, n in pairs]


def _ann(ann_id, image_id, category_id, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _coco(images=None, annotations=None, categories=None):
    images = images if images is not None else [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}]
    return {"images": images, "annotations": annotations or [], "categories": categories or _cats((1, "cat"))}


def _task(root: str = "t", cats=((1, "cat"),), synthetic: bool = False) -> TaskSpec:
    return TaskSpec(
        name="tiny",
        display_name="Tiny",
        root=root,
        categories=[CategorySpec(id=i, name=n) for i, n in cats],
        splits={"train": SplitSpec(ann_file="train/annotations_without_background.json", img_dir="train")},
        synthetic=synthetic,
    )


# ----------------------------------------------------------------------------------------------- read_split


def test_clip_and_degenerate_rule_on_inline_json(tmp_path):
    anns = [
        _ann(10, 1, 1, [-5, 10, 30, 20], area=600),  # overflows left: clipped to x 0..25
        _ann(12, 1, 1, [90, 40, 20, 20]),  # overflows right and bottom: clipped to 10 x 10
        _ann(17, 1, 1, [10, 10, 1, 20]),  # w == 1: empty for GLIP, dropped
        _ann(18, 1, 1, [10, 10, 1.5, 20]),  # w > 1: kept
        _ann(20, 1, 1, [99.5, 10, 10, 10]),  # only 0.5 px left inside: degenerate after clipping
        _ann(21, 1, 1, [150, 10, 10, 10]),  # entirely outside
    ]
    path = _write(tmp_path / "a.json", _coco(annotations=anns))
    split = read_split(path, tmp_path)
    kept = {a["id"]: a for a in split.annotations[1]}
    assert sorted(kept) == [10, 12, 18]
    assert kept[10]["bbox"] == [0, 10, 25, 20] and kept[10]["area"] == 500
    assert kept[12]["bbox"] == [90, 40, 10, 10] and kept[12]["area"] == 100
    assert kept[18]["bbox"] == [10, 10, 1.5, 20]
    assert split.stats["n_clipped"] == 2
    assert split.stats["n_degenerate_dropped"] == 3
    assert split.stats["n_boxes"] == 3 and split.stats["n_boxes_in_file"] == 6
    # The file's view keeps every box untouched: it is GLIP's evaluation ground truth.
    assert [a["bbox"] for a in split.original_annotations[1]] == [a["bbox"] for a in anns]


def test_images_sorted_kept_without_boxes_and_paths_with_spaces(tmp_path):
    images = [
        {"id": 7, "file_name": "b c.jpg", "width": 10, "height": 10},
        {"id": 2, "file_name": "a.jpg", "width": 10, "height": 10},
        {"id": 5, "file_name": "sub/d e.jpg", "width": 10, "height": 10},
    ]
    path = _write(tmp_path / "a.json", _coco(images, [_ann(1, 7, 1, [1, 1, 5, 5])]))
    split = read_split(path, tmp_path / "imgs")
    assert split.image_ids == [2, 5, 7]
    assert split.image_index[7].path == tmp_path / "imgs" / "b c.jpg"
    assert split.annotations[2] == [] and split.annotations[5] == []
    assert split.stats["n_images"] == 3 and split.stats["n_images_without_boxes"] == 2


def test_non_contiguous_category_ids_follow_task_order_and_names(tmp_path):
    cats = _cats((7, "file-seven"), (3, "file-three"))
    path = _write(tmp_path / "a.json", _coco(categories=cats, annotations=[_ann(1, 1, 7, [1, 1, 5, 5])]))
    split = read_split(path, tmp_path, [CategorySpec(id=3, name="three"), CategorySpec(id=7, name="seven")])
    assert [c["id"] for c in split.categories] == [3, 7]
    assert split.category_names == ["three", "seven"]  # GLIP's OVERRIDE_CATEGORY replaces the names
    assert split.categories[0]["supercategory"] == "things"
    assert read_split(path, tmp_path).category_names == ["file-seven", "file-three"]  # file order without a task


def test_category_mismatch_lists_missing_and_extra_ids(tmp_path):
    path = _write(tmp_path / "a.json", _coco(categories=_cats((1, "a"), (2, "b"), (5, "e"))))
    with pytest.raises(UserError) as err:
        read_split(path, tmp_path, [CategorySpec(id=1, name="a"), CategorySpec(id=3, name="c")])
    message = str(err.value)
    assert "missing from the file [3]" in message and "not in the task [2, 5]" in message
    assert str(path) in message and err.value.field == "categories"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["annotations"].append(_ann(9, 99, 1, [0, 0, 5, 5])), "annotations[1].image_id"),
        (lambda d: d["annotations"].append(_ann(9, 1, 42, [0, 0, 5, 5])), "annotations[1].category_id"),
        (lambda d: d["annotations"].append(_ann(9, 1, 1, [0, 0, 5])), "annotations[1].bbox"),
        (lambda d: d["annotations"].append(_ann(3, 1, 1, [0, 0, 5, 5])), "annotations[1].id"),
        (lambda d: d["images"].append({"id": 1, "file_name": "x.jpg", "width": 5, "height": 5}), "images[1].id"),
        (lambda d: d["images"][0].pop("width"), "images[0].width"),
        (lambda d: d.pop("categories"), "categories"),
    ],
)
def test_bad_content_names_file_and_field(tmp_path, change, field):
    data = _coco(annotations=[_ann(3, 1, 1, [0, 0, 5, 5])])
    change(data)
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(UserError) as err:
        read_split(path, tmp_path)
    assert err.value.field == field and err.value.path == str(path)


def test_malformed_json_reports_line_and_column(tmp_path):
    path = _write(tmp_path / "broken.json", '{\n  "images": [\n    {"id": 1,, "file_name": "a.jpg"}\n  ]\n}')
    # Line 3 is `    {"id": 1,, ...`: 4 spaces, then `{"id": 1,` fills columns 5-13, the stray comma is column 14.
    with pytest.raises(UserError, match=r"line 3, column 14") as err:
        read_json(path)
    assert err.value.path == str(path)
    with pytest.raises(UserError, match="file not found"):
        read_json(tmp_path / "absent.json")
    with pytest.raises(UserError, match="JSON object"):
        read_json(_write(tmp_path / "list.json", [1, 2]))


def test_roboflow_fallback_drops_placeholder_category(tmp_path):
    cats = [{"id": 0, "name": "animals", "supercategory": "none"}, *_cats((1, "cat"), (2, "dog"))]
    anns = [_ann(1, 1, 1, [0, 0, 5, 5]), _ann(2, 1, 0, [0, 0, 5, 5]), _ann(3, 1, 2, [1, 1, 5, 5])]
    _write(tmp_path / "train" / "_annotations.coco.json", _coco(annotations=anns, categories=cats))
    split = read_split(tmp_path / "train" / "annotations_without_background.json", tmp_path / "train")
    assert split.ann_file.name == "_annotations.coco.json"
    assert [c["id"] for c in split.categories] == [1, 2]
    assert split.stats["n_placeholder_dropped"] == 1 and split.stats["n_boxes"] == 2
    # The task's ids are checked against the file minus the placeholder.
    task_cats = [CategorySpec(id=1, name="cat"), CategorySpec(id=2, name="dog")]
    assert read_split(tmp_path / "train" / "annotations_without_background.json", tmp_path, task_cats)


def test_clean_file_is_preferred_over_roboflow_file(tmp_path):
    cats = [{"id": 0, "name": "animals", "supercategory": "none"}, *_cats((1, "cat"))]
    _write(tmp_path / "_annotations.coco.json", _coco(categories=cats))
    clean = _write(tmp_path / "annotations_without_background.json", _coco())
    split = read_split(clean, tmp_path)
    assert split.ann_file == clean and [c["id"] for c in split.categories] == [1]


def test_to_coco_dict_loads_in_pycocotools_and_subset_recounts(tmp_path):
    from pycocotools.coco import COCO

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 40} for i in (1, 2, 3)]
    anns = [_ann(5, 1, 1, [30, 30, 20, 20]), _ann(6, 2, 1, [0, 0, 1, 9]), _ann(8, 3, 1, [1, 1, 9, 9])]
    split = read_split(_write(tmp_path / "a.json", _coco(images, anns)), tmp_path)
    gt = COCO()
    gt.dataset = split.to_coco_dict()
    gt.createIndex()
    assert sorted(gt.getImgIds()) == [1, 2, 3] and len(gt.getAnnIds()) == 3
    assert gt.loadAnns(5)[0]["bbox"] == [30, 30, 20, 20]  # the file's box
    cleaned = split.to_coco_dict(cleaned=True)
    assert [a["bbox"] for a in cleaned["annotations"]] == [[30, 30, 10, 10], [1, 1, 9, 9]]
    cleaned["annotations"][0]["bbox"][0] = -1  # copies: the split itself is untouched
    assert split.annotations[1][0]["bbox"][0] == 30
    sub = split.subset([2, 3])
    assert sub.image_ids == [2, 3]
    assert (sub.stats["n_boxes"], sub.stats["n_degenerate_dropped"], sub.stats["n_clipped"]) == (1, 1, 0)
    assert sub.stats["n_images_without_boxes"] == 1
    with pytest.raises(ValueError, match="99"):
        split.subset([99])


# ------------------------------------------------------------------------------------------ load_task_split


def test_load_task_split_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_task_split(_task(), "train", tmp_path / "nowhere")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'nowhere'}: data root does not exist") and "split 'train'" in message
    # A custom task without a `download` zip is told where its files go, never to download it.
    assert "download" not in message.replace("`download` zip", "") and str(tmp_path / "nowhere" / "t") in message
    with pytest.raises(UserError, match="task folder not found") as err:
        load_task_split(_task(), "train", tmp_path)  # data root exists, task folder does not
    assert str(err.value).startswith(str(tmp_path / "t"))
    with pytest.raises(UserError, match="no split 'test'"):
        load_task_split(_task(), "test", tmp_path)


def test_load_task_split_reads_with_task_categories(tmp_path):
    _write(tmp_path / "t" / "train" / "annotations_without_background.json", _coco(categories=_cats((1, "kitty"))))
    split = load_task_split(_task(), "train", tmp_path)
    assert split.category_names == ["cat"] and split.img_dir == tmp_path / "t" / "train"


def test_load_task_split_generates_synthetic_task(tmp_path):
    cats = ((1, "apple"), (2, "banana"), (3, "cherry"), (4, "lemon"))
    split = load_task_split(_task(root="demo", cats=cats, synthetic=True), "train", tmp_path)
    assert split.stats["n_images"] == 24 and (tmp_path / "demo" / "train").is_dir()


# ------------------------------------------------------------------------------------------------- images


def test_load_rgb_converts_modes(tmp_path):
    import numpy as np
    from PIL import Image

    Image.new("L", (6, 4), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((4, 6), 257 * 40, dtype=np.uint16)).save(tmp_path / "deep40.png")
    expected = {"gray": (77, 77, 77), "rgba": (10, 20, 30), "palette": (200, 100, 50), "deep": (255, 255, 255)}
    expected["deep40"] = (40, 40, 40)  # scaled to 8 bits, not clipped at 255
    for name, pixel in expected.items():
        image = load_rgb(tmp_path / f"{name}.png")
        assert image.mode == "RGB" and image.size == (6, 4), name
        assert image.getpixel((0, 0)) == pixel, name


def _exif_jpeg(path: Path, orientation: int = 6) -> None:
    from PIL import Image

    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def test_load_rgb_applies_exif_orientation(tmp_path):
    _exif_jpeg(tmp_path / "rot.jpg")
    image = load_rgb(tmp_path / "rot.jpg")
    assert image.size == (20, 40)  # displayed: width and height swapped
    r, g, b = image.getpixel((10, 3))  # orientation 6 turns the stored left edge to the top
    assert r > 200 and b < 60


def test_load_rgb_keeps_stored_pixels_when_annotations_use_them(tmp_path):
    _exif_jpeg(tmp_path / "rot.jpg")
    assert load_rgb(tmp_path / "rot.jpg", expected_size=(40, 20)).size == (40, 20)
    assert load_rgb(tmp_path / "rot.jpg", expected_size=(20, 40)).size == (20, 40)


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken image.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(CorruptImageError) as err:
        load_rgb(bad)
    assert isinstance(err.value, UserError) and str(bad) in str(err.value)
    with pytest.raises(CorruptImageError, match="not found"):
        load_rgb(tmp_path / "absent.jpg")


def test_truncated_image_is_corrupt(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(CorruptImageError, match="truncated.png"):
        load_rgb(truncated)


def test_counter_skips_and_counts(tmp_path, caplog):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    counter = CorruptImageCounter()
    assert counter.load(tmp_path / "ok.png").size == (4, 4)
    assert counter.load(tmp_path / "bad.png") is None
    assert counter.load(tmp_path / "gone.png") is None
    assert counter.n_skipped == 2 and counter.skipped == [str(tmp_path / "bad.png"), str(tmp_path / "gone.png")]
    assert "bad.png" in caplog.text
