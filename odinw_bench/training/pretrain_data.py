"""Pre-training data: a grounding corpus (format version 1) as batches of images, captions, boxes and token maps.

One sample is one caption of the corpus: its image resized as the model's test transform does (short side
``input.min_size_test``; no flip, so no caption rewriting), the caption tokenised as GLIP tokenises prompts, and one
target per box the caption grounds: the box (xyxy, GLIP's ``x2 = x + w - 1``) and the 0/1 row of the tokens of its
phrase spans (GLIP's positive map). Batches come in a fixed order keyed on the global step (:class:`StepBatchSampler`)
so that a resumed pre-training sees exactly the batches an uninterrupted one sees.

Example::

    dm = PretrainDataModule(corpus_dir, input_config=cfg.input, max_query_len=256, batch_size=8, seed=0,
                            max_steps=2000)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))     # GroundingBatch
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from odinw_bench.models.base import DetectionBatch

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.data.corpus_reader import Corpus

logger = logging.getLogger(__name__)

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
        corpus: A corpus :func:`odinw_bench.data.corpus_reader.read_corpus` validated.
        max_query_len: Tokens the model reads; boxes whose phrase lies past them are dropped (as GLIP drops them).
    """

    def __init__(self, corpus: Corpus, max_query_len: int):
        self.corpus = corpus
        self.images = {im.id: im for im in corpus.images}
        self.annotations = {a.id: a for a in corpus.annotations}
        self.captions = list(corpus.captions)
        self.max_query_len = max_query_len

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple:
        from odinw_bench.data.corpus_reader import caption_token_map
        from odinw_bench.data.images import load_rgb
        from odinw_bench.training.datamodule import glip_train_target

        caption = self.captions[index]
        image = self.images[caption.image_id]
        pil = load_rgb(self.corpus.image_path(image))
        token_map = caption_token_map(caption, max_length=self.max_query_len)
        tokens = [token_map.get(box.annotation_id, []) for box in caption.boxes]
        # GLIP's conversion (x2 = x + w - 1, clipped, empty boxes removed); "labels" index the caption's boxes.
        anns = [{"bbox": list(self.annotations[b.annotation_id].bbox), "category_id": i}
                for i, b in enumerate(caption.boxes)]
        boxes, kept = glip_train_target(anns, pil.width, pil.height, list(range(len(anns))))
        pairs = [(box, tokens[i]) for box, i in zip(boxes, kept) if tokens[i]]
        return pil, caption.text, [p[0] for p in pairs], [p[1] for p in pairs], image.id


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
        self.corpus: Corpus | None = None
        self.dataset: GroundingCaptions | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            from odinw_bench.data.corpus_reader import read_corpus

            self.corpus = read_corpus(self.corpus_dir)
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
        from odinw_bench.data.corpus_reader import FORMAT_NAME, FORMAT_VERSION

        corpus = self.corpus
        if corpus is None:
            return {"path": str(self.corpus_dir)}
        return {"path": str(self.corpus_dir), "format": FORMAT_NAME, "version": FORMAT_VERSION,
                "generator": dict(corpus.generator), "images": len(corpus.images), "captions": len(corpus.captions),
                "categories": len(corpus.categories)}
