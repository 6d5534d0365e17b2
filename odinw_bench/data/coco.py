"""Reading ODinW / Roboflow COCO annotation files into a cleaned, indexed split.

Example:
    >>> split = read_split("Aquarium/.../train/annotations_without_background.json", "Aquarium/.../train")
    >>> split.stats["n_boxes"], split.annotations[split.images[0].id][0]["bbox"]

Two views of the boxes are kept, because GLIP itself uses two:

* ``annotations`` (cleaned): boxes clipped to the image, degenerate boxes (w <= 1 or h <= 1, GLIP's
  ``has_valid_annotation`` notion) dropped. This is what training sees.
* ``original_annotations``: the file's boxes untouched (only ``area``/``iscrowd`` filled in when absent). GLIP
  evaluates against the annotation file as loaded by pycocotools and its k-shot rule looks at every annotation, so
  :meth:`CocoSplit.to_coco_dict` and :mod:`odinw_bench.data.sampling` use this view.

A box with a negative width or height is malformed (no annotation tool means it) and is an error naming the file
and ``annotations[i].bbox``, so it reaches neither training nor evaluation. A zero width or height is kept, as GLIP
keeps it: degenerate, so not trained on, but part of the ground truth that is scored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError
from odinw_bench.jsonio import read_json_file

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from odinw_bench.tasks.spec import CategorySpec

logger = logging.getLogger(__name__)

CLEAN_ANN_NAME = "annotations_without_background.json"
ROBOFLOW_ANN_NAME = "_annotations.coco.json"
# GLIP's _has_only_empty_bbox treats a box as empty when its width or height is <= 1 pixel.
MIN_BOX_SIDE = 1.0


@dataclass
class CocoImage:
    """One image entry of a split; ``path`` is ``img_dir / file_name``."""

    id: int
    file_name: str
    width: int
    height: int
    path: Path


@dataclass
class CocoSplit:
    """A cleaned, indexed COCO split.

    Attributes:
        ann_file: The annotation file actually read (the Roboflow fallback when that was used).
        img_dir: Folder the ``file_name`` entries are relative to.
        categories: ``[{"id", "name", "supercategory"}]`` in label order (task order when the task's categories
            were given, with the task's names; otherwise the file's order).
        images: All images of the file, sorted by id, including images without boxes.
        annotations: Image id -> cleaned annotations ``{id, image_id, category_id, bbox [x, y, w, h] clipped to
            the image, area, iscrowd}``; every image id is a key (an empty list when it has no box).
        stats: Counts: ``n_images``, ``n_boxes`` (cleaned), ``n_boxes_in_file``, ``n_clipped``,
            ``n_degenerate_dropped``, ``n_images_without_boxes``, ``n_crowd``, ``n_categories`` and
            ``n_placeholder_dropped`` (annotations of the Roboflow id-0 placeholder, a file-level count).
        original_annotations: Image id -> the file's annotations for that image, boxes unchanged.
    """

    ann_file: Path
    img_dir: Path
    categories: list[dict]
    images: list[CocoImage]
    annotations: dict[int, list[dict]]
    stats: dict[str, int]
    original_annotations: dict[int, list[dict]] = field(default_factory=dict)

    @cached_property
    def image_index(self) -> dict[int, CocoImage]:
        """Image id -> :class:`CocoImage`."""
        return {image.id: image for image in self.images}

    @cached_property
    def glip_valid_images(self) -> dict[int, frozenset[int]]:
        """Images GLIP trains on, in id order -> the category ids of all their annotations (GLIP's view).

        An image is valid when one of the file's boxes has w > 1 and h > 1 (GLIP's ``has_valid_annotation``);
        its categories are those of *every* annotation, degenerate ones included, as GLIP's k-shot rule counts
        them. Computed once per split (the samplers call it for every shots x seed).
        """
        source = self.original_annotations or self.annotations
        view = {}
        for image in self.images:
            anns = source.get(image.id, ())
            if any(a["bbox"][2] > MIN_BOX_SIDE and a["bbox"][3] > MIN_BOX_SIDE for a in anns):
                view[image.id] = frozenset(a["category_id"] for a in anns)
        return view

    @property
    def image_ids(self) -> list[int]:
        """Sorted image ids."""
        return [image.id for image in self.images]

    @property
    def category_names(self) -> list[str]:
        """Category names in label order."""
        return [c["name"] for c in self.categories]

    def to_coco_dict(self, *, cleaned: bool = False) -> dict:
        """A COCO ground-truth dict for pycocotools (fresh copies: ``COCOeval`` writes into the GT dicts).

        Args:
            cleaned: Use the cleaned boxes. The default, the file's boxes, is what GLIP evaluates against.

        Returns:
            ``{"images": [...], "annotations": [...], "categories": [...]}`` restricted to this split's images.
        """
        source = self.annotations if cleaned or not self.original_annotations else self.original_annotations
        return {
            "images": [
                {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height} for im in self.images
            ],
            "annotations": [
                {**ann, "bbox": list(ann["bbox"])} for im in self.images for ann in source.get(im.id, [])
            ],
            "categories": [dict(c) for c in self.categories],
        }

    def subset(self, image_ids: Iterable[int]) -> CocoSplit:
        """The same split restricted to ``image_ids`` (stats recomputed).

        Raises:
            ValueError: If an id is not an image of this split.
        """
        wanted = set(image_ids)
        unknown = wanted - self.image_index.keys()
        if unknown:
            raise ValueError(f"image ids not in {self.ann_file}: {sorted(unknown)[:10]}")
        images = [im for im in self.images if im.id in wanted]
        annotations = {im.id: self.annotations[im.id] for im in images}
        original = {im.id: self.original_annotations[im.id] for im in images if im.id in self.original_annotations}
        stats = split_stats(images, annotations, original, self.stats.get("n_placeholder_dropped", 0))
        stats["n_categories"] = len(self.categories)
        return CocoSplit(self.ann_file, self.img_dir, self.categories, images, annotations, stats, original)


def read_json(path: str | Path) -> dict:
    """Read a JSON object from ``path``.

    Raises:
        UserError: Naming the file when it is missing or unreadable, and the line and column when the JSON is
            malformed or not an object.
    """
    path = Path(path)
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object at the top level, found {type(data).__name__}", path=path)
    return data


def resolve_ann_file(ann_file: str | Path) -> Path:
    """``ann_file``, or the raw Roboflow ``_annotations.coco.json`` beside it when only that one exists.

    GLIP ships ``annotations_without_background.json``, which is the Roboflow file minus the id-0 placeholder
    category; when a user has only the raw export we read it and drop the placeholder ourselves.
    """
    ann_file = Path(ann_file)
    fallback = ann_file.with_name(ROBOFLOW_ANN_NAME)
    if not ann_file.exists() and ann_file.name == CLEAN_ANN_NAME and fallback.is_file():
        logger.info("%s not found; reading %s and dropping its id-0 placeholder category", ann_file, fallback)
        return fallback
    return ann_file


def read_split(
    ann_file: str | Path, img_dir: str | Path, categories: Sequence[CategorySpec] | None = None
) -> CocoSplit:
    """Read, validate and clean one COCO annotation file (linear in the number of annotations).

    Args:
        ann_file: The annotation JSON (``annotations_without_background.json``; the raw Roboflow file beside it
            is used when it is absent).
        img_dir: Folder the images' ``file_name`` entries are relative to.
        categories: The task's categories. When given, the file's category ids must be exactly these ids, and
            names are replaced by the task's (GLIP's ``OVERRIDE_CATEGORY``).

    Raises:
        UserError: Naming the file and the field for malformed content, unknown image or category ids, or
            category ids that do not match the task.
    """
    path = resolve_ann_file(ann_file)
    data = read_json(path)
    cats, placeholder_ids = _parse_categories(data, path, categories)
    images = _parse_images(data, path, Path(img_dir))
    original, n_placeholder = _parse_annotations(data, path, images, {c["id"] for c in cats}, placeholder_ids)
    annotations = {image_id: _clean_image_annotations(anns, images[image_id]) for image_id, anns in original.items()}
    image_list = list(images.values())
    stats = split_stats(image_list, annotations, original, n_placeholder)
    stats["n_categories"] = len(cats)
    logger.debug("read %s: %s", path, stats)
    return CocoSplit(path, Path(img_dir), cats, image_list, annotations, stats, original)


def split_stats(
    images: Sequence[CocoImage],
    annotations: dict[int, list[dict]],
    original: dict[int, list[dict]],
    n_placeholder_dropped: int = 0,
) -> dict[str, int]:
    """Box and image counts of a split (see :class:`CocoSplit` for the keys)."""
    stats = dict.fromkeys(
        ("n_boxes", "n_boxes_in_file", "n_clipped", "n_degenerate_dropped", "n_images_without_boxes", "n_crowd"), 0
    )
    stats["n_images"] = len(images)
    for image in images:
        kept = annotations.get(image.id, [])
        source = original.get(image.id, kept)
        stats["n_boxes"] += len(kept)
        stats["n_boxes_in_file"] += len(source)
        stats["n_degenerate_dropped"] += len(source) - len(kept)
        if len(kept) == len(source):  # cleaning keeps the order, so the boxes pair up
            stats["n_clipped"] += sum(1 for a, b in zip(kept, source) if a["bbox"] != b["bbox"])
        else:
            source_boxes = {ann["id"]: ann["bbox"] for ann in source}
            stats["n_clipped"] += sum(1 for ann in kept if ann["bbox"] != source_boxes.get(ann["id"], ann["bbox"]))
        stats["n_crowd"] += sum(1 for ann in kept if ann["iscrowd"])
        stats["n_images_without_boxes"] += not kept
    stats["n_placeholder_dropped"] = n_placeholder_dropped
    return stats


def _require_list(data: dict, key: str, path: Path, *, default: list | None = None) -> list:
    value = data.get(key, default)
    if not isinstance(value, list):
        raise UserError(f"expected a list, found {type(value).__name__}", path=path, field=key)
    return value


def _require_int(entry: Any, key: str, path: Path, where: str, *, positive: bool = False) -> int:
    value = entry.get(key) if isinstance(entry, dict) else None
    if type(value) is int and (value > 0 or not positive):
        return value  # the common case, without the checks below
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # some exporters write 640.0 for a width
    if not isinstance(value, int) or isinstance(value, bool) or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise UserError(f"expected {kind}, found {value!r}", path=path, field=f"{where}.{key}")
    return value


def _parse_categories(
    data: dict, path: Path, task_categories: Sequence[CategorySpec] | None
) -> tuple[list[dict], set[int]]:
    """The split's categories in label order, and the placeholder ids dropped from the raw Roboflow file."""
    file_cats: dict[int, dict] = {}
    for i, entry in enumerate(_require_list(data, "categories", path)):
        cat_id = _require_int(entry, "id", path, f"categories[{i}]")
        if not isinstance(entry.get("name"), str):
            raise UserError("expected a string", path=path, field=f"categories[{i}].name")
        if cat_id in file_cats:
            raise UserError(f"duplicate category id {cat_id}", path=path, field=f"categories[{i}].id")
        file_cats[cat_id] = {"id": cat_id, "name": entry["name"], "supercategory": entry.get("supercategory", "")}
    task_ids = None if task_categories is None else [c.id for c in task_categories]
    placeholder: set[int] = set()
    if path.name == ROBOFLOW_ANN_NAME and 0 in file_cats and (task_ids is None or 0 not in task_ids):
        placeholder = {0}  # Roboflow's dataset-level supercategory entry, not a class
        del file_cats[0]
    if task_categories is None:
        return list(file_cats.values()), placeholder
    missing = [i for i in task_ids if i not in file_cats]
    extra = sorted(set(file_cats) - set(task_ids))
    if missing or extra:
        raise UserError(
            f"category ids do not match the task: missing from the file {missing}, not in the task {extra}",
            path=path,
            field="categories",
        )
    cats = [
        {"id": spec.id, "name": spec.name, "supercategory": spec.supercategory or file_cats[spec.id]["supercategory"]}
        for spec in task_categories
    ]
    return cats, placeholder


def _parse_images(data: dict, path: Path, img_dir: Path) -> dict[int, CocoImage]:
    """Image id -> :class:`CocoImage`, ordered by id."""
    images: dict[int, CocoImage] = {}
    for i, entry in enumerate(_require_list(data, "images", path)):
        where = f"images[{i}]"
        image_id = _require_int(entry, "id", path, where)
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise UserError(f"expected a file name, found {file_name!r}", path=path, field=f"{where}.file_name")
        width = _require_int(entry, "width", path, where, positive=True)
        height = _require_int(entry, "height", path, where, positive=True)
        if image_id in images:
            raise UserError(f"duplicate image id {image_id}", path=path, field=f"{where}.id")
        images[image_id] = CocoImage(image_id, file_name, width, height, img_dir / file_name)
    return dict(sorted(images.items()))


_NUMBER_TYPES = frozenset((int, float))


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES and math.isfinite(value)


def _is_box(bbox: Any) -> bool:
    """A list of 4 finite numbers (checked with few operations: it runs once per annotation)."""
    if type(bbox) is not list or len(bbox) != 4:
        return False
    x, y, w, h = bbox
    return _NUMBER_TYPES.issuperset((type(x), type(y), type(w), type(h))) and math.isfinite(x + y + w + h)


def _annotation_ids(entry: Any, path: Path, where: str) -> tuple[int, int, int]:
    """``(id, image_id, category_id)``; a plain-int fast path, the detailed checks only when it fails."""
    try:
        ids = entry["id"], entry["image_id"], entry["category_id"]
        if type(ids[0]) is int and type(ids[1]) is int and type(ids[2]) is int:
            return ids
    except (TypeError, KeyError):
        pass
    return tuple(_require_int(entry, key, path, where) for key in ("id", "image_id", "category_id"))


def _parse_annotations(
    data: dict, path: Path, images: dict[int, CocoImage], category_ids: set[int], placeholder_ids: set[int]
) -> tuple[dict[int, list[dict]], int]:
    """Image id -> validated annotations with the file's boxes, and the number of placeholder annotations."""
    by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    seen_ids: set[int] = set()
    n_placeholder = 0
    for i, entry in enumerate(_require_list(data, "annotations", path, default=[])):
        ann_id, image_id, category_id = _annotation_ids(entry, path, f"annotations[{i}]")
        if image_id not in by_image:
            raise UserError(f"unknown image id {image_id}", path=path, field=f"annotations[{i}].image_id")
        if category_id in placeholder_ids:
            n_placeholder += 1
            continue
        if category_id not in category_ids:
            raise UserError(f"unknown category id {category_id}", path=path, field=f"annotations[{i}].category_id")
        if ann_id in seen_ids:
            raise UserError(f"duplicate annotation id {ann_id}", path=path, field=f"annotations[{i}].id")
        seen_ids.add(ann_id)
        if not _is_box(entry.get("bbox")):
            found = entry.get("bbox")
            message = f"expected [x, y, width, height] numbers, found {found!r}"
            raise UserError(message, path=path, field=f"annotations[{i}].bbox")
        if entry["bbox"][2] < 0 or entry["bbox"][3] < 0:
            message = f"width and height must be >= 0, found {entry['bbox']!r}"
            raise UserError(message, path=path, field=f"annotations[{i}].bbox")
        # pycocotools needs area and iscrowd; Roboflow writes them, hand-made files may not. The dict is ours
        # (fresh from the JSON parser), so it is completed in place rather than copied.
        if not _is_number(entry.get("area")):
            entry["area"] = entry["bbox"][2] * entry["bbox"][3]
        if type(entry.get("iscrowd")) is not int:
            entry["iscrowd"] = int(entry.get("iscrowd") or 0)
        by_image[image_id].append(entry)
    return by_image, n_placeholder


def _clean_image_annotations(annotations: list[dict], image: CocoImage) -> list[dict]:
    """Clip boxes to the image and drop degenerate ones (w <= 1 or h <= 1 after clipping)."""
    cleaned = []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        area = ann["area"]
        if x < 0 or y < 0 or x + w > image.width or y + h > image.height:
            x1, y1 = max(x, 0), max(y, 0)
            w, h = min(x + w, image.width) - x1, min(y + h, image.height) - y1
            x, y, area = x1, y1, max(w, 0) * max(h, 0)
        if w <= MIN_BOX_SIDE or h <= MIN_BOX_SIDE:
            continue
        cleaned.append(
            {
                "id": ann["id"],
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x, y, w, h],
                "area": area,
                "iscrowd": ann["iscrowd"],
            }
        )
    return cleaned
