"""GLIP behind the backend contract: images and category names in, detections with category indices out.

Example:
    >>> from PIL import Image
    >>> from odinw_bench.models.glip.backend import load_glip
    >>> model = load_glip("glip-t")                       # downloads once, then converts to safetensors  # doctest: +SKIP
    >>> model = load_glip(config="glip_Swin_T_O365_GoldG.yaml", checkpoint="glip_tiny.pth")      # doctest: +SKIP
    >>> dets = model.predict_images([Image.open("fish.jpg")], ["fish", "shark"])                 # doctest: +SKIP
    >>> dets[0].boxes, dets[0].scores, dets[0].labels    # xyxy original pixels; labels index the names  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from odinw_bench.errors import UserError
from odinw_bench.models.base import (
    DetectionBatch,
    Detections,
    DetectorBackend,
    groups_by_prefix,
)
from odinw_bench.models.glip import preprocess
from odinw_bench.models.glip.config import GLIPConfig, get_preset
from odinw_bench.models.glip.model import GLIP
from odinw_bench.models.glip.official_config import from_official_yaml
from odinw_bench.models.glip.postprocess import rescale_boxes

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from odinw_bench.data.prompts import TaskPrompt
    from odinw_bench.models.glip.checkpoint import LoadReport
    from odinw_bench.tasks.spec import PromptSpec

logger = logging.getLogger(__name__)

# Parameter-name prefixes of the groups a regime can train (GLIP's module layout); the first match wins. ``head``
# is what GLIP's LINEAR_PROB rule trains: the head's tensors named bbox_pred, cls_logits, centerness,
# dot_product_projection_text, log_scale, bias_lang, bias0 (cosine_scale where present); the per-level box
# ``scales`` are not among them.
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "backbone": ("model.backbone.body.",),
    "fpn": ("model.backbone.fpn.",),
    "language": ("model.language_backbone.",),
    "tower": ("model.rpn.head.dyhead_tower.",),
    "scales": ("model.rpn.head.scales.",),
    "head": ("model.rpn.head.",),
    "prompt": ("model.rpn.tunable_linear.",),
    "deep_prompt": ("model.rpn.deep_prompts.",),
}
# Never trained: the dead classifier of the dot-product head (GLIP freezes it in every regime).
NEVER_TRAINED_PREFIXES = ("model.rpn.head.cls_logits.",)


class GLIPBackend(nn.Module, DetectorBackend):
    """GLIP with its preprocessing, prompts, chunked prediction and losses.

    Args:
        config: The model configuration (a preset or an official YAML read by ``from_official_yaml``).
    """

    name = "glip"

    def __init__(self, config: GLIPConfig):
        super().__init__()
        self.config = config
        self.model = GLIP(config)
        self.checkpoint: str | None = None
        self._prompt: TaskPrompt | None = None
        self._train_prompt: TaskPrompt | None = None
        # Caption tokens and the training label -> token map, built once per caption instead of per batch.
        self._token_cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._caption_tokens: dict[str, int] = {}  # caption -> its tokens (mask ones), counted on the host
        self._label_map_cache: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def from_preset(cls, name: str) -> GLIPBackend:
        """A randomly initialised model of a named preset (``glip-micro`` for tests and the demo)."""
        return cls(get_preset(name))

    def load_checkpoint(self, path: str | Path, *, trust: bool = False, strict: bool = True) -> LoadReport:
        """Load an official ``.pth`` (``model`` dict, ``module.`` prefixes) or a converted ``.safetensors``."""
        from odinw_bench.models.glip.checkpoint import read_checkpoint

        return self.load_state(read_checkpoint(path, trust=trust), source=path, strict=strict)

    def load_state(self, state: dict, *, source: str | Path, strict: bool = True) -> LoadReport:
        """Load a state dict already read (official names); values are copied, ``state`` is never changed."""
        from odinw_bench.models.glip.checkpoint import load_glip_state_dict

        if "rpn.tunable_linear.weight" in state:  # a prompt-tuned checkpoint: GLIP built with ADD_LINEAR_LAYER
            self.enable_prompt_tuning()
        if "rpn.deep_prompts.weight" in state:  # a deep-prompt-tuned checkpoint of this harness
            self.enable_deep_prompts(int(state["rpn.deep_prompts.weight"].shape[1]))
        report = load_glip_state_dict(self.model, state, strict=strict, source=source)
        self.checkpoint = str(source)
        return report

    # ----------------------------------------------------------------------------------------------- vocabulary
    def set_vocabulary(self, categories: Sequence[str], prompt: PromptSpec | None = None) -> None:
        """Fix the categories (label order) and the prompt; builds the evaluation and training captions."""
        from odinw_bench.data.prompts import TaskPrompt

        max_len = self.model.max_query_len
        self._prompt = TaskPrompt.from_names(list(categories), prompt, max_length=max_len)
        self._train_prompt = TaskPrompt.from_names(list(categories), prompt, max_length=max_len, for_training=True)
        width = self.config.dyhead.num_classes - 1
        widest = max(len(chunk.labels) for chunk in self._prompt.chunks)
        if widest > width:
            raise UserError(f"a prompt chunk has {widest} categories but the model scores at most {width} "
                            "(MODEL.DYHEAD.NUM_CLASSES - 1)", field="categories")

    @property
    def prompt(self) -> TaskPrompt:
        if self._prompt is None:
            raise RuntimeError("call set_vocabulary(categories) first")
        return self._prompt

    # ----------------------------------------------------------------------------------------------- images
    def preprocess(self, images: Sequence[Image.Image], targets: Sequence[dict] | None = None,
                   train: bool = False, rng: Any = None) -> DetectionBatch:
        """GLIP's transforms: resize (test: short side 800 / max 1333; train: random short side + flip), BGR×255
        normalisation, zero padding to a multiple of 32.

        Args:
            images: RGB PIL images.
            targets: Per image ``{"boxes": (G, 4) xyxy original pixels (GLIP's x2 = x + w - 1), "labels": (G,)
                0-based category indices}``.
            train: Use the training transform (needs ``targets``).
            rng: ``random.Random`` for the training transform.
        """
        inp = self.config.input
        tensors, sizes, out_targets = [], [], [] if targets is not None else None
        for i, image in enumerate(images):
            if train:
                boxes = torch.as_tensor(targets[i]["boxes"], dtype=torch.float32).reshape(-1, 4)
                tensor, size, boxes = preprocess.glip_train_transform(
                    image, boxes, min_sizes=inp.min_size_train, max_size=inp.max_size_train,
                    flip_prob=inp.flip_prob_train, rng=rng)
            else:
                tensor, size = preprocess.glip_test_transform(image, inp.min_size_test, inp.max_size_test)
                if targets is not None:
                    boxes = preprocess.resize_boxes(torch.as_tensor(targets[i]["boxes"], dtype=torch.float32)
                                                    .reshape(-1, 4), image.size, (size[1], size[0]))
            tensors.append(tensor)
            sizes.append(size)
            if out_targets is not None:
                out_targets.append({"boxes": boxes, "labels": torch.as_tensor(targets[i]["labels"]).long()})
        batch, image_sizes = preprocess.batch_images(tensors, inp.size_divisibility)
        original = [(im.size[1], im.size[0]) for im in images]
        return DetectionBatch(batch, image_sizes, original, out_targets)

    def chunk_tokens(self, chunk: Any, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each (batch_size, L), of a prompt chunk's caption.

        Every image of a batch shares the caption, so it is tokenised once per caption (cached) and expanded.
        L is GLIP's padded length (256), or with ``model.trim_text`` the caption's own (``trimmed_width``,
        measured here on the host: the model would otherwise read the mask back from the GPU at every step).
        """
        from odinw_bench.models.glip.model import trimmed_width

        key = (chunk.text, str(device))
        if key not in self._token_cache:
            from odinw_bench.data.tokenizer import tokenize_prompts

            # Cached tensors may be reused by a training step, so never create them as inference-mode tensors.
            with torch.inference_mode(False):
                enc = tokenize_prompts([chunk.text], max_length=self.model.max_query_len)
                ids, mask = enc["input_ids"], enc["attention_mask"]
                self._token_cache[key] = (ids.to(device), mask.to(device), trimmed_width(mask))
                self._caption_tokens[chunk.text] = int(mask.sum())
        input_ids, mask, width = self._token_cache[key]
        if self.model.trim_text:
            input_ids, mask = input_ids[:, :width], mask[:, :width]
        return input_ids.expand(batch_size, -1), mask.expand(batch_size, -1)

    # ----------------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, batch: DetectionBatch) -> list[Detections]:
        """Detections per image, boxes rescaled to the original image, labels indexing the vocabulary.

        Each prompt chunk is a separate forward pass; chunk results are concatenated without cross-chunk NMS
        (GLIP's chunked evaluation).
        """
        device = batch.images.device
        per_image: list[list[dict[str, torch.Tensor]]] = [[] for _ in batch.image_sizes]
        for chunk in self.prompt.chunks:
            input_ids, mask = self.chunk_tokens(chunk, len(batch.image_sizes), device)
            results = self.model.predict(batch.images, batch.image_sizes, input_ids, mask, chunk.positive_map)
            global_labels = torch.as_tensor(chunk.labels, dtype=torch.long, device=device)
            for i, res in enumerate(results):
                res = dict(res, labels=global_labels[res["labels"] - 1])
                per_image[i].append(res)
        out = []
        for i, parts in enumerate(per_image):
            boxes = torch.cat([p["boxes"] for p in parts])
            boxes = rescale_boxes(boxes, batch.image_sizes[i], batch.original_sizes[i])
            out.append(Detections(boxes=boxes, scores=torch.cat([p["scores"] for p in parts]),
                                  labels=torch.cat([p["labels"] for p in parts])))
        return out

    # ----------------------------------------------------------------------------------------------- train
    def compute_losses(self, batch: DetectionBatch) -> dict[str, torch.Tensor]:
        """GLIP's losses for a batch with targets; the caption holds every category (GLIP's training rule)."""
        if batch.targets is None:
            raise ValueError("compute_losses needs a batch with targets")
        if self._train_prompt is None:
            raise RuntimeError("call set_vocabulary(categories) first")
        chunks = self._train_prompt.chunks
        if len(chunks) != 1:
            raise UserError(f"fine-tuning needs all categories in one caption of {self.model.max_query_len} "
                            f"tokens; this vocabulary needs {len(chunks)}", field="categories")
        chunk = chunks[0]
        device = batch.images.device
        input_ids, mask = self.chunk_tokens(chunk, len(batch.image_sizes), device)
        key = (chunk.text, str(device))
        if key not in self._label_map_cache:  # (C, L) 0/1, C in label order
            with torch.inference_mode(False):
                self._label_map_cache[key] = chunk.positive_map_tensor(self.model.max_query_len).to(device)
        label_map = self._label_map_cache[key]
        targets = [{"boxes": t["boxes"], "positive_map": label_map[t["labels"]]} for t in batch.targets]
        return self.model.compute_losses(batch.images, input_ids, mask, targets, batch.image_sizes,
                                         real_tokens=self._caption_tokens[chunk.text])

    # ----------------------------------------------------------------------------------------------- params
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by group; ``head`` excludes the tower, every parameter is in exactly one group."""
        return groups_by_prefix(self, GROUP_PREFIXES)

    @property
    def captions(self) -> list[str]:
        return self.prompt.captions

    def set_feature_cache(self, cache: Any) -> None:
        """Frozen stages' outputs reused through ``cache`` (:mod:`odinw_bench.models.glip.feature_cache`)."""
        self.model.feature_cache = cache

    def frozen_stage_names(self, freeze_at: int) -> list[str]:
        """Swin's patch embedding and stages ``0 .. freeze_at - 2`` (GLIP's ``_freeze_stages``); none for -1."""
        if freeze_at < 0:
            return []
        prefixes = ("model.backbone.body.patch_embed.",
                    *(f"model.backbone.body.layers.{stage}." for stage in range(max(freeze_at - 1, 0))))
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def never_trained_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if name.startswith(NEVER_TRAINED_PREFIXES)]

    def enable_prompt_tuning(self) -> None:
        """Add GLIP's zero-initialised prompt offset (``rpn.tunable_linear``)."""
        self.model.rpn.add_tunable_linear()

    def enable_deep_prompts(self, tokens: int) -> None:
        """Add ``tokens`` learnable text tokens per fusion step (``rpn.deep_prompts``; see
        :class:`odinw_bench.models.glip.fusion.DeepPrompts`)."""
        try:
            self.model.rpn.add_deep_prompts(tokens)
        except ValueError as err:
            raise UserError(f"backend '{self.name}': {err}", field="--regime") from err

    def set_cached_tower(self, on: bool) -> None:
        """Run each image through the frozen tower alone, so its output is cached across epochs (see
        :meth:`odinw_bench.models.glip.model.GLIP._fused_per_image`); off is GLIP's batch computation."""
        self.model.per_image_tower = bool(on)


def load_glip(preset: str | None = None, *, config: str | Path | None = None, checkpoint: str | Path | None = None,
              trust_checkpoint: bool = False, bert_config: dict | None = None) -> GLIPBackend:
    """Build GLIP from a preset or an official YAML, and load its weights.

    Args:
        preset: ``glip-t-a``, ``glip-t-b``, ``glip-t-c``, ``glip-t``, ``glip-l``, ``glip-micro`` or ``glip-nano``.
        config: An official GLIP YAML config file (instead of a preset).
        checkpoint: A local ``.pth`` / ``.safetensors``; without it a zoo preset is downloaded from the hub
            (``GLIPModel/GLIP``) once and cached, ``glip-nano`` loads the weights shipped in the package
            (:mod:`~odinw_bench.models.glip.shipped`, sha256-checked; random init when none ship) and
            ``glip-micro`` stays randomly initialised.
        trust_checkpoint: Allow full unpickling of a ``.pth`` that is not a plain weights file.
        bert_config: BERT sizes for an official YAML of a non-standard language model.

    Returns:
        The model in eval mode.
    """
    if (preset is None) == (config is None):
        raise UserError("give either a preset name or an official config file", field="model")
    cfg = get_preset(preset) if preset is not None else from_official_yaml(config, bert_config=bert_config)
    backend = GLIPBackend(cfg)
    if checkpoint is None and preset is not None:
        from odinw_bench.models.glip.shipped import SHIPPED_PRESETS, shipped_checkpoint

        if cfg.name in SHIPPED_PRESETS:  # weights in the package, checked against their card; none: random init
            checkpoint = shipped_checkpoint(cfg.name)
        elif cfg.name != "glip-micro":
            from odinw_bench.models.glip.zoo import fetch_checkpoint

            checkpoint = fetch_checkpoint(preset, trust=trust_checkpoint)
    if checkpoint is not None:
        backend.load_checkpoint(checkpoint, trust=trust_checkpoint)
    else:
        logger.warning("%s has random weights: its detections are meaningless until it is trained", cfg.name)
    return backend.eval()
