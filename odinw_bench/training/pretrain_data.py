"""Pre-training data: a grounding corpus (format version 1) as batches of images, captions, boxes and token maps.

One sample is one caption of the corpus: its image resized as the model's test transform does (short side
``input.min_size_test``; no flip, so no caption rewriting), the caption tokenised as GLIP tokenises prompts, and one
target per box the caption grounds: the box (xyxy, GLIP's ``x2 = x + w - 1``) and the 0/1 row of the tokens of its
phrase spans (GLIP's positive map). Batches come in a fixed order keyed on the global step (:class:`StepBatchSampler`)
so that a resumed pre-training sees exactly the batches an uninterrupted one sees.

Example::

    dm = PretrainDataModule(corpus_dir, input_config=cfg.input, max_query_len=256, batch_size=8, seed=0,
                            max_steps=2400)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))     # GroundingBatch
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from odinw_bench.errors import UserError
from odinw_bench.models.base import DetectionBatch

logger = logging.getLogger(__name__)

CORPUS_FORMAT = "odinw_bench-grounding-corpus"
CORPUS_VERSION = 1


# ----------------------------------------------------------------------------------------------- reading
def read_corpus_minimal(folder: str | Path) -> dict[str, Any]:
    """Read ``<folder>/corpus.json`` and check what pre-training needs (a stand-in for the corpus module's reader).

    Checks the format and version, that every caption's image exists, that every grounded annotation belongs to
    the caption's image with a positive ``w, h``, and that spans lie inside the text.

    Returns:
        The parsed corpus dict, plus ``"folder"`` (a Path).

    Raises:
        UserError: Naming ``corpus.json`` and the field (e.g. ``captions[3].boxes[0].spans[1]``), or a missing image.
    """
    from odinw_bench.jsonio import read_json_file

    folder = Path(folder)
    path = folder / "corpus.json"
    if not folder.is_dir():
        raise UserError("corpus folder not found", path=folder, field="--corpus")
    if not path.is_file():
        raise UserError("not a grounding corpus: corpus.json is missing", path=folder, field="--corpus")
    data = read_json_file(path, what="corpus file")

    def need(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise UserError(message, path=path, field=where)

    need(isinstance(data, dict), "(top level)", "expected a JSON object")
    need(data.get("format") == CORPUS_FORMAT, "format", f"expected {CORPUS_FORMAT!r}, found {data.get('format')!r}")
    need(data.get("version") == CORPUS_VERSION, "version", f"expected {CORPUS_VERSION}, found {data.get('version')!r}")
    need(isinstance(data.get("generator"), dict), "generator", "expected an object (name, version, seed)")
    for key in ("categories", "images", "annotations", "captions"):
        need(isinstance(data.get(key), list), key, "expected a list")
    images = {}
    for i, image in enumerate(data["images"]):
        need(isinstance(image, dict) and isinstance(image.get("id"), int), f"images[{i}].id", "expected an integer")
        need(isinstance(image.get("file_name"), str), f"images[{i}].file_name", "expected a file name")
        images[image["id"]] = image
    annotations = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        need(isinstance(ann, dict) and ann.get("image_id") in images, f"{where}.image_id", "no image has this id")
        bbox = ann.get("bbox")
        need(isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
             and bbox[2] > 0 and bbox[3] > 0, f"{where}.bbox", f"expected [x, y, w, h] with w, h > 0, found {bbox!r}")
        annotations[ann.get("id")] = ann
    need(bool(data["captions"]), "captions", "the corpus has no captions")
    for i, caption in enumerate(data["captions"]):
        _check_caption(caption, f"captions[{i}]", images, annotations, need)
    for image_id in {c["image_id"] for c in data["captions"]}:
        file = folder / "images" / images[image_id]["file_name"]
        if not file.is_file():
            raise UserError(f"image file of image {image_id} is missing", path=file)
    return {**data, "folder": folder}


def _check_caption(caption: Any, where: str, images: dict, annotations: dict, need: Any) -> None:
    need(isinstance(caption, dict) and caption.get("image_id") in images, f"{where}.image_id", "no image has this id")
    text = caption.get("text")
    need(isinstance(text, str) and text.strip() != "", f"{where}.text", "expected a non-empty string")
    need(isinstance(caption.get("boxes"), list), f"{where}.boxes", "expected a list")
    for j, box in enumerate(caption["boxes"]):
        ann = annotations.get(box.get("annotation_id")) if isinstance(box, dict) else None
        need(ann is not None and ann["image_id"] == caption["image_id"], f"{where}.boxes[{j}].annotation_id",
             "expected the id of an annotation of the caption's image")
        spans = box.get("spans")
        need(isinstance(spans, list) and bool(spans), f"{where}.boxes[{j}].spans", "expected a list of [start, end]")
        for k, span in enumerate(spans):
            need(isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)
                 and 0 <= span[0] < span[1] <= len(text), f"{where}.boxes[{j}].spans[{k}]",
                 f"expected [start, end] with 0 <= start < end <= {len(text)}, found {span!r}")


# ----------------------------------------------------------------------------------------------- samples
@dataclass
class GroundingBatch(DetectionBatch):
    """A :class:`DetectionBatch` whose images each have their own caption.

    Attributes:
        input_ids, attention_mask: (B, L) tokenised captions.
        captions: The caption texts.
        targets: Per image ``{"boxes": (G, 4) xyxy resized pixels, "positive_map": (G, L) 0/1}``.
    """

    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)

    def to(self, device: Any) -> GroundingBatch:
        targets = [{k: v.to(device) for k, v in t.items()} for t in self.targets or []]
        return GroundingBatch(self.images.to(device), self.image_sizes, self.original_sizes, targets,
                              self.image_ids, self.input_ids.to(device), self.attention_mask.to(device),
                              self.captions)


class GroundingCaptions(Dataset):
    """The corpus's captions; item ``i`` is ``(RGB image, caption text, boxes xyxy, token lists per box, image id)``.

    Args:
        corpus: The dict :func:`read_corpus_minimal` returns.
        max_query_len: Tokens the model reads; boxes whose phrase lies past them are dropped (as GLIP drops them).
    """

    def __init__(self, corpus: dict[str, Any], max_query_len: int):
        self.folder = Path(corpus["folder"])
        self.images = {im["id"]: im for im in corpus["images"]}
        self.annotations = {a["id"]: a for a in corpus["annotations"]}
        self.captions = list(corpus["captions"])
        self.max_query_len = max_query_len

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple:
        from odinw_bench.data.images import load_rgb
        from odinw_bench.training.datamodule import glip_train_target

        caption = self.captions[index]
        image = self.images[caption["image_id"]]
        pil = load_rgb(self.folder / "images" / image["file_name"])
        tokens = _box_tokens(caption, self.max_query_len)
        # GLIP's conversion (x2 = x + w - 1, clipped, empty boxes removed); "labels" index the caption's boxes.
        anns = [{"bbox": self.annotations[b["annotation_id"]]["bbox"], "category_id": i}
                for i, b in enumerate(caption["boxes"])]
        boxes, kept = glip_train_target(anns, pil.width, pil.height, list(range(len(anns))))
        pairs = [(box, tokens[i]) for box, i in zip(boxes, kept) if tokens[i]]
        return pil, caption["text"], [p[0] for p in pairs], [p[1] for p in pairs], image["id"]


def _box_tokens(caption: dict, max_query_len: int) -> list[list[int]]:
    """Per box of ``caption``, the token indices of all its spans (``[CLS]`` is 0), GLIP's char-to-token rules."""
    from odinw_bench.data.prompts import Caption, positive_map

    spans = [tuple(span) for box in caption["boxes"] for span in box["spans"]]
    label_tokens = positive_map(Caption(caption["text"], tuple(spans)), max_length=max_query_len)
    out, label = [], 1
    for box in caption["boxes"]:
        tokens: set[int] = set()
        for _ in box["spans"]:
            tokens.update(label_tokens.get(label, ()))
            label += 1
        out.append(sorted(tokens))
    return out


@dataclass(frozen=True)
class GroundingCollate:
    """DataLoader ``collate_fn``: dataset items -> :class:`GroundingBatch` (picklable for worker processes)."""

    input: Any  # odinw_bench.models.glip.config.InputConfig
    max_query_len: int

    def __call__(self, items: list[tuple]) -> GroundingBatch:
        from odinw_bench.data.prompts import positive_map_tensor
        from odinw_bench.data.tokenizer import tokenize_prompts
        from odinw_bench.models.glip import preprocess

        tensors, targets = [], []
        for pil, _, boxes, tokens, _ in items:
            tensor, size = preprocess.glip_test_transform(pil, self.input.min_size_test, self.input.max_size_test)
            boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            boxes = preprocess.resize_boxes(boxes, pil.size, (size[1], size[0]))
            rows = positive_map_tensor({i + 1: t for i, t in enumerate(tokens)}, len(tokens), self.max_query_len)
            tensors.append(tensor)
            targets.append({"boxes": boxes, "positive_map": rows})
        images, sizes = preprocess.batch_images(tensors, self.input.size_divisibility)
        texts = [item[1] for item in items]
        enc = tokenize_prompts(texts, max_length=self.max_query_len)
        return GroundingBatch(images, sizes, [(it[0].height, it[0].width) for it in items], targets,
                              [it[4] for it in items], enc["input_ids"], enc["attention_mask"], texts)


class StepBatchSampler(Sampler):
    """The batches of the steps still to run, keyed on the global step: one Lightning epoch is the whole run.

    The caption stream is the concatenation of permutations ``p_0, p_1, ...`` of the corpus (``p_k`` seeded by
    ``(seed, k)``); global step ``s`` takes stream items ``[s * B, (s + 1) * B)``. Iteration starts at
    ``start_step()`` (the trainer's global step once a checkpoint is restored), so a resumed pre-training sees
    exactly the batches an uninterrupted one sees, whatever Lightning's loops believe about epochs.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, max_steps: int,
                 start_step: Callable[[], int] = lambda: 0):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.max_steps, self.start_step = max_steps, start_step
        self._perm: tuple[int, list[int]] = (-1, [])

    def __len__(self) -> int:
        return self.max_steps

    def _item(self, position: int) -> int:
        from odinw_bench.training.datamodule import derive_seed

        k, offset = divmod(position, self.num_items)
        if self._perm[0] != k:
            generator = torch.Generator().manual_seed(derive_seed("pretrain-order", self.seed, k))
            self._perm = (k, torch.randperm(self.num_items, generator=generator).tolist())
        return self._perm[1][offset]

    def __iter__(self):
        for step in range(self.start_step(), self.max_steps):
            yield [self._item(step * self.batch_size + i) for i in range(self.batch_size)]


class PretrainDataModule(pl.LightningDataModule):
    """The training loader of a pre-training (no validation: pre-training runs a fixed number of steps).

    Args:
        corpus_dir: The corpus folder.
        input_config: The model's ``InputConfig`` (resize sizes, padding).
        max_query_len: The model's token window.
        batch_size, num_workers, seed: Loader settings; ``seed`` fixes the caption order.
        max_steps: Total optimizer steps.
    """

    def __init__(self, corpus_dir: str | Path, *, input_config: Any, max_query_len: int, batch_size: int, seed: int,
                 max_steps: int, num_workers: int = 0):
        super().__init__()
        self.corpus_dir = Path(corpus_dir)
        self.input_config, self.max_query_len = input_config, max_query_len
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.max_steps = max_steps
        self.corpus: dict[str, Any] | None = None
        self.dataset: GroundingCaptions | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.corpus = read_corpus_minimal(self.corpus_dir)
            self.dataset = GroundingCaptions(self.corpus, self.max_query_len)

    def train_dataloader(self) -> DataLoader:
        sampler = StepBatchSampler(len(self.dataset), self.batch_size, self.seed, self.max_steps,
                                   start_step=self._global_step)
        # Its own generator: creating an iterator draws a base seed, and from the global RNG that draw would make
        # a resumed run's dropout masks differ from an uninterrupted run's (it creates one iterator more).
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers, generator=generator,
                          collate_fn=GroundingCollate(self.input_config, self.max_query_len),
                          persistent_workers=self.num_workers > 0)

    def _global_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def describe(self) -> dict[str, Any]:
        """The corpus facts a model card records."""
        corpus = self.corpus or {}
        return {"path": str(self.corpus_dir), "format": corpus.get("format"), "version": corpus.get("version"),
                "generator": corpus.get("generator"), "images": len(corpus.get("images", [])),
                "captions": len(corpus.get("captions", [])), "categories": len(corpus.get("categories", []))}
