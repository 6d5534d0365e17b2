"""Checks of a task against its files on disk: folders, annotation JSONs, categories, boxes, images, few-shot files,
prompts; and information lines on the quirks found (images without boxes, missing ``iscrowd``, grayscale or RGBA
images, tiny boxes, boxes touching or crossing the border), which odinw_bench handles as GLIP does.

Used by ``python -m odinw_bench validate`` and ``tasks --data-root``. Example::

    from odinw_bench.tasks.registry import load_task, resolve_data_root
    from odinw_bench.data.validation import validate_task

    aquarium = load_task("aquarium")
    report = validate_task(aquarium, resolve_data_root(aquarium, "DATASET/odinw"))
    print(report.ok, [c.name for c in report.checks if not c.ok])
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.data.coco import MIN_BOX_SIDE, read_json, resolve_ann_file
from odinw_bench.data.images import CorruptImageError
from odinw_bench.data.task_files import how_to_get_data
from odinw_bench.errors import UserError
from odinw_bench.tasks.registry import FEWSHOT_SEEDS, FEWSHOT_SHOTS
from odinw_bench.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

# Boxes with a side under this many pixels are listed as tiny (an information line, not an error).
TINY_BOX_SIDE = 4
_EXIF_ORIENTATION = 0x0112
_TURNING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_MODE_NAMES = {"1": "1-bit", "L": "grayscale", "LA": "grayscale with alpha", "P": "palette", "PA": "palette with alpha",
               "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale", "F": "float"}


def read_coco(path: str | Path) -> tuple[list, list, list]:
    """``(images, annotations, categories)`` of a COCO detection JSON, read with the standard library.

    Raises:
        UserError: If the file is unreadable, malformed (line and column given) or lacks those lists.
    """
    data = read_json(path)
    lists = [data.get(key) for key in ("images", "annotations", "categories")]
    if not all(isinstance(x, list) and all(isinstance(i, dict) for i in x) for x in lists):
        message = "not a COCO detection file: needs lists of objects 'images', 'annotations', 'categories'"
        raise UserError(message, path=path)
    return lists[0], lists[1], lists[2]


def split_counts(task: TaskSpec, data_root: str | Path) -> dict[str, dict[str, Any] | None]:
    """Image and box counts per split, from the annotation JSONs (no image is opened).

    Returns:
        ``{split: {"images": n, "boxes": m}}``; ``None`` where the file is absent, ``{"error": msg}`` where it
        cannot be read.
    """
    counts: dict[str, dict[str, Any] | None] = {}
    by_file: dict[Path, dict[str, Any]] = {}
    for split in task.splits:
        ann_file = resolve_ann_file(task.split_files(split, data_root)[0])
        if ann_file.is_file() and ann_file not in by_file:  # PascalVOC's val and test share one file
            try:
                images, annotations, _ = read_coco(ann_file)
                by_file[ann_file] = {"images": len(images), "boxes": len(annotations)}
            except UserError as err:
                by_file[ann_file] = {"error": str(err)}
        counts[split] = by_file.get(ann_file)
    return counts


@dataclass
class Check:
    """One validation check: ``ok`` is its outcome; a failed ``warning`` does not fail the task.

    An ``info`` check is not a test: it reports a quirk of the data that odinw_bench handles as GLIP does (images
    without boxes, grayscale images, boxes crossing the border...), and is always ``ok``.
    """

    name: str
    ok: bool
    detail: str = ""
    warning: bool = False
    info: bool = False


@dataclass
class ValidationReport:
    """All checks of one task against its files."""

    task: str
    data_root: Path
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "", *, warning: bool = False) -> bool:
        """Record a check and return its outcome."""
        self.checks.append(Check(name, bool(ok), detail, warning))
        return bool(ok)

    def note(self, name: str, detail: str) -> None:
        """Record an information line (a quirk of the data, not a failure)."""
        self.checks.append(Check(name, True, detail, info=True))

    @property
    def failures(self) -> list[Check]:
        """Failed checks that are not warnings."""
        return [c for c in self.checks if not c.ok and not c.warning]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings aside)."""
        return not self.failures


@dataclass
class CategoryDiff:
    """How an annotation file's categories differ from the task's: ``(id, name)`` / ``(id, json, task)``."""

    missing: list[tuple[int, str]]
    extra: list[tuple[int, str]]
    renamed: list[tuple[int, str, str]]

    @property
    def ok(self) -> bool:
        """Same ids. Names may differ: the task's names override them, as GLIP's ``OVERRIDE_CATEGORY`` does."""
        return not self.missing and not self.extra

    def describe(self) -> str:
        """One line listing every difference."""
        parts = []
        if self.missing:
            parts.append("missing " + ", ".join(f"{i} {n!r}" for i, n in self.missing))
        if self.extra:
            parts.append("extra " + ", ".join(f"{i} {n!r}" for i, n in self.extra))
        if self.renamed:
            parts.append("renamed " + ", ".join(f"{i} {a!r} -> {b!r}" for i, a, b in self.renamed))
        return "; ".join(parts)


def diff_categories(task: TaskSpec, json_categories: list[dict[str, Any]]) -> CategoryDiff:
    """Compare a COCO ``categories`` list with the task's, ignoring Roboflow's id-0 placeholder."""
    ours = {c.id: c.name for c in task.categories}
    theirs = {c.get("id"): str(c.get("name", "")) for c in json_categories}
    if 0 not in ours:  # raw Roboflow exports carry a supercategory entry with id 0
        theirs.pop(0, None)
    return CategoryDiff(
        missing=[(i, n) for i, n in ours.items() if i not in theirs],
        extra=[(i, n) for i, n in theirs.items() if i not in ours],
        renamed=[(i, theirs[i], n) for i, n in ours.items() if i in theirs and theirs[i] != n],
    )


def _not_found(task: TaskSpec, folder: Path, data_root: Path) -> str:
    return f"{folder} not found; {how_to_get_data(task, data_root)}"


def _validate_split(task: TaskSpec, split: str, data_root: Path, report: ValidationReport, max_images: int) -> None:
    registered, img_dir = task.split_files(split, data_root)
    ann_file = resolve_ann_file(registered)  # a raw Roboflow export stands in for GLIP's cleaned file
    raw = "" if ann_file == registered else " (raw Roboflow export; its id-0 placeholder is ignored)"
    if not report.add(f"{split}: annotation file", ann_file.is_file(), f"{ann_file}{raw}"):
        return
    try:
        images, annotations, categories = read_coco(ann_file)
    except UserError as err:
        report.add(f"{split}: annotation JSON", False, str(err))
        return
    report.add(f"{split}: annotation JSON", True, f"{len(images)} images, {len(annotations)} boxes")
    diff = diff_categories(task, categories)
    report.add(f"{split}: categories", diff.ok, diff.describe() or f"{len(task.categories)} ids match")
    if diff.ok and diff.renamed:
        detail = "the task's names override the file's: " + diff.describe()
        report.add(f"{split}: category names", False, detail, warning=True)
    stray = sorted({a.get("category_id") for a in annotations} - set(task.category_ids), key=str)
    report.add(f"{split}: box categories", not stray, f"boxes use unknown category ids {stray}" if stray else "")
    _check_boxes(split, ann_file, images, annotations, report)
    if not report.add(f"{split}: image folder", img_dir.is_dir(), str(img_dir)):
        return
    step = max(1, len(images) // max_images) if max_images > 0 else 1
    sample = images[::step][:max_images] if max_images > 0 else images
    _check_images(split, img_dir, sample, report)


def _is_xywh(bbox: Any) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))


def _check_boxes(split: str, ann_file: Path, images: list, annotations: list, report: ValidationReport) -> None:
    """Fail on a malformed box (as reading the split would); note images without boxes and odd boxes."""
    sizes = {im.get("id"): (im.get("width"), im.get("height")) for im in images}
    counts = dict.fromkeys(("no_iscrowd", "tiny", "degenerate", "touching", "crossing"), 0)
    with_boxes, bad = set(), None
    for i, ann in enumerate(annotations):
        counts["no_iscrowd"] += "iscrowd" not in ann
        bbox = ann.get("bbox")
        if not _is_xywh(bbox) or bbox[2] < 0 or bbox[3] < 0:
            bad = bad or UserError(f"expected [x, y, width, height] with width and height >= 0, found {bbox!r}",
                                   path=ann_file, field=f"annotations[{i}].bbox")
            continue
        with_boxes.add(ann.get("image_id"))
        x, y, w, h = bbox
        counts["tiny"] += min(w, h) < TINY_BOX_SIDE
        counts["degenerate"] += min(w, h) <= MIN_BOX_SIDE
        width, height = sizes.get(ann.get("image_id"), (None, None))
        if isinstance(width, (int, float)) and isinstance(height, (int, float)):
            inside = x >= 0 and y >= 0 and x + w <= width and y + h <= height
            counts["crossing"] += not inside
            counts["touching"] += inside and (x == 0 or y == 0 or x + w == width or y + h == height)
    report.add(f"{split}: boxes", bad is None, str(bad) if bad else f"{len(annotations)} boxes well formed")
    empty = sum(1 for im in images if im.get("id") not in with_boxes)
    if empty:
        report.note(f"{split}: images without boxes",
                    f"{empty} of {len(images)} (not trained on, as in GLIP; still scored)")
    if counts["no_iscrowd"]:
        report.note(f"{split}: iscrowd", f"{counts['no_iscrowd']} of {len(annotations)} annotations lack 'iscrowd' "
                    "(read as 0)")
    if counts["tiny"]:
        report.note(f"{split}: tiny boxes", f"{counts['tiny']} with a side under {TINY_BOX_SIDE} px "
                    f"({counts['degenerate']} of them <= {MIN_BOX_SIDE:g} px: not trained on, as in GLIP)")
    if counts["touching"] or counts["crossing"]:
        report.note(f"{split}: border boxes", f"{counts['crossing']} crossing the image border (clipped for "
                    f"training, scored as in the file), {counts['touching']} touching it")


def _decode(path: Path) -> tuple[str, set[tuple[int, int]]]:
    """The image's PIL mode and its possible sizes (stored, and as displayed after its EXIF orientation).

    Raises:
        CorruptImageError: If the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode every pixel: a truncated file fails here
            turned = image.getexif().get(_EXIF_ORIENTATION) in _TURNING_ORIENTATIONS
            width, height = image.size
            return image.mode, {(width, height), (height, width) if turned else (width, height)}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"cannot decode the image ({err})", path=path) from None


def _check_images(split: str, img_dir: Path, sample: list, report: ValidationReport) -> None:
    """Decode the sampled images: missing or unreadable ones fail; odd modes and sizes are reported."""
    absent, unreadable, resized, modes = [], [], [], Counter()
    for image in sample:
        name = str(image.get("file_name"))
        path = img_dir / name
        if not path.is_file():
            absent.append(name)
            continue
        try:
            mode, sizes = _decode(path)
        except CorruptImageError:
            unreadable.append(name)
            continue
        modes[mode] += 1
        if (image.get("width"), image.get("height")) not in sizes:
            resized.append(name)
    decoded = len(sample) - len(absent) - len(unreadable)
    detail = f"{decoded}/{len(sample)} sampled images decoded"
    detail += (f"; missing {absent[:3]}" if absent else "") + (f"; unreadable {unreadable[:3]}" if unreadable else "")
    report.add(f"{split}: images", not absent and not unreadable, detail)
    odd = [f"{n} {_MODE_NAMES.get(mode, mode)}" for mode, n in sorted(modes.items()) if mode != "RGB"]
    if odd:
        report.note(f"{split}: image modes", f"{', '.join(odd)} of {decoded} decoded (read as RGB, alpha dropped, "
                    "as GLIP does)")
    if resized:
        detail = f"{len(resized)} decoded images differ in size from the annotation file: {resized[:3]}"
        report.add(f"{split}: image sizes", False, detail, warning=True)


def _validate_fewshot(task: TaskSpec, data_root: Path, report: ValidationReport) -> None:
    # Prepared files are optional: without them the seeded sampler draws the k-shot sets.
    for split in task.fewshot:
        wanted = [(k, s) for k in FEWSHOT_SHOTS for s in FEWSHOT_SEEDS]
        absent = [f"shot{k}_seed{s}" for k, s in wanted if not task.fewshot_file(split, k, s, data_root).is_file()]
        detail = f"{len(wanted) - len(absent)}/{len(wanted)} present"
        detail += f"; missing {', '.join(absent)}" if absent else ""
        report.add(f"{split}: few-shot files", not absent, detail, warning=True)


def _validate_prompts(task: TaskSpec, report: ValidationReport) -> None:
    from odinw_bench.data.prompts import build_caption

    for variant in [None, *task.prompt_variants]:
        label = f"prompt ({variant or 'default'})"
        try:
            text = build_caption(task.category_names, task.prompt_for(variant)).text
        except UserError as err:
            report.add(label, False, str(err))
            continue
        report.add(label, bool(text.strip()), repr(text if len(text) <= 100 else text[:97] + "..."))


def validate_task(task: TaskSpec, data_root: str | Path, *, max_images: int = 25) -> ValidationReport:
    """Check a task against its files: folders, annotation JSONs, categories, boxes, images, few-shot files, prompts.

    Args:
        task: The task.
        data_root: The data root (see :func:`resolve_data_root`).
        max_images: How many images per split to decode (evenly spread); 0 decodes all.

    Returns:
        The report; missing folders are failed checks whose detail says how to fetch the data.
    """
    data_root = Path(data_root)
    report = ValidationReport(task.name, data_root)
    for name, folder in (("data root", data_root), ("task folder", task.task_dir(data_root))):
        detail = str(folder) if folder.is_dir() else _not_found(task, folder, data_root)
        if not report.add(name, folder.is_dir(), detail):
            return report
    for split in task.splits:
        _validate_split(task, split, data_root, report, max_images)
    _validate_fewshot(task, data_root, report)
    _validate_prompts(task, report)
    return report
