"""Writing a Roboflow/ODinW-style export, shared by every built-in synthetic task generator.

The fruit ``demo`` task (:mod:`odinw_bench.data.synthetic`) and the demo suite (:mod:`odinw_bench.data.demo_suite`)
render their images differently but lay out their files the same way, through this module:

* :func:`coco_image` / :func:`coco_box`: the COCO entries of one image and one box;
* :func:`write_split_files`: a split's raw ``_annotations.coco.json`` (with Roboflow's id-0 supercategory
  placeholder), GLIP's ``annotations_without_background.json`` and the prepared few-shot files
  ``fewshot_{name}_shot{k}_seed{s}.json`` (k in 1/3/5/10, seeds 3/30/300, GLIP's k-shot rule);
* :func:`ensure_generated`: generate a task folder once, into a temporary folder renamed into place, and again
  whenever its marker (generator version, recipe) changes.

Example::

    coco = {"images": [coco_image(0, "train_000.jpg", (160, 128))], "annotations": [coco_box(1, 0, 1, [4, 4, 20, 20])]}
    write_split_files(out / "train", coco, categories, "train", version="1")
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from odinw_bench.atomic import atomic_write_bytes
from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

#: The file in a generated task folder that records what generated it.
MARKER_NAME = ".odinw_bench_synthetic.json"
#: ``(folder, name used in GLIP's few-shot file names)`` of each split; test has no prepared files in ODinW.
SPLIT_FOLDERS = (("train", "train"), ("valid", "val"), ("test", None))
_DATE = "2021-01-01T00:00:00+00:00"  # fixed, so the JSON bytes are reproducible
_DESCRIPTION = "odinw_bench synthetic ODinW-style export"


def coco_image(image_id: int, file_name: str, image_size: tuple[int, int]) -> dict:
    """The COCO ``images`` entry of one image of ``image_size = (width, height)`` (as displayed)."""
    width, height = image_size
    return {"id": image_id, "license": 1, "file_name": file_name, "height": height, "width": width,
            "date_captured": _DATE}


def coco_box(ann_id: int, image_id: int, category_id: int, bbox: list[int]) -> dict:
    """The COCO ``annotations`` entry of one box ``[x, y, w, h]`` (ids 1-based: pycocotools skips id 0)."""
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": bbox[2] * bbox[3],
            "segmentation": [], "iscrowd": 0}


def jpeg_bytes(image) -> bytes:
    """``image`` (PIL) encoded as the exports' JPEG (quality 92)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def write_split_files(split_dir: Path, coco: dict, categories: list[dict], fewshot_name: str | None, *,
                      version: str) -> None:
    """Write one split's annotation files and, when ``fewshot_name`` is given, its prepared few-shot files.

    Args:
        split_dir: The split's folder (its images are already there: the few-shot files are read back from it).
        coco: ``{"images": [...], "annotations": [...]}``.
        categories: ``[{"id", "name", "supercategory"}]``, ids >= 1; the first one's supercategory names the
            id-0 placeholder of the raw file.
        fewshot_name: ``"train"`` / ``"val"`` (GLIP's names in the file names), or None for no few-shot files.
        version: The generator version written into the files' ``info``.
    """
    supercategory = categories[0].get("supercategory") or "objects"
    raw = {
        "info": {"description": _DESCRIPTION, "version": version},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "categories": [{"id": 0, "name": supercategory, "supercategory": "none"}] + categories,
        **coco,
    }
    clean = {**raw, "categories": categories}
    atomic_write_bytes(split_dir / "_annotations.coco.json", _json_bytes(raw))
    atomic_write_bytes(split_dir / "annotations_without_background.json", _json_bytes(clean))
    if fewshot_name is not None:
        _write_fewshot_files(split_dir, fewshot_name)


def _write_fewshot_files(split_dir: Path, fewshot_name: str) -> None:
    """Write ``fewshot_{name}_shot{k}_seed{s}.json`` with GLIP's k-shot rule, as the official files are laid out."""
    from odinw_bench.data.coco import read_split
    from odinw_bench.data.sampling import DEFAULT_SEEDS, PREPARED_SHOTS, glip_kshot_ids

    split = read_split(split_dir / "annotations_without_background.json", split_dir)
    for shots in PREPARED_SHOTS:
        for seed in DEFAULT_SEEDS:
            chosen = split.subset(glip_kshot_ids(split, shots, seed)).to_coco_dict()
            path = split_dir / f"fewshot_{fewshot_name}_shot{shots}_seed{seed}.json"
            atomic_write_bytes(path, _json_bytes(chosen))


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def read_marker(folder: Path) -> dict | None:
    """The marker of a generated folder, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def ensure_generated(target: Path, marker: dict, write: Callable[[Path], object], *, what: str) -> Path:
    """Generate ``target`` with ``write(folder)`` unless it holds a copy whose marker equals ``marker``.

    The export is written to a temporary folder beside ``target`` and renamed into place, so a crash never leaves
    a half-written dataset, and concurrent callers (parallel tests) end up with one complete copy. A copy with
    another marker (an older generator version or recipe) is moved aside and deleted.

    Args:
        target: The task folder.
        marker: What generates it (JSON-serialisable); recorded in ``target/`` :data:`MARKER_NAME`.
        write: Writes the whole export into the folder it is given.
        what: Words for error messages and the log (``"the demo data"``).

    Returns:
        ``target``.

    Raises:
        UserError: If the folder cannot be written.
    """
    if read_marker(target) == marker:
        return target
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as err:
        raise UserError(f"cannot write {what}: {err.strerror or err}", path=parent) from None
    try:
        write(tmp)
        atomic_write_bytes(tmp / MARKER_NAME, json.dumps(marker, sort_keys=True).encode())
        if read_marker(target) == marker:  # another process finished first: keep its copy, readers may be using it
            return target
        if target.exists():  # another generator version or recipe: move it aside, then delete it
            stale = parent / f".{target.name}.stale-{uuid.uuid4().hex}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, target)
        logger.info("generated %s in %s", what, target)
    except OSError as err:
        if read_marker(target) != marker:  # not a lost race against another process: a real failure
            raise UserError(f"cannot write {what}: {err.strerror or err}", path=target) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
