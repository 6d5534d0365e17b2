"""OWLv2 (transformers' ``Owlv2ForObjectDetection``) behind the backend contract.

The model embeds every text query on its own and scores every image patch against every query; each patch also
predicts one box. This module adds the contract around it: one query per (prompt template, category)
(:mod:`~odinw_bench.models.hf.owl_queries`), the model's own image processor (pad to a square, resize), the authors'
or transformers' scoring (:mod:`~odinw_bench.models.hf.owl_scoring`), the OWL-ViT set-prediction loss transformers
lacks (:mod:`~odinw_bench.models.hf.owl_loss`), parameter groups and prompt tuning.

Objectness: OWLv2's objectness head reads detached features (transformers and scenic stop its gradient), and neither
the authors' text-query evaluation nor transformers' post-processing uses it. The loss does not train it: it forms
the ``objectness`` group and is listed by :meth:`Owlv2Backend.never_trained_names`, as is CLIP's image-level
projection and temperature (``contrastive``), which detection never reads.

Example:
    >>> backend = Owlv2Backend.from_preset("owlv2-b")                               # doctest: +SKIP
    >>> backend = Owlv2Backend.from_pretrained("path/to/saved_model")               # doctest: +SKIP
    >>> dets = backend.predict_images([pil_image], ["fish", "jellyfish"])            # doctest: +SKIP
    >>> dets[0].boxes, dets[0].scores, dets[0].labels   # xyxy original pixels; labels index the names  # doctest: +SKIP
"""

from __future__ import annotations

import random
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
from odinw_bench.models.hf import owl_scoring, supervision
from odinw_bench.models.hf.owl_loss import LossWeights, set_prediction_loss
from odinw_bench.models.hf.owl_queries import (
    AUTHORS_TEMPLATES,
    check_templates,
    query_texts,
    tokenize_queries,
)
from odinw_bench.models.hf.scoring import checked_scoring

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from odinw_bench.tasks.spec import PromptSpec

_VISION = "model.owlv2.vision_model."
# Parameter-name prefixes of each group, checked in this order (the first match wins). ``head`` is what a linear probe
# trains: the class head (its projection and the per-patch logit shift and scale) and the box MLP. ``backbone`` is the
# ViT with the layer norm that merges the class token into the patch tokens (scenic's ``merge_class_token='mul-ln'``,
# part of its image body); ``language`` the text transformer and its projection into the query space.
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt_offset",),
    "head": ("model.class_head.", "model.box_head."),
    "objectness": ("model.objectness_head.",),
    "contrastive": ("model.owlv2.visual_projection.", "model.owlv2.logit_scale"),
    "language": ("model.owlv2.text_model.", "model.owlv2.text_projection."),
    "backbone": (_VISION, "model.layer_norm."),
}
# Groups the detection loss sends no gradient to (see the module docstring).
NEVER_TRAINED = ("objectness", "contrastive")


def load_owlv2(source: str | Path, local_files_only: bool | None = None) -> tuple[nn.Module, Any]:
    """Model (eval mode) and ``Owlv2Processor`` of a hub id or ``save_pretrained`` folder.

    Raises:
        UserError: For a source without a config, of another ``model_type``, without weights, without a processor
            (OWLv2 has no default tokenizer to fall back on), or with a processor the model cannot read.
    """
    from odinw_bench.models.hf.loading import load_model, read_config, resolve_offline

    source = Path(source).expanduser() if str(source).startswith("~") else source
    offline = resolve_offline(local_files_only)
    model_type = read_config(source, offline).get("model_type")
    if model_type != "owlv2":
        raise UserError(f"model_type '{model_type}' is not an OWLv2 model (expected 'owlv2')", path=source,
                        field="model_type")
    model = load_model(source, "Owlv2ForObjectDetection", offline)
    processor = _processor(source, offline)
    _check_processor(processor, model.config, source)
    return model, processor


def _processor(source: str | Path, offline: bool) -> Any:
    from transformers import Owlv2Processor

    try:
        return Owlv2Processor.from_pretrained(str(source), local_files_only=offline)
    except (OSError, ValueError, TypeError) as err:
        # transformers' message goes on about the hub; its first sentence names what is missing.
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise UserError(f"has no usable OWLv2 processor; save the Owlv2Processor with the model ({first})",
                        path=source, field="processor") from None


def _check_processor(processor: Any, config: Any, source: str | Path) -> None:
    """The processor's square input must be the model's image size, its tokenizer within the text vocabulary."""
    size = processor.image_processor.size
    side = config.vision_config.image_size
    if (size.get("height"), size.get("width")) != (side, side):
        raise UserError(f"the image processor resizes to {size} but the model reads {side}x{side} images",
                        path=source, field="processor")
    if len(processor.tokenizer) > config.text_config.vocab_size:
        raise UserError(f"the tokenizer has {len(processor.tokenizer)} tokens but the text model only "
                        f"{config.text_config.vocab_size}", path=source, field="tokenizer")


class Owlv2Backend(nn.Module, DetectorBackend):
    """An OWLv2 detector with its processor, text queries, scoring and losses.

    Args:
        model: ``Owlv2ForObjectDetection``.
        processor: Its ``Owlv2Processor`` (image processor and CLIP tokenizer).
        source: Where the weights came from (hub id or folder), for provenance.
        score_rule: ``topk`` (the authors' evaluation) or ``pipeline`` (transformers' post-processing); see
            :mod:`odinw_bench.models.hf.owl_scoring`.
        topk: (patch, category) pairs kept per image by the ``topk`` rule (the authors: 300).
        score_threshold: Detections must score strictly above it (``topk``: 0, as the authors; transformers'
            post-processing default is 0.1).
        templates: Prompt templates with one ``{}`` each; class logits are averaged over them (the authors' seven
            by default; ``("{}",)`` queries the plain names).
        flip_prob: Horizontal flip probability of the training transform.
        loss_weights: Coefficients of the matching cost and loss (OWL-ViT's by default).
    """

    name = "owlv2"

    def __init__(self, model: nn.Module, processor: Any, *, source: str | Path | None = None,
                 score_rule: str = "topk", topk: int = 300, score_threshold: float = 0.0,
                 templates: Sequence[str] = AUTHORS_TEMPLATES, flip_prob: float = 0.5,
                 loss_weights: LossWeights | None = None):
        super().__init__()
        self.model = model
        self.processor = processor
        self.source = None if source is None else str(source)
        self.flip_prob = float(flip_prob)
        self.templates = check_templates(templates)
        self.loss_weights = loss_weights if loss_weights is not None else LossWeights()
        self.configure_scoring(score_rule, topk=topk, threshold=score_threshold)
        self.register_parameter("prompt_offset", None)
        self._prompt_hook: Any = None
        self._texts: list[str] | None = None
        self._num_categories = 0
        # Token tensors per device, built once per vocabulary, not per batch.
        self._token_cache: dict[str, dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, source: str | Path, *, local_files_only: bool | None = None,
                        **options: Any) -> Owlv2Backend:
        """Load a hub id or a ``save_pretrained`` folder (model and processor; see :func:`load_owlv2`).

        Args:
            source: Hub id or local folder; its ``model_type`` must be ``owlv2``.
            local_files_only: Never reach the network; None follows offline mode (``HF_HUB_OFFLINE``).
            options: Constructor options (``score_rule``, ``topk``, ``score_threshold``, ``templates``, ...).
        """
        model, processor = load_owlv2(source, local_files_only)
        return cls(model, processor, source=source, **options).eval()

    @classmethod
    def from_preset(cls, name: str, *, local_files_only: bool | None = None, **options: Any) -> Owlv2Backend:
        """Load a preset (:func:`odinw_bench.models.hf.owl_presets.presets`) with its templates and scoring.

        Raises:
            UserError: For an unknown preset, weights that cannot be read, or a processor of another input size.
        """
        from odinw_bench.models.hf.owl_presets import get_preset

        preset = get_preset(name)
        settings = {"score_rule": preset["score_rule"], "topk": preset["topk"],
                    "score_threshold": preset["score_threshold"], "templates": tuple(preset["prompt_templates"])}
        backend = cls.from_pretrained(preset["hub_id"], local_files_only=local_files_only, **{**settings, **options})
        if backend.image_size != preset["image_size"]:
            raise UserError(f"preset '{name}' expects {preset['image_size']} px inputs but {preset['hub_id']} reads "
                            f"{backend.image_size} px", field="model")
        return backend

    def configure_scoring(self, rule: str, *, topk: int = 300, threshold: float = 0.0) -> None:
        """Choose how predictions are scored (:mod:`odinw_bench.models.hf.owl_scoring`).

        Raises:
            UserError: For an unknown rule or a ``topk`` below 1.
        """
        self.score_rule, self.topk, self.score_threshold = checked_scoring(rule, topk, threshold, owl_scoring.SCORE_RULES)

    @property
    def image_size(self) -> int:
        """Side of the square the model reads (960 for OWLv2 B/16, 1008 for L/14)."""
        return int(self.model.config.vision_config.image_size)

    @property
    def max_text_len(self) -> int:
        """Tokens per query (16 for every published OWL checkpoint); longer queries are truncated."""
        return int(self.model.config.text_config.max_position_embeddings)

    # ----------------------------------------------------------------------------------------------- vocabulary
    def set_vocabulary(self, categories: Sequence[str], prompt: PromptSpec | None = None) -> None:
        """Fix the categories (label order): one query per template and category (``prompt`` changes the phrase
        put into each template).

        Raises:
            UserError: For an empty phrase, or a category count other than the prompt offset's once tuning is on.
        """
        texts = query_texts(categories, prompt, templates=self.templates)
        count = len(texts) // len(self.templates)
        if self.prompt_offset is not None and self.prompt_offset.shape[0] != count:
            raise UserError(f"prompt tuning holds one offset per category ({self.prompt_offset.shape[0]}); this "
                            f"vocabulary has {count}", field="categories")
        self._texts, self._num_categories = texts, count
        self._token_cache.clear()

    @property
    def captions(self) -> list[str]:
        """The query texts, template-major (query ``t * C + c`` is template ``t`` for category ``c``)."""
        if self._texts is None:
            raise RuntimeError("call set_vocabulary(categories) first")
        return list(self._texts)

    def _query_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (Q, max_text_len) of the queries on ``device``, tokenized once."""
        key = str(device)
        if key not in self._token_cache:
            # A training step may reuse cached tensors, so never create them as inference-mode tensors.
            with torch.inference_mode(False):
                encoded = tokenize_queries(self.captions, self.processor.tokenizer, self.max_text_len)
                self._token_cache[key] = {name: value.to(device) for name, value in encoded.items()}
        return self._token_cache[key]

    # ----------------------------------------------------------------------------------------------- images
    def preprocess(self, images: Sequence[Image.Image], targets: Sequence[dict] | None = None,
                   train: bool = False, rng: Any = None) -> DetectionBatch:
        """The model's image processor: rescale, pad bottom-right to a square, resize it, normalise.

        Args:
            images: PIL images (converted to RGB).
            targets: Per image ``{"boxes": (G, 4) xyxy original pixels, "labels": (G,) 0-based}``.
            train: Flip each image (and its boxes) horizontally with probability ``flip_prob``.
            rng: ``random.Random`` for the flips (the ``random`` module's generator if None).

        Returns:
            The batch: images (B, 3, S, S), the image's (h, w) inside the square, original sizes, targets in pixels of
            the processed square (original pixels times ``S / max(h, w)``).
        """
        rng = rng if rng is not None else random
        flips = [bool(train and rng.random() < self.flip_prob) for _ in images]
        rgb = [supervision.prepare_image(image, flip) for image, flip in zip(images, flips)]
        pixels = self.processor.image_processor(rgb, return_tensors="pt")["pixel_values"]
        side = pixels.shape[-1]
        original = [(image.height, image.width) for image in images]
        scaled = [(h * side / max(h, w), w * side / max(h, w)) for h, w in original]
        sizes = [(round(h), round(w)) for h, w in scaled]
        out_targets = None
        if targets is not None:
            out_targets = [supervision.resize_target(target, size, size_in_square, flip)
                           for target, size, size_in_square, flip in zip(targets, original, scaled, flips)]
        return DetectionBatch(pixels, sizes, original, out_targets)

    def _forward(self, batch: DetectionBatch) -> Any:
        """The model on a batch and every query (transformers' ``Owlv2ObjectDetectionOutput``).

        The queries are repeated per image, as the processor lays out a batch of per-image query lists.
        """
        images = batch.images
        queries = self._query_inputs(images.device)
        count = images.shape[0]
        return self.model(input_ids=queries["input_ids"].repeat(count, 1), pixel_values=images,
                          attention_mask=queries["attention_mask"].repeat(count, 1))

    def _category_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, P, T * C) query logits -> (B, P, C) float32 category logits averaged over the templates."""
        batch, patches, _ = logits.shape
        return logits.float().view(batch, patches, len(self.templates), self._num_categories).mean(2)

    # ----------------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, batch: DetectionBatch) -> list[Detections]:
        """Detections per image under ``score_rule``, boxes in original pixels, labels index the vocabulary."""
        outputs = self._forward(batch)
        logits, boxes = self._category_logits(outputs.logits), outputs.pred_boxes.float()
        detections = []
        for image_logits, image_boxes, original in zip(logits, boxes, batch.original_sizes):
            if self.score_rule == "topk":
                picked = owl_scoring.topk_rule(image_logits, image_boxes, original, self.topk, self.score_threshold)
            else:
                picked = owl_scoring.pipeline_rule(image_logits, image_boxes, original, self.score_threshold)
            detections.append(Detections(boxes=picked[0], scores=picked[1], labels=picked[2]))
        return detections

    # ----------------------------------------------------------------------------------------------- train
    def compute_losses(self, batch: DetectionBatch) -> dict[str, torch.Tensor]:
        """The OWL-ViT set-prediction loss (:mod:`odinw_bench.models.hf.owl_loss`): ``loss_class`` (sigmoid focal
        over all patches x categories), ``loss_bbox`` (L1) and ``loss_giou`` on the Hungarian-matched patches, weights
        applied; their sum is the training loss. The class logits are the template-averaged ones ``predict`` scores.
        """
        if batch.targets is None:
            raise ValueError("training needs a batch with targets")
        outputs = self._forward(batch)
        side = batch.images.shape[-1]
        targets = [{"labels": t["labels"], "boxes": supervision.normalised_cxcywh(t["boxes"], (side, side))}
                   for t in batch.targets]
        return set_prediction_loss(self._category_logits(outputs.logits), outputs.pred_boxes, targets,
                                   self.loss_weights)

    # ----------------------------------------------------------------------------------------------- params
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by group (``GROUP_PREFIXES``): ``backbone`` (ViT), ``language`` (text transformer and
        projection), ``head`` (class and box heads), ``objectness``, ``contrastive`` (CLIP's image projection and
        temperature) and ``prompt`` (after :meth:`enable_prompt_tuning`); every parameter is in exactly one.

        Raises:
            RuntimeError: If a parameter falls in no group.
        """
        return groups_by_prefix(self, GROUP_PREFIXES)

    def never_trained_names(self) -> list[str]:
        """The ``objectness`` and ``contrastive`` groups: the detection loss sends them no gradient."""
        groups = self.parameter_groups()
        return [name for group in NEVER_TRAINED for name in groups[group]]

    def frozen_stage_names(self, freeze_at: int) -> list[str]:
        """The ViT's stem and first blocks, GLIP's ``FREEZE_CONV_BODY_AT`` carried over to a network without stages.

        A ViT block stands for a stage: ``freeze_at`` >= 0 freezes the patch embedding (with the class and position
        embeddings and the pre-layer norm), and blocks ``0 .. freeze_at - 2`` too (2, the ODinW recipe: the embedding
        and the first of 12 or 24 blocks); -1 freezes nothing.
        """
        if freeze_at < 0:
            return []
        prefixes = (f"{_VISION}embeddings.", f"{_VISION}pre_layernorm.",
                    *(f"{_VISION}encoder.layers.{block}." for block in range(max(freeze_at - 1, 0))))
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def enable_prompt_tuning(self) -> None:
        """Add a zero-initialised learnable offset (C, projection dim), one row per category, to the query embeddings
        the class head reads (every template's query of a category moves alike); a no-op if already on.

        Raises:
            RuntimeError: Before :meth:`set_vocabulary` (the offset has one row per category).
        """
        if self.prompt_offset is not None:
            return
        if self._texts is None:
            raise RuntimeError("call set_vocabulary(categories) before enable_prompt_tuning()")
        reference = self.model.class_head.dense0.weight
        self.prompt_offset = nn.Parameter(torch.zeros(self._num_categories, self.model.config.projection_dim,
                                                      dtype=reference.dtype, device=reference.device))
        self._prompt_hook = self.model.class_head.register_forward_pre_hook(self._add_prompt_offset)

    def _add_prompt_offset(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook of the class head: shift its query embeddings (B, T * C, D) by the offset (C, D)."""
        image_embeds, query_embeds, *rest = args
        if query_embeds is None:  # image-guided detection: no text queries to shift
            return None
        batch, queries, dim = query_embeds.shape
        offset = self.prompt_offset.to(query_embeds.dtype)
        shifted = query_embeds.view(batch, queries // offset.shape[0], offset.shape[0], dim) + offset
        return (image_embeds, shifted.view(batch, queries, dim), *rest)
