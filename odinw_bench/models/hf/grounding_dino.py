"""Grounding DINO, MM Grounding DINO and LLMDet (transformers) behind the backend contract.

The model is transformers' ``GroundingDinoForObjectDetection`` or ``MMGroundingDinoForObjectDetection`` (chosen by
the checkpoint's ``model_type``); this module adds the contract around it: captions with per-category token spans
(chunked when the vocabulary exceeds the model's text length), the model's own image processor, scoring rules,
training labels for transformers' loss, parameter groups, and prompt tuning.

Example:
    >>> backend = GroundingDinoBackend.from_preset("gdino-t")                      # doctest: +SKIP
    >>> backend = GroundingDinoBackend.from_pretrained("path/to/saved_model")       # doctest: +SKIP
    >>> dets = backend.predict_images([pil_image], ["fish", "jellyfish"])           # doctest: +SKIP
    >>> dets[0].boxes, dets[0].scores, dets[0].labels   # xyxy original pixels; labels index the names  # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
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
from odinw_bench.models.hf import scoring, supervision
from odinw_bench.models.hf.captions import CaptionChunk, chunk_vocabulary
from odinw_bench.models.hf.scoring import checked_scoring

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from odinw_bench.tasks.spec import PromptSpec

# The image backbone (transformers' SwinBackbone inside the conv encoder) and its patch embedding's marker.
_BACKBONE = "model.model.backbone.conv_encoder."
_PATCH_EMBEDDING = "embeddings.patch_embeddings."
# Parameter-name prefixes of each group, checked in this order (the first match wins). ``head`` is what a linear
# probe trains: the decoder's box MLPs and class embeddings (``bbox_embed``/``class_embed``, tied to
# ``model.decoder.*``) and the two-stage encoder's proposal box MLP and class embedding. Grounding DINO's class
# embeddings are parameter-free dot products; MM Grounding DINO's hold one learnable bias each. transformers' loss
# detaches the two-stage proposals, so the proposal box MLP (``encoder_output_bbox_embed``) gets no gradient.
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt_offset",),
    "head": ("model.bbox_embed.", "model.class_embed.", "model.model.decoder.bbox_embed.",
             "model.model.decoder.class_embed.", "model.model.encoder_output_bbox_embed.",
             "model.model.encoder_output_class_embed."),
    "language": ("model.model.text_backbone.",),
    "backbone": (_BACKBONE,),
    "fusion": ("model.model.",),
}


class GroundingDinoBackend(nn.Module, DetectorBackend):
    """A Grounding DINO family detector with its processor, captions, scoring and losses.

    Args:
        model: ``GroundingDinoForObjectDetection`` or ``MMGroundingDinoForObjectDetection``.
        processor: Its ``GroundingDinoProcessor`` (image processor and bert-base-uncased tokenizer).
        source: Where the weights came from (hub id or folder), for provenance.
        score_rule: ``mean`` (the authors' evaluation) or ``pipeline`` (transformers' post-processing); see
            :mod:`odinw_bench.models.hf.scoring`.
        topk: (query, category) pairs kept per image and caption by the ``mean`` rule (the authors: 300).
        score_threshold: Detections must score strictly above it (``mean``: 0, as the authors; the pipeline's own
            default is 0.25).
        auxiliary_loss: Add every decoder layer's loss (as the authors' training does); sets the model config's
            ``auxiliary_loss``.
        flip_prob: Horizontal flip probability of the training transform.
    """

    name = "grounding-dino"

    def __init__(self, model: nn.Module, processor: Any, *, source: str | Path | None = None, score_rule: str = "mean",
                 topk: int = 300, score_threshold: float = 0.0, auxiliary_loss: bool = True, flip_prob: float = 0.5):
        super().__init__()
        self.model = model
        self.processor = processor
        self.source = None if source is None else str(source)
        self.flip_prob = float(flip_prob)
        self.resolution: tuple[int, int] | None = None  # (shortest, longest) edge; None: the processor's own
        self.configure_scoring(score_rule, topk=topk, threshold=score_threshold)
        model.config.auxiliary_loss = bool(auxiliary_loss)
        self.register_parameter("prompt_offset", None)
        self._prompt_hook: Any = None
        self._chunks: list[CaptionChunk] | None = None
        self._train_chunks: list[CaptionChunk] | None = None
        # Token tensors per (caption, device) and span maps per (caption, labels, device), built once, not per batch.
        self._text_cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._map_cache: dict[tuple[str, tuple[int, ...], str], dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, source: str | Path, *, local_files_only: bool | None = None,
                        shortest_edge: int | None = None, longest_edge: int | None = None,
                        **options: Any) -> GroundingDinoBackend:
        """Load a hub id or a ``save_pretrained`` folder (see :mod:`odinw_bench.models.hf.loading`).

        Args:
            source: Hub id or local folder; its ``model_type`` must be ``grounding-dino`` or ``mm-grounding-dino``.
            local_files_only: Never reach the network; None follows offline mode (``HF_HUB_OFFLINE``).
            shortest_edge: Test/train resize of the shortest edge (with ``longest_edge``); None keeps the processor's.
            longest_edge: Upper bound of the longest edge.
            options: Constructor options (``score_rule``, ``topk``, ``score_threshold``, ...).

        Raises:
            UserError: For a source that is not a Grounding DINO family model (see ``load_model_and_processor``).
        """
        from odinw_bench.models.hf.loading import load_model_and_processor

        model, processor = load_model_and_processor(source, local_files_only)
        backend = cls(model, processor, source=source, **options)
        if shortest_edge is not None or longest_edge is not None:
            backend.set_resolution(shortest_edge, longest_edge)
        return backend.eval()

    @classmethod
    def from_preset(cls, name: str, *, local_files_only: bool | None = None, **options: Any) -> GroundingDinoBackend:
        """Load a preset (:func:`odinw_bench.models.hf.presets.presets`) with its test resolution and scoring."""
        from odinw_bench.models.hf.presets import get_preset

        preset = get_preset(name)
        settings = {key: preset[key] for key in ("shortest_edge", "longest_edge", "score_rule", "topk",
                                                 "score_threshold")}
        backend = cls.from_pretrained(preset["hub_id"], local_files_only=local_files_only, **{**settings, **options})
        if type(backend.model).__name__ != preset["model_class"]:
            raise UserError(f"preset '{name}' expects {preset['model_class']} but {preset['hub_id']} loads "
                            f"{type(backend.model).__name__}", field="model")
        return backend

    def set_resolution(self, shortest_edge: int | None, longest_edge: int | None) -> None:
        """Resize images so the shortest edge is ``shortest_edge`` and the longest at most ``longest_edge``.

        Raises:
            UserError: Unless both are positive and ``longest_edge >= shortest_edge``.
        """
        if not (isinstance(shortest_edge, int) and isinstance(longest_edge, int)
                and 0 < shortest_edge <= longest_edge):
            raise UserError(f"needs 0 < shortest_edge <= longest_edge, got {shortest_edge}/{longest_edge}",
                            field="resolution")
        self.resolution = (shortest_edge, longest_edge)

    def configure_scoring(self, rule: str, *, topk: int = 300, threshold: float = 0.0) -> None:
        """Choose how predictions are scored (:mod:`odinw_bench.models.hf.scoring`).

        Raises:
            UserError: For an unknown rule or a ``topk`` below 1.
        """
        self.score_rule, self.topk, self.score_threshold = checked_scoring(rule, topk, threshold, scoring.SCORE_RULES)

    @property
    def max_text_len(self) -> int:
        """Tokens per caption the model reads (``config.max_text_len``; 256 for every published checkpoint)."""
        return int(self.model.config.max_text_len)

    # ----------------------------------------------------------------------------------------------- vocabulary
    def set_vocabulary(self, categories: Sequence[str], prompt: PromptSpec | None = None) -> None:
        """Fix the categories (label order): captions ``"name. name."`` within ``max_text_len`` tokens each."""
        tokenizer = self.processor.tokenizer
        self._chunks = chunk_vocabulary(categories, prompt, tokenizer=tokenizer, max_len=self.max_text_len)
        self._train_chunks = chunk_vocabulary(categories, prompt, tokenizer=tokenizer, max_len=self.max_text_len,
                                              for_training=True)

    @property
    def chunks(self) -> list[CaptionChunk]:
        """The evaluation captions of the vocabulary, in label order."""
        if self._chunks is None:
            raise RuntimeError("call set_vocabulary(categories) first")
        return self._chunks

    @property
    def captions(self) -> list[str]:
        return [chunk.text for chunk in self.chunks]

    def _training_chunk(self) -> CaptionChunk:
        if self._train_chunks is None:
            raise RuntimeError("call set_vocabulary(categories) first")
        if len(self._train_chunks) != 1:
            count = sum(len(c.labels) for c in self._train_chunks)
            raise UserError(f"training needs all {count} categories in one caption of {self.max_text_len} tokens; "
                            f"this vocabulary needs {len(self._train_chunks)}", field="categories")
        return self._train_chunks[0]

    def _text_inputs(self, chunk: CaptionChunk, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (batch_size, L) of a caption, tokenized once."""
        key = (chunk.text, str(device))
        if key not in self._text_cache:
            # A training step may reuse cached tensors, so never create them as inference-mode tensors.
            with torch.inference_mode(False):
                enc = self.processor.tokenizer([chunk.text], return_tensors="pt", return_token_type_ids=True)
                self._text_cache[key] = {name: enc[name].to(device)
                                         for name in ("input_ids", "attention_mask", "token_type_ids")}
        return {name: value.repeat(batch_size, 1) for name, value in self._text_cache[key].items()}

    def _maps(self, chunk: CaptionChunk, device: torch.device) -> dict[str, torch.Tensor]:
        """A caption's span map (C, T), token owners (T,) and global labels (C,) on ``device``, built once.

        Keyed by the labels too: one caption (``"peach."``) may cover category 7 of one vocabulary and 0 of another.
        """
        key = (chunk.text, chunk.labels, str(device))
        if key not in self._map_cache:
            with torch.inference_mode(False):
                self._map_cache[key] = {
                    "span_map": chunk.span_map(self.max_text_len).to(device),
                    "token_labels": chunk.token_labels(self.max_text_len).to(device),
                    "labels": torch.as_tensor(chunk.labels, dtype=torch.long, device=device),
                }
        return self._map_cache[key]

    # ----------------------------------------------------------------------------------------------- images
    def preprocess(self, images: Sequence[Image.Image], targets: Sequence[dict] | None = None,
                   train: bool = False, rng: Any = None) -> DetectionBatch:
        """The model's image processor: resize (shortest/longest edge), rescale, normalise, pad bottom-right.

        Args:
            images: PIL images (converted to RGB).
            targets: Per image ``{"boxes": (G, 4) xyxy original pixels, "labels": (G,) 0-based}``.
            train: Flip each image (and its boxes) horizontally with probability ``flip_prob``.
            rng: ``random.Random`` for the flips (the ``random`` module's generator if None).

        Returns:
            The batch: images (B, 3, Hp, Wp), resized sizes, original sizes, targets in resized pixels.
        """
        rng = rng if rng is not None else random
        flips = [bool(train and rng.random() < self.flip_prob) for _ in images]
        rgb = [supervision.prepare_image(image, flip) for image, flip in zip(images, flips)]
        size = {} if self.resolution is None else {
            "size": {"shortest_edge": self.resolution[0], "longest_edge": self.resolution[1]}}
        inputs = self.processor.image_processor(rgb, return_tensors="pt", **size)
        # The pixel mask is 1 on the resized image, 0 on the padding (bottom and right).
        sizes = [(int(mask[:, 0].sum()), int(mask[0].sum())) for mask in inputs["pixel_mask"]]
        original = [(image.height, image.width) for image in images]
        out_targets = None
        if targets is not None:
            out_targets = [supervision.resize_target(t, o, s, f) for t, o, s, f in zip(targets, original, sizes, flips)]
        return DetectionBatch(inputs["pixel_values"], sizes, original, out_targets)

    def _forward(self, batch: DetectionBatch, chunk: CaptionChunk, labels: list[dict] | None = None) -> Any:
        """The model on a batch and one caption (transformers' output; with ``labels`` its loss too)."""
        images = batch.images
        pixel_mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long, device=images.device)
        for i, (h, w) in enumerate(batch.image_sizes):
            pixel_mask[i, :h, :w] = 1
        text = self._text_inputs(chunk, images.shape[0], images.device)
        return self.model(pixel_values=images, pixel_mask=pixel_mask, labels=labels, **text)

    # ----------------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, batch: DetectionBatch) -> list[Detections]:
        """Detections per image under ``score_rule``; labels index the whole vocabulary.

        Each caption chunk is a separate forward pass whose rule keeps its own ``topk``; the chunks' detections are
        concatenated (no cross-chunk suppression), as GLIP's chunked evaluation.
        """
        parts: list[list[Detections]] = [[] for _ in batch.image_sizes]
        for chunk in self.chunks:
            outputs = self._forward(batch, chunk)
            for i, dets in enumerate(self._chunk_detections(outputs, chunk, batch)):
                parts[i].append(dets)
        return [Detections(boxes=torch.cat([d.boxes for d in p]), scores=torch.cat([d.scores for d in p]),
                           labels=torch.cat([d.labels for d in p])) for p in parts]

    def _chunk_detections(self, outputs: Any, chunk: CaptionChunk, batch: DetectionBatch) -> Iterator[Detections]:
        """One caption's detections per image, boxes in original pixels, labels global."""
        maps = self._maps(chunk, outputs.logits.device)
        for i, (logits, boxes) in enumerate(zip(outputs.logits, outputs.pred_boxes)):
            if self.score_rule == "mean":
                picked, scores, local = scoring.mean_rule(logits, boxes, maps["span_map"], self.topk,
                                                          self.score_threshold)
            else:
                picked, scores, local = scoring.pipeline_rule(logits, boxes, maps["token_labels"],
                                                              self.score_threshold)
            pixels = scoring.to_original_pixels(picked, batch.image_sizes[i], batch.original_sizes[i],
                                                clip=self.score_rule == "mean")
            yield Detections(boxes=pixels, scores=scores, labels=maps["labels"][local])

    # ----------------------------------------------------------------------------------------------- train
    def training_outputs(self, batch: DetectionBatch) -> Any:
        """transformers' output with ``loss`` and ``loss_dict`` for a batch with targets.

        The labels are what the model's loss expects: per image ``class_labels`` (category indices) and ``boxes``
        (normalised cxcywh of the resized image before padding, the frame of ``pred_boxes``). The label maps (which
        tokens are a category) come from the caption's name spans instead of the model's own split at ``"."``
        tokens, so caption prompts (a prefix or suffix around a name) and names holding a ``"."`` stay right.

        Raises:
            UserError: If the vocabulary needs more than one caption.
        """
        if batch.targets is None:
            raise ValueError("training needs a batch with targets")
        chunk = self._training_chunk()
        labels = [{"class_labels": t["labels"].to(torch.long), "boxes": supervision.normalised_cxcywh(t["boxes"], size)}
                  for t, size in zip(batch.targets, batch.image_sizes)]
        span_map = self._maps(chunk, batch.images.device)["span_map"]
        with supervision.span_label_maps(self.model, span_map, len(labels)):
            return self._forward(batch, chunk, labels=labels)

    def compute_losses(self, batch: DetectionBatch) -> dict[str, torch.Tensor]:
        """The weighted loss terms of transformers' Grounding DINO loss; their sum is the model's ``loss``.

        Terms: ``loss_ce`` (sigmoid focal loss over tokens, weight 2), ``loss_bbox`` (L1, ``bbox_loss_coefficient``)
        and ``loss_giou`` (``giou_loss_coefficient``) of the last decoder layer, the same with ``_0`` .. ``_{n-2}`` for
        the other layers (``auxiliary_loss``) and ``_enc`` for the two-stage proposals. ``cardinality_error`` is a
        statistic, not a loss, and is left out.
        """
        return supervision.loss_terms(self.training_outputs(batch).loss_dict, self.model.config)

    # ----------------------------------------------------------------------------------------------- params
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by group: ``backbone`` (Swin), ``language`` (BERT), ``fusion`` (everything between:
        projections, encoder with its fusion layers, decoder, query embeddings), ``head`` (see ``GROUP_PREFIXES``)
        and ``prompt`` (after :meth:`enable_prompt_tuning`); every parameter is in exactly one.

        Raises:
            RuntimeError: If a parameter falls in no group.
        """
        return groups_by_prefix(self, GROUP_PREFIXES)

    def frozen_stage_names(self, freeze_at: int) -> list[str]:
        """Parameters of the Swin stem and first stages that GLIP's ``FREEZE_CONV_BODY_AT`` freezes.

        ``freeze_at`` >= 0 freezes the patch embedding; stages ``0 .. freeze_at - 2`` too (2: patch embedding and
        stage 1, the ODinW recipe); -1 freezes nothing.
        """
        if freeze_at < 0:
            return []
        names = [name for name, _ in self.named_parameters()]
        # The Swin root ("...conv_encoder.model.swin." in transformers 5) is found, not assumed.
        stems = [n for n in names if n.startswith(_BACKBONE) and _PATCH_EMBEDDING in n]
        root = stems[0][: stems[0].index(_PATCH_EMBEDDING)] if stems else None
        if root is None:
            raise RuntimeError(f"no Swin patch embedding under {_BACKBONE}: not a transformers Swin backbone")
        prefixes = (f"{root}embeddings.", *(f"{root}encoder.layers.{s}." for s in range(max(freeze_at - 1, 0))))
        return [name for name in names if name.startswith(prefixes)]

    def enable_prompt_tuning(self) -> None:
        """Add a zero-initialised learnable offset (max_text_len, text hidden size) to the text backbone's output,
        before the projection and fusion (GLIP's ``language_prompt_v2`` carried over); a no-op if already on."""
        if self.prompt_offset is not None:
            return
        text_backbone = self.model.model.text_backbone
        reference = next(text_backbone.parameters())
        hidden = self.model.config.text_config.hidden_size
        self.prompt_offset = nn.Parameter(torch.zeros(self.max_text_len, hidden, dtype=reference.dtype,
                                                      device=reference.device))
        self._prompt_hook = text_backbone.register_forward_hook(self._add_prompt_offset)

    def _add_prompt_offset(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook: shift the text features (B, L, hidden) by the offset's first L rows."""
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        shifted = hidden + self.prompt_offset[: hidden.shape[1]].to(hidden.dtype)
        if isinstance(output, tuple):
            return (shifted, *output[1:])
        output.last_hidden_state = shifted  # a ModelOutput keeps its attribute and key in step
        return output
