"""The LightningDataModule of one k-shot ODinW task: the sampled training images, the validation and test images.

Example:
    >>> dm = ODinWDataModule(task=load_task("demo"), data_root=root, backend=backend, shots=5, seed=30)
    >>> dm.setup()
    >>> dm.train_sample.ids_hash, dm.dataset_copies, dm.skipped_images
    >>> batch = next(iter(dm.train_dataloader()))      # DetectionBatch with targets and image_ids

What follows GLIP (``glip_protocol.md`` §2-§4, ``glip_reference_notes.md`` §9.1):

- The k-shot sample is the prepared ``fewshot_train_shot{k}_seed{s}.json`` when the task ships it (``sampler="auto"``),
  else GLIP's seeded greedy rule. With ``subsample_val`` the validation split is subsampled from the prepared
  ``fewshot_{val,minival}_shot{k}_seed{s}.json`` (GLIP's ``--use_prepared_data`` path) when that file exists. GLIP
  duplicates a 1- or 3-shot val set x4 (``GENERAL_COPY_TEST``); its predictions are keyed by the un-duplicated index,
  so the copies never change AP and every evaluation image is predicted once here.
- Training sees the sampled images that have a valid box (w > 1 and h > 1), repeated ``dataset_copies`` times
  (GLIP's ``GENERAL_COPY``): one Lightning epoch is one pass over the repeated set, GLIP's evaluation period.
- Targets are built as ``CocoGrounding.__getitem__`` builds them: crowd boxes dropped, ``x2 = x + max(w - 1, 0)``
  in float32, clipped to ``[0, W - 1] x [0, H - 1]``, boxes left empty by the clip removed. An image can thus end
  with no box (only crowd or clipped-away boxes); it stays, as in GLIP, whose trainer then skips such a batch.

Reproducibility: the sampler yields ``(epoch, index)`` keys in an order drawn from ``(seed, epoch)`` only, and each
item's transform (random short side, flip) uses a ``random.Random`` seeded from ``(seed, epoch, index)``. Lightning
calls ``set_epoch`` on the sampler at every epoch start (also on resume, and through its distributed wrapper), so
batches are the same with 0 or N workers and in a resumed run.

Workers: for GLIP the collate holds only ``backend.config.input`` and runs :mod:`odinw_bench.models.glip.preprocess`
as ``GLIPBackend.preprocess`` does, so workers never receive the model; other backends (or a subclass overriding
``preprocess``) go through ``backend.preprocess``, which ships the backend to the workers.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from odinw_bench.data.images import CorruptImageCounter, load_rgb
from odinw_bench.data.sampling import parse_shots, sample_kshot
from odinw_bench.data.task_files import load_task_split
from odinw_bench.errors import UserError
from odinw_bench.models.base import DetectionBatch
from odinw_bench.training.eval_images import EvalImages
from odinw_bench.training.run_config import glip_dataset_copies

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence

    from PIL import Image

    from odinw_bench.data.coco import CocoImage, CocoSplit
    from odinw_bench.data.sampling import KShotSample
    from odinw_bench.models.base import DetectorBackend
    from odinw_bench.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

SAMPLER_CHOICES = ("auto", "prepared", "glip")
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts``, the same in every process (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def glip_train_target(annotations: Sequence[dict], width: int, height: int,
                      category_ids: Sequence[int]) -> tuple[list[list[float]], list[int]]:
    """One image's training target, as GLIP's ``CocoGrounding`` builds it from the file's annotations.

    Args:
        annotations: COCO annotations of the image (``bbox`` [x, y, w, h], ``category_id``, ``iscrowd``).
        width: Image width W.
        height: Image height H.
        category_ids: The task's category ids in label order.

    Returns:
        ``(boxes, labels)``: (G, 4) xyxy float32 values as lists (``x2 = x + max(w - 1, 0)``, clipped to
        ``[0, W - 1] x [0, H - 1]``, empty boxes removed) and (G,) 0-based indices into ``category_ids``.
    """
    kept = [a for a in annotations if not a.get("iscrowd", 0)]
    if not kept:
        return [], []
    label_of = {cat_id: i for i, cat_id in enumerate(category_ids)}
    xywh = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32)  # BoxList holds float32
    x1, y1, w, h = xywh.unbind(-1)
    boxes = torch.stack((x1, y1, x1 + (w - 1).clamp(min=0), y1 + (h - 1).clamp(min=0)), dim=-1)
    limits = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=torch.float32)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = [label_of[a["category_id"]] for a, k in zip(kept, keep.tolist()) if k]
    return boxes[keep].tolist(), labels


# ----------------------------------------------------------------------------------------------- batch building
@dataclass(frozen=True)
class GLIPBatchBuilder:
    """``GLIPBackend.preprocess`` without the model (picklable: holds only ``config.input``).

    Unlike the backend, each training image gets its own ``random.Random``, so an image's augmentation does not
    depend on its neighbours in the batch.
    """

    input: Any  # odinw_bench.models.glip.config.InputConfig

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[dict] | None = None,
                 seeds: Sequence[int] | None = None) -> DetectionBatch:
        """A :class:`DetectionBatch` (images (B, 3, Hp, Wp)) of RGB PIL images; with ``targets`` (per image
        ``{"boxes": (G, 4) xyxy original pixels, "labels": (G,)}``) and per-image ``seeds`` the training transform,
        else the test transform."""
        from odinw_bench.models.glip import preprocess

        inp = self.input
        tensors, out_targets = [], None if targets is None else []
        for i, image in enumerate(images):
            if targets is None:
                tensor, _ = preprocess.glip_test_transform(image, inp.min_size_test, inp.max_size_test)
            else:
                boxes = torch.as_tensor(targets[i]["boxes"], dtype=torch.float32).reshape(-1, 4)
                tensor, _, boxes = preprocess.glip_train_transform(
                    image, boxes, min_sizes=inp.min_size_train, max_size=inp.max_size_train,
                    flip_prob=inp.flip_prob_train, rng=random.Random(seeds[i]))
                out_targets.append({"boxes": boxes, "labels": torch.as_tensor(targets[i]["labels"]).long()})
            tensors.append(tensor)
        batch, image_sizes = preprocess.batch_images(tensors, inp.size_divisibility)
        return DetectionBatch(batch, image_sizes, [(im.size[1], im.size[0]) for im in images], out_targets)


@dataclass(frozen=True)
class BackendBatchBuilder:
    """Any backend's own ``preprocess``; training randomness from one ``random.Random`` per batch."""

    backend: Any

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[dict] | None = None,
                 seeds: Sequence[int] | None = None) -> DetectionBatch:
        if targets is None:
            return self.backend.preprocess(list(images))
        rng = random.Random(derive_seed(*seeds))
        return self.backend.preprocess(list(images), list(targets), train=True, rng=rng)


def make_batch_builder(backend: DetectorBackend) -> GLIPBatchBuilder | BackendBatchBuilder:
    """The model-free GLIP builder when ``backend`` uses GLIP's own ``preprocess``, else the backend's."""
    from odinw_bench.models.glip.backend import GLIPBackend

    if isinstance(backend, GLIPBackend) and type(backend).preprocess is GLIPBackend.preprocess:
        return GLIPBatchBuilder(backend.config.input)
    return BackendBatchBuilder(backend)


@dataclass(frozen=True)
class CollateToBatch:
    """DataLoader ``collate_fn``: dataset items -> :class:`DetectionBatch` carrying ``image_ids``."""

    builder: Any
    train: bool

    def __call__(self, items: list[tuple]) -> DetectionBatch:
        if self.train:
            images, targets, image_ids, seeds = zip(*items)
            batch = self.builder(images, targets, seeds)
        else:
            images, image_ids = zip(*items)
            batch = self.builder(images)
        batch.image_ids = list(image_ids)
        return batch


# ----------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class TrainRecord:
    """One training image and its GLIP target (plain lists, cheap to send to workers)."""

    image: CocoImage
    boxes: list[list[float]]
    labels: list[int]


class RepeatedTrainImages(Dataset):
    """The training images repeated ``copies`` times (GLIP's ``GENERAL_COPY``), keyed by ``(epoch, index)``.

    Items are ``(PIL image, {"boxes": (G, 4), "labels": (G,)}, image id, transform seed)``.
    """

    def __init__(self, records: Sequence[TrainRecord], copies: int, seed: int):
        self.records, self.copies, self.seed = list(records), copies, seed

    def __len__(self) -> int:
        return self.copies * len(self.records)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index % len(self.records)]
        image = load_rgb(record.image.path, expected_size=(record.image.width, record.image.height))
        target = {"boxes": torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(record.labels, dtype=torch.long)}
        return image, target, record.image.id, derive_seed("transform", self.seed, epoch, index)


class EpochShuffleSampler(Sampler):
    """A permutation of ``range(num_items)`` that depends only on ``(seed, epoch)``; yields ``(epoch, index)``.

    Lightning calls :meth:`set_epoch` at the start of every epoch; without it every pass repeats epoch 0's order.
    """

    def __init__(self, num_items: int, seed: int):
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed("order", self.seed, self.epoch))
        epoch = self.epoch
        return iter([(epoch, i) for i in torch.randperm(self.num_items, generator=generator).tolist()])


# ----------------------------------------------------------------------------------------------- data module
class ODinWDataModule(pl.LightningDataModule):
    """Train / val / test data of one task at one (shots, seed).

    Args:
        task: The task.
        data_root: The data root (the task's folder is ``data_root / task.root``).
        backend: The detector whose preprocessing builds the batches.
        shots: k, ``0`` (zero-shot: no training data) or ``"all"``.
        seed: Sampling and shuffling seed (GLIP: 3, 30, 300).
        sampler: ``"auto"`` (prepared file when present, else GLIP's rule), ``"prepared"`` or ``"glip"``.
        batch_size: Training images per batch (GLIP: 4).
        eval_batch_size: Images per evaluation batch (GLIP's zero-shot protocol: 1).
        num_workers: DataLoader worker processes.
        dataset_copies: Repeats of the training images per epoch; None for GLIP's 8/4/2/1 rule.
        val_split: Model-selection split (default ``task.val_split``).
        test_split: Reported split (default ``task.test_split``).
        subsample_val: Subsample the val split from GLIP's prepared few-shot val file when it exists.
        split_loader: ``(task, split, data_root) -> CocoSplit``; default :func:`load_task_split`. Sweep workers
            pass a cached loader so a task is indexed once per process.

    Attributes (after :meth:`setup`):
        train_sample, val_sample: The :class:`KShotSample` drawn (``val_sample`` None when val is not subsampled).
        train_split, val_split_data, test_split_data: The splits (train restricted to the sample, val possibly).
        train_records: The training images actually used (valid box, readable), in id order.
        skipped_images, skipped_paths: Unreadable training images skipped.
        sampler_used: The sampler that drew ``train_sample``.
    """

    def __init__(self, *, task: TaskSpec, data_root: str | Path, backend: DetectorBackend, shots: int | str,
                 seed: int, sampler: str = "auto", batch_size: int = 4, eval_batch_size: int = 1,
                 num_workers: int = 0, dataset_copies: int | None = None, val_split: str | None = None,
                 test_split: str | None = None, subsample_val: bool = True,
                 split_loader: Callable[..., CocoSplit] | None = None):
        super().__init__()
        if sampler not in SAMPLER_CHOICES:
            raise UserError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLER_CHOICES)}",
                            field="sampler")
        for name, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                 ("num_workers", num_workers, 0), ("dataset_copies", dataset_copies, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise UserError(f"expected an integer >= {low}, found {value!r}", field=name)
        self.task, self.data_root = task, Path(data_root)
        self.shots, self.seed, self.sampler = parse_shots(shots), seed, sampler
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.dataset_copies = glip_dataset_copies(self.shots) if dataset_copies is None else dataset_copies
        self.val_split_name = val_split or task.val_split
        self.test_split_name = test_split or task.test_split
        self.subsample_val = subsample_val
        self._load_split = split_loader or load_task_split
        self.batch_builder = make_batch_builder(backend)
        self.sampler_used: str | None = None
        self.train_sample: KShotSample | None = None
        self.val_sample: KShotSample | None = None
        self.train_split: CocoSplit | None = None
        self.val_split_data: CocoSplit | None = None
        self.test_split_data: CocoSplit | None = None
        self.train_records: list[TrainRecord] = []
        self.skipped_images = 0
        self.skipped_paths: list[str] = []
        self._ready = False

    # ------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the splits, draw the samples and check the training images (once; later calls do nothing)."""
        if self._ready:
            return
        task, root = self.task, self.data_root
        self.sampler_used = self._resolve_sampler()
        if self.shots == 0:
            self._setup_zero_shot()
            return
        train_full = self._load_split(task, "train", root)
        self.train_sample = sample_kshot(train_full, self.shots, self.seed, self.sampler_used, task=task,
                                         data_root=root, split_name="train")
        self.train_split = train_full.subset(self.train_sample.image_ids)
        val_full = self._load_split(task, self.val_split_name, root)
        if self.subsample_val and self._prepared_file(self.val_split_name) is not None:
            self.val_sample = sample_kshot(val_full, self.shots, self.seed, "prepared", task=task, data_root=root,
                                           split_name=self.val_split_name)
            self.val_split_data = val_full.subset(self.val_sample.image_ids)
        else:
            self.val_split_data = val_full
        self.test_split_data = self._load_split(task, self.test_split_name, root)
        self._build_train_records()
        self._ready = True
        logger.info("%s %s-shot seed %s (%s): %d training images x %d copies, %d val, %d test",
                    task.name, self.shots, self.seed, self.sampler_used, len(self.train_records),
                    self.dataset_copies, len(self.val_split_data.images), len(self.test_split_data.images))

    def _setup_zero_shot(self) -> None:
        """Zero-shot reads only the scored split: a task whose train and val files are absent still evaluates."""
        self.test_split_data = self._load_split(self.task, self.test_split_name, self.data_root)
        # The empty sample, described over the task's categories (every split is read with them).
        self.train_sample = sample_kshot(self.test_split_data, 0, self.seed, self.sampler_used, split_name="train")
        self.train_split = self.test_split_data.subset([])
        self.val_split_data = self.test_split_data.subset([])
        self._ready = True
        logger.info("%s zero-shot: %d %s images", self.task.name, len(self.test_split_data.images),
                    self.test_split_name)

    def _prepared_file(self, split_name: str) -> Path | None:
        """GLIP's prepared few-shot file of ``split_name`` for this (k, seed), when the task has one on disk."""
        if not isinstance(self.shots, int) or self.shots <= 0 or split_name not in self.task.fewshot:
            return None
        path = self.task.fewshot_file(split_name, self.shots, self.seed, self.data_root)
        return path if path.is_file() else None

    def _resolve_sampler(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "prepared" if self._prepared_file("train") is not None else "glip"

    def _build_train_records(self) -> None:
        """Keep sampled images with a valid box (GLIP's ``has_valid_annotation``) that can be decoded."""
        split, counter = self.train_split, CorruptImageCounter()
        valid = split.glip_valid_images
        source = split.original_annotations or split.annotations  # GLIP builds targets from the file's boxes
        records = []
        for image in split.images:
            if image.id not in valid:
                continue
            # Decoding every image once here keeps corrupt files out of the epoch order, so a skip never shifts
            # which images share a batch, and gives one exact count (workers could not report theirs).
            if counter.load(image.path, expected_size=(image.width, image.height)) is None:
                continue
            boxes, labels = glip_train_target(source.get(image.id, ()), image.width, image.height,
                                              self.task.category_ids)
            records.append(TrainRecord(image, boxes, labels))
        self.train_records = records
        self.skipped_images, self.skipped_paths = counter.n_skipped, list(counter.skipped)
        n_invalid = sum(1 for image in split.images if image.id not in valid)
        if n_invalid:
            logger.info("%d sampled training images have no valid box and are not trained on (as GLIP)", n_invalid)

    # ------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the repeated training images, with targets (``drop_last=False``).

        Raises:
            UserError: When there is nothing to train on (zero-shot, or no usable image).
        """
        self.setup()
        if not self.train_records:
            if self.shots == 0:
                reason = "shots=0 is zero-shot: there is no training data (evaluate without fitting)"
            else:
                reason = (f"no usable training image: {len(self.train_sample.image_ids)} sampled, "
                          f"{self.skipped_images} unreadable, the rest without a valid box")
            raise UserError(reason, field="shots")
        dataset = RepeatedTrainImages(self.train_records, self.dataset_copies, self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(dataset), self.seed),
                          drop_last=False, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=CollateToBatch(self.batch_builder, train=True))

    def val_dataloader(self) -> DataLoader:
        """The val images (possibly subsampled) in id order, without targets."""
        self.setup()
        return self._eval_loader(self.val_split_data)

    def test_dataloader(self) -> DataLoader:
        """The test images in id order, without targets."""
        self.setup()
        return self._eval_loader(self.test_split_data)

    def _eval_loader(self, split: CocoSplit) -> DataLoader:
        return DataLoader(EvalImages(split.images), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=CollateToBatch(self.batch_builder, train=False))

    # ------------------------------------------------------------------------------------------- records
    def describe(self) -> dict:
        """What the data of a run was, JSON-ready (for the run's results file)."""
        self.setup()
        return {
            "shots": self.shots, "seed": self.seed, "sampler": self.sampler_used,
            "train_sample": self.train_sample.to_dict(),
            "val_sample": None if self.val_sample is None else self.val_sample.to_dict(),
            "dataset_copies": self.dataset_copies, "train_images": len(self.train_records),
            "skipped_images": self.skipped_images, "skipped_paths": list(self.skipped_paths),
            "val_split": self.val_split_name, "val_images": len(self.val_split_data.images),
            "test_split": self.test_split_name, "test_images": len(self.test_split_data.images),
        }

    def state_dict(self) -> dict:
        """Saved in checkpoints, so a resumed run can check that it trains on the same images."""
        self.setup()
        return {"train_ids_hash": self.train_sample.ids_hash, "seed": self.seed,
                "dataset_copies": self.dataset_copies}

    def load_state_dict(self, state: dict) -> None:
        """Refuse to resume on another sample, seed or number of copies (the epochs would mean something else)."""
        mine = self.state_dict()
        differ = {k: (v, mine.get(k)) for k, v in state.items() if k in mine and mine[k] != v}
        if differ:
            detail = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in differ.items())
            raise UserError(f"the checkpoint was trained on other data ({detail})", field="ckpt_path")
