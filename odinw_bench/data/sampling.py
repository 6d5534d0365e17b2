"""k-shot samplers: which training (or validation) images a few-shot run sees.

Example:
    >>> sample = sample_kshot(split, shots=5, seed=30)                      # GLIP's rule on the full split
    >>> sample = sample_kshot(split, 5, 30, "prepared", task=task, data_root=root)  # the official files
    >>> train = split.subset(sample.image_ids)

Samplers (one signature, chosen by name):

``glip``
    GLIP's rule (``COCODataset`` in ``maskrcnn_benchmark/data/datasets/coco.py``): sort the image ids, drop images
    without a valid box (``has_valid_annotation``: at least one file box with w > 1 and h > 1), shuffle with
    ``random.Random(seed)`` (GLIP skips the shuffle for seed 0, and so do we: seed 0 is the sorted order that
    ``CocoGrounding`` and the README command use), then walk the ids and keep an image when any of its categories
    still needs images, decrementing *every* category of the image. So k-shot means k images per category,
    image-level and greedy: a category can get more than k images through co-occurrence, and all boxes of a
    kept image are kept. Categories are those of every annotation of the image, as in GLIP.
``prepared``
    GLIP's released ``fewshot_{train,val,minival}_shot{k}_seed{s}.json`` files (k in 1/3/5/10, seeds 3/30/300):
    the file's images are the sample. Validation is subsampled the same way with ``split_name="val"``.

``shots=0`` is the zero-shot case (no training images); ``shots="all"`` is full data (every image with a valid
box, the set GLIP trains on).
"""

from __future__ import annotations

import hashlib
import logging
import random
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from odinw_bench.data.coco import read_json
from odinw_bench.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from odinw_bench.data.coco import CocoSplit
    from odinw_bench.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

# GLIP's released few-shot files use these seeds (README, ODinW challenge: "random seed [3, 30, 300]").
DEFAULT_SEEDS = (3, 30, 300)
# Shot counts for which GLIP ships prepared files.
PREPARED_SHOTS = (1, 3, 5, 10)
SAMPLERS = ("glip", "prepared")


class ShortfallWarning(UserWarning):
    """Some category has fewer than k images in a k-shot sample."""


@dataclass(frozen=True)
class KShotSample:
    """The images chosen for one (split, shots, seed, sampler).

    Attributes:
        image_ids: Chosen image ids, sorted.
        ids_hash: :func:`ids_hash` of ``image_ids``; results record it so runs on different samples never merge.
        sampler: ``"glip"`` or ``"prepared"``.
        shots: k, ``0`` (zero-shot) or ``"all"``.
        seed: The seed asked for (unused for ``shots`` 0 and ``"all"``).
        per_category_images: Category name -> number of chosen images with at least one (cleaned) box of it.
        shortfall: Category name -> images of it in the sample, for categories with fewer than k (for ``glip``
            that is every image of the category the split has).
        source_file: The prepared file read, for ``prepared``.
        split_name: The split the sample was drawn from (``train``, ``val``, ``minival``).
    """

    image_ids: list[int]
    ids_hash: str
    sampler: str
    shots: int | str
    seed: int
    per_category_images: dict[str, int]
    shortfall: dict[str, int]
    source_file: str | None = None
    split_name: str = "train"

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def ids_hash(image_ids: Iterable[int]) -> str:
    """sha256 of the sorted ids written as decimal integers joined by ``","``, first 16 hex digits."""
    text = ",".join(str(i) for i in sorted(image_ids))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def parse_shots(shots: int | str) -> int | str:
    """Validate ``shots``: a non-negative integer (also as a string) or ``"all"``.

    Raises:
        UserError: For anything else.
    """
    if isinstance(shots, str):
        if shots.strip().lower() == "all":
            return "all"
        if shots.strip().isdigit():
            return int(shots)
    elif isinstance(shots, int) and not isinstance(shots, bool) and shots >= 0:
        return shots
    raise UserError(f"expected a number of shots >= 0 or 'all', found {shots!r}", field="shots")


def sample_kshot(
    split: CocoSplit,
    shots: int | str,
    seed: int,
    sampler: str = "glip",
    *,
    task: TaskSpec | None = None,
    data_root: str | Path | None = None,
    split_name: str = "train",
) -> KShotSample:
    """Choose the images of a k-shot sample (see the module docstring for the samplers).

    Args:
        split: The full split to sample from.
        shots: k (images per category), 0 for zero-shot, or ``"all"``.
        seed: Sampling seed (GLIP uses 3, 30, 300).
        sampler: ``"glip"`` or ``"prepared"``.
        task: The task (needed by ``prepared`` to find its files).
        data_root: The data root (needed by ``prepared``).
        split_name: Which prepared files to read: ``train``, ``val`` or ``minival``.

    Returns:
        The sample. A :class:`ShortfallWarning` is issued when a category has fewer than k images.

    Raises:
        UserError: For an unknown sampler, bad ``shots``/``seed``, or a missing or inconsistent prepared file.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}", field="sampler")
    shots = parse_shots(shots)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        # random.Random(-3) equals random.Random(3), so negative seeds would silently alias.
        raise UserError(f"expected a seed >= 0, found {seed!r}", field="seed")
    source_file = None
    if shots == 0:
        image_ids: list[int] = []
    elif shots == "all":
        image_ids = valid_image_ids(split)
    elif sampler == "glip":
        image_ids = glip_kshot_ids(split, shots, seed)
    else:
        image_ids, source_file = _prepared_ids(split, shots, seed, task, data_root, split_name)
    sample = _describe(split, sorted(image_ids), sampler, shots, seed, source_file, split_name)
    logger.info(
        "%s %s-shot seed %s on %s: %d images (hash %s)",
        sampler, shots, seed, split_name, len(sample.image_ids), sample.ids_hash,
    )  # fmt: skip
    return sample


def valid_image_ids(split: CocoSplit) -> list[int]:
    """Sorted ids of the images GLIP trains on (``has_valid_annotation``)."""
    return list(split.glip_valid_images)


def glip_kshot_ids(split: CocoSplit, shots: int, seed: int) -> list[int]:
    """GLIP's image-level greedy k-shot rule; ids in the order they were chosen.

    Args:
        split: The full split.
        shots: k >= 1.
        seed: Shuffle seed; 0 keeps the sorted order (GLIP only shuffles when the seed is non-zero).
    """
    image_cats = split.glip_valid_images
    order = list(image_cats)  # sorted ids of valid images: GLIP filters first, then shuffles what is left
    if seed != 0:
        random.Random(seed).shuffle(order)
    still_needed = {c["id"]: shots for c in split.categories}
    chosen = []
    for image_id in order:
        cats = image_cats[image_id]
        if any(still_needed.get(c, 0) > 0 for c in cats):
            chosen.append(image_id)
            for c in cats:  # every category of the image counts, even those already complete
                if c in still_needed:
                    still_needed[c] -= 1
    return chosen


def _prepared_ids(
    split: CocoSplit, shots: int, seed: int, task: TaskSpec | None, data_root: str | Path | None, split_name: str
) -> tuple[list[int], str]:
    """Image ids of GLIP's prepared few-shot file, checked against ``split``."""
    if task is None or data_root is None:
        raise UserError("the 'prepared' sampler needs the task and the data root", field="sampler")
    if split_name not in task.fewshot:
        raise UserError(
            f"task '{task.name}' has no prepared few-shot files for split '{split_name}' "
            f"(it has: {', '.join(task.fewshot) or 'none'}); use the 'glip' sampler",
            field="fewshot",
        )
    path = task.fewshot_file(split_name, shots, seed, data_root)
    if not path.is_file():
        raise UserError(
            f"prepared few-shot file not found (GLIP ships shots {list(PREPARED_SHOTS)} x seeds "
            f"{list(DEFAULT_SEEDS)}); use the 'glip' sampler for other values",
            path=path,
        )
    data = read_json(path)
    entries = data.get("images")
    if not isinstance(entries, list):
        raise UserError("expected a list of images", path=path, field="images")
    ids: list[int] = []
    n_renamed = 0
    for i, entry in enumerate(entries):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        image = split.image_index.get(image_id) if isinstance(image_id, int) else None
        if image is None:
            raise UserError(f"image id {image_id!r} is not in {split.ann_file}", path=path, field=f"images[{i}].id")
        n_renamed += entry.get("file_name", image.file_name) != image.file_name
        ids.append(image_id)
    _check_prepared_annotations(data, path, split, n_renamed)
    return sorted(set(ids)), str(path)


def _check_prepared_annotations(data: dict, path: Path, split: CocoSplit, n_renamed: int) -> None:
    """Warn when the prepared file disagrees with the full split about its images' file names or boxes."""
    anns = data.get("annotations", [])
    per_image = Counter(a.get("image_id") for a in anns if isinstance(a, dict)) if isinstance(anns, list) else {}
    source = split.original_annotations or split.annotations
    n_differ = sum(1 for image_id, n in per_image.items() if len(source.get(image_id, ())) != n)
    if n_renamed or n_differ:
        warnings.warn(
            f"{path}: {n_renamed} images have another file name and {n_differ} another box count than in "
            f"{split.ann_file}; the sample uses the full split's entries",
            stacklevel=4,
        )


def _describe(
    split: CocoSplit,
    image_ids: list[int],
    sampler: str,
    shots: int | str,
    seed: int,
    source_file: str | None,
    split_name: str,
) -> KShotSample:
    """Build the :class:`KShotSample` with per-category counts, warning on a shortfall."""
    id_to_name = {c["id"]: c["name"] for c in split.categories}
    counts = Counter(
        id_to_name[c] for image_id in image_ids for c in {a["category_id"] for a in split.annotations.get(image_id, ())}
    )
    per_category = {c["name"]: counts.get(c["name"], 0) for c in split.categories}
    shortfall = {}
    if isinstance(shots, int) and shots > 0:
        shortfall = {name: n for name, n in per_category.items() if n < shots}
    if shortfall:
        warnings.warn(
            f"{split.ann_file}: {shots}-shot {sampler} sample (seed {seed}) has fewer than {shots} images for "
            + ", ".join(f"{name} ({n})" for name, n in shortfall.items()),
            ShortfallWarning,
            stacklevel=3,
        )
    return KShotSample(
        image_ids=image_ids,
        ids_hash=ids_hash(image_ids),
        sampler=sampler,
        shots=shots,
        seed=seed,
        per_category_images=per_category,
        shortfall=shortfall,
        source_file=source_file,
        split_name=split_name,
    )
