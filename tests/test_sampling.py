"""k-shot samplers (odinw_bench.data.sampling)."""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections import Counter
from pathlib import Path

import pytest

from odinw_bench.data.coco import read_split
from odinw_bench.data.sampling import (
    DEFAULT_SEEDS,
    ShortfallWarning,
    glip_kshot_ids,
    ids_hash,
    sample_kshot,
    valid_image_ids,
)
from odinw_bench.errors import UserError
from odinw_bench.tasks.spec import CategorySpec, SplitSpec, TaskSpec


def _random_coco(rng: random.Random, n_images: int = 60, n_cats: int = 4, degenerate: bool = True) -> dict:
    """Random COCO data: co-occurring categories, images without boxes, images with only degenerate boxes."""
    images, anns = [], []
    image_ids = rng.sample(range(1000), n_images)  # unsorted, non-contiguous ids
    for image_id in image_ids:
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 64, "height": 64})
        kind = rng.random()
        n_boxes = 0 if kind < 0.1 else rng.randint(1, 4)
        for _ in range(n_boxes):
            w = rng.choice([0.5, 1, 8, 12]) if degenerate and kind < 0.25 else rng.randint(2, 20)
            # Skewed category frequencies, so that some categories run short at larger k.
            cat = min(n_cats, 1 + int(rng.expovariate(1.0)))
            bbox = [1, 2, w, rng.randint(2, 9)]
            anns.append({"id": len(anns) * 3 + 1, "image_id": image_id, "category_id": cat, "bbox": bbox})
    cats = [{"id": i, "name": f"c{i}", "supercategory": "x"} for i in range(1, n_cats + 1)]
    return {"images": images, "annotations": anns, "categories": cats}


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _glip_reference(ann_file: Path, shots: int, seed: int) -> list[int]:
    """GLIP's COCODataset k-shot code, re-stated over pycocotools exactly as it is written there."""
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))

    def has_valid_annotation(anno):
        return len(anno) > 0 and not all(any(o <= 1 for o in obj["bbox"][2:]) for obj in anno)

    ids = [i for i in sorted(coco.imgs) if has_valid_annotation(coco.loadAnns(coco.getAnnIds(imgIds=i, iscrowd=None)))]
    if seed != 0:
        random.Random(seed).shuffle(ids)
    cats_freq = [shots] * max(coco.cats)
    chosen = []
    for img_id in ids:
        cat = {a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))}
        if sum(cats_freq[c - 1] > 0 for c in cat):
            chosen.append(img_id)
            for c in cat:
                cats_freq[c - 1] -= 1
    return chosen


@pytest.fixture(scope="module")
def random_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("random")
    out = []
    for data_seed in range(4):
        path = _write(root / f"d{data_seed}.json", _random_coco(random.Random(data_seed)))
        out.append((path, read_split(path, root)))
    return out


@pytest.mark.parametrize("shots", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [0, 3, 30, 300])
def test_glip_rule_matches_reference(random_splits, shots, seed, capsys):
    for path, split in random_splits:
        expected = _glip_reference(path, shots, seed)
        assert glip_kshot_ids(split, shots, seed) == expected
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortfallWarning)
            assert sample_kshot(split, shots, seed).image_ids == sorted(expected)


def _image_cats(split):
    return {i: {a["category_id"] for a in anns} for i, anns in split.original_annotations.items()}


@pytest.mark.parametrize("shots", [1, 3])
def test_greedy_semantics(random_splits, shots):
    """Walking the shuffled order: an image is chosen iff some category of it still had fewer than k images."""
    for _, split in random_splits:
        cats = _image_cats(split)
        order = valid_image_ids(split)
        random.Random(30).shuffle(order)
        chosen = set(glip_kshot_ids(split, shots, 30))
        seen: Counter = Counter()
        for image_id in order:
            needed = any(seen[c] < shots for c in cats[image_id])
            assert (image_id in chosen) == needed
            if needed:
                seen.update(cats[image_id])


def test_images_without_valid_boxes_never_chosen(random_splits):
    for _, split in random_splits:
        invalid = {
            i for i, anns in split.original_annotations.items() if not any(min(a["bbox"][2:]) > 1 for a in anns)
        }
        assert invalid, "the random data must contain images without a valid box"
        for shots in (1, 5, 100, "all"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ShortfallWarning)
                assert not invalid & set(sample_kshot(split, shots, 3).image_ids)


@pytest.mark.parametrize("shots", [1, 3, 5, 10])
def test_every_category_covered(tmp_path, shots):
    split = read_split(_write(tmp_path / "a.json", _random_coco(random.Random(7), degenerate=False)), tmp_path)
    available = Counter(c for i in valid_image_ids(split) for c in {a["category_id"] for a in split.annotations[i]})
    for seed in DEFAULT_SEEDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortfallWarning)
            sample = sample_kshot(split, shots, seed)
        for cat in split.categories:
            assert sample.per_category_images[cat["name"]] >= min(shots, available[cat["id"]])
        assert all(sample.per_category_images[name] == available[int(name[1:])] for name in sample.shortfall)


def test_seeds_reproducible_and_distinct(random_splits):
    _, split = random_splits[0]
    samples = {seed: sample_kshot(split, 1, seed) for seed in DEFAULT_SEEDS}
    assert sample_kshot(split, 1, 3) == samples[3]
    assert len({s.ids_hash for s in samples.values()}) == 3
    assert len({tuple(s.image_ids) for s in samples.values()}) == 3


def test_seed_zero_keeps_sorted_order(random_splits):
    """GLIP only shuffles for a non-zero seed; seed 0 is the sorted order CocoGrounding uses."""
    _, split = random_splits[1]
    chosen = glip_kshot_ids(split, 2, 0)
    assert chosen == sorted(chosen)
    assert chosen[0] == valid_image_ids(split)[0]


def test_zero_and_all_shots(random_splits):
    _, split = random_splits[2]
    zero = sample_kshot(split, 0, 3)
    assert zero.image_ids == [] and zero.shortfall == {} and zero.ids_hash == ids_hash([])
    everything = sample_kshot(split, "all", 3)
    assert everything.image_ids == valid_image_ids(split)
    assert sample_kshot(split, "ALL", 30).image_ids == everything.image_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortfallWarning)
        assert sample_kshot(split, "3", 3).image_ids == sample_kshot(split, 3, 3).image_ids


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shots": -1}, "shots"),
        ({"shots": "few"}, "shots"),
        ({"shots": True}, "shots"),
        ({"seed": -3}, "seed"),
        ({"sampler": "random"}, "sampler"),
        ({"sampler": "prepared"}, "sampler"),  # without task and data root
    ],
)
def test_bad_arguments(random_splits, kwargs, field):
    _, split = random_splits[0]
    args = {"shots": 1, "seed": 3, "sampler": "glip", **kwargs}
    with pytest.raises(UserError) as err:
        sample_kshot(split, args["shots"], args["seed"], args["sampler"])
    assert err.value.field == field
    if kwargs.get("sampler") == "random":
        assert "glip, prepared" in str(err.value)


def test_shortfall_recorded_with_warning(tmp_path):
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 20} for i in range(4)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1 if i else 2, "bbox": [0, 0, 5, 5]} for i in range(4)
        ],
        "categories": [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}],
    }
    split = read_split(_write(tmp_path / "a.json", data), tmp_path)
    with pytest.warns(ShortfallWarning, match=r"rare \(1\)"):
        sample = sample_kshot(split, 3, 30)
    assert sample.shortfall == {"rare": 1}
    assert sample.per_category_images == {"common": 3, "rare": 1}
    json.dumps(sample.to_dict())  # records carry it


def test_ids_hash_is_stable():
    # sha256 of the text "1,2,3" (independently: hashlib.sha256(b"1,2,3")); results files depend on this format.
    assert ids_hash([3, 1, 2]) == "8a6ae15122001229" == hashlib.sha256(b"1,2,3").hexdigest()[:16]
    assert ids_hash([10, 2]) == hashlib.sha256(b"2,10").hexdigest()[:16]  # numeric, not text, order
    assert ids_hash([]) == hashlib.sha256(b"").hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ prepared


def _prepared_task(tmp_path: Path) -> tuple[TaskSpec, Path]:
    root = tmp_path / "data"
    full = _random_coco(random.Random(3), n_images=20, n_cats=2)
    _write(root / "t" / "train" / "annotations_without_background.json", full)
    _write(root / "t" / "valid" / "annotations_without_background.json", full)
    task = TaskSpec(
        name="tiny",
        display_name="Tiny",
        root="t",
        categories=[CategorySpec(id=1, name="c1"), CategorySpec(id=2, name="c2")],
        splits={
            "train": SplitSpec(ann_file="train/annotations_without_background.json", img_dir="train"),
            "val": SplitSpec(ann_file="valid/annotations_without_background.json", img_dir="valid"),
        },
        fewshot={
            "train": "train/fewshot_train_shot{shots}_seed{seed}.json",
            "val": "valid/fewshot_val_shot{shots}_seed{seed}.json",
        },
    )
    return task, root


def _fewshot_file(full: dict, ids: list[int]) -> dict:
    return {
        "images": [im for im in full["images"] if im["id"] in ids],
        "annotations": [a for a in full["annotations"] if a["image_id"] in ids],
        "categories": full["categories"],
    }


def test_prepared_reads_the_file(tmp_path):
    task, root = _prepared_task(tmp_path)
    full = json.loads((root / "t/train/annotations_without_background.json").read_text())
    ids = [full["images"][5]["id"], full["images"][2]["id"], full["images"][11]["id"]]
    path = _write(root / "t/train/fewshot_train_shot3_seed30.json", _fewshot_file(full, ids))
    val_ids = [full["images"][0]["id"]]
    val_path = _write(root / "t/valid/fewshot_val_shot3_seed30.json", _fewshot_file(full, val_ids))
    split = read_split(root / "t/train/annotations_without_background.json", root / "t/train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortfallWarning)
        sample = sample_kshot(split, 3, 30, "prepared", task=task, data_root=root)
        val = sample_kshot(split, 3, 30, "prepared", task=task, data_root=root, split_name="val")
    assert sample.image_ids == sorted(ids) and sample.source_file == str(path) and sample.sampler == "prepared"
    assert val.image_ids == val_ids and val.source_file == str(val_path) and val.split_name == "val"


def test_prepared_errors(tmp_path):
    task, root = _prepared_task(tmp_path)
    split = read_split(root / "t/train/annotations_without_background.json", root / "t/train")
    with pytest.raises(UserError, match="fewshot_train_shot5_seed3.json") as err:
        sample_kshot(split, 5, 3, "prepared", task=task, data_root=root)
    assert "glip" in str(err.value)
    with pytest.raises(UserError, match="minival"):
        sample_kshot(split, 5, 3, "prepared", task=task, data_root=root, split_name="minival")
    bad = _write(root / "t/train/fewshot_train_shot1_seed3.json", {"images": [{"id": 5000, "file_name": "x.jpg"}]})
    with pytest.raises(UserError) as err:
        sample_kshot(split, 1, 3, "prepared", task=task, data_root=root)
    assert err.value.path == str(bad) and err.value.field == "images[0].id"


@pytest.mark.filterwarnings("ignore::odinw_bench.data.sampling.ShortfallWarning")
def test_prepared_file_disagreeing_with_split_warns(tmp_path):
    task, root = _prepared_task(tmp_path)
    full = json.loads((root / "t/train/annotations_without_background.json").read_text())
    image = dict(full["images"][0], file_name="renamed.jpg")
    _write(root / "t/train/fewshot_train_shot1_seed3.json", {"images": [image], "annotations": []})
    split = read_split(root / "t/train/annotations_without_background.json", root / "t/train")
    with pytest.warns(UserWarning, match="1 images have another file name"):
        sample = sample_kshot(split, 1, 3, "prepared", task=task, data_root=root)
    assert sample.image_ids == [image["id"]]
