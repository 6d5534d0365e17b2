"""The backend contract every detector implements, and the (lazy) table of backends.

A backend hides its own text mechanics: GLIP builds one caption and maps token spans to categories; another
model may pass one query per category. The harness only ever sees category *indices* into the task's category
list, boxes in original-image pixels, and named parameter groups.

Example:
    >>> backend = load_backend("glip").from_preset("glip-micro")      # doctest: +SKIP
    >>> backend.set_vocabulary(["apple", "banana"])                     # doctest: +SKIP
    >>> dets = backend.predict_images([pil_image])                      # doctest: +SKIP
    >>> dets[0].boxes.shape, dets[0].labels                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from odinw_bench.tasks.spec import PromptSpec

#: The parameter group of LoRA adapters (``DetectorBackend.enable_lora``), and the mark peft puts in their names.
LORA_GROUP = "lora"
LORA_MARK = ".lora_"

# Name -> "module:Class". Strings, so importing this module never imports a backend's dependencies.
BACKENDS: dict[str, str] = {
    "glip": "odinw_bench.models.glip.backend:GLIPBackend",
    "grounding-dino": "odinw_bench.models.hf.grounding_dino:GroundingDinoBackend",
    "owlv2": "odinw_bench.models.hf.owlv2:Owlv2Backend",
}


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: (N, 4) float xyxy in pixels of the *original* image.
        scores: (N,) float, sorted or not; no threshold beyond the model's own applied.
        labels: (N,) int64 indices into the vocabulary given to ``set_vocabulary`` (0-based).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


@dataclass
class DetectionBatch:
    """A preprocessed batch as the backend's ``preprocess`` builds it.

    Attributes:
        images: (B, 3, Hp, Wp) normalised, padded images.
        image_sizes: Resized (h, w) of each image before padding.
        original_sizes: Original (h, w) of each image.
        targets: Per image, ``{"boxes": (G, 4) xyxy in resized pixels, "labels": (G,) 0-based}``; None for inference.
        image_ids: Dataset image ids, carried through for evaluation.
    """

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    targets: list[dict[str, torch.Tensor]] | None = None
    image_ids: list[int] = field(default_factory=list)

    def to(self, device: Any) -> DetectionBatch:
        """Move tensors to ``device``."""
        targets = None
        if self.targets is not None:
            targets = [{k: v.to(device) for k, v in t.items()} for t in self.targets]
        return DetectionBatch(self.images.to(device), self.image_sizes, self.original_sizes, targets, self.image_ids)


class DetectorBackend(ABC):
    """What the harness needs from a grounded detector (mixed into a ``torch.nn.Module``)."""

    name: str = "backend"

    @abstractmethod
    def set_vocabulary(self, categories: Sequence[str], prompt: PromptSpec | None = None) -> None:
        """Fix the categories (in label order) and how they become text."""

    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image], targets: Sequence[dict] | None = None,
                   train: bool = False) -> DetectionBatch:
        """Turn RGB images (and targets with xyxy original-pixel boxes, 0-based labels) into a batch."""

    @abstractmethod
    def predict(self, batch: DetectionBatch) -> list[Detections]:
        """Detections per image (no autograd), boxes in original-image pixels."""

    def predict_images(self, images: Sequence[Image.Image], categories: Sequence[str] | None = None,
                       prompt: PromptSpec | None = None) -> list[Detections]:
        """Convenience: detections for PIL images (optionally setting the vocabulary first), one batch, in eval
        mode (the module's mode is restored)."""
        if categories is not None:
            self.set_vocabulary(categories, prompt)
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            return self.predict(self.preprocess(images).to(device))
        finally:
            self.train(was_training)

    @abstractmethod
    def compute_losses(self, batch: DetectionBatch) -> dict[str, torch.Tensor]:
        """Training losses for a batch with targets; each value a scalar tensor."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[str]]:
        """Named groups of parameter names (e.g. ``backbone``, ``language``, ``fusion``, ``head``, ``prompt``)."""

    @property
    def captions(self) -> list[str]:
        """The text the model reads for the vocabulary (recorded with results): one entry per caption or query
        chunk. Default: none."""
        return []

    def set_feature_cache(self, cache: Any) -> None:
        """Reuse frozen parts' outputs through ``cache`` (a ``FeatureCache``; None: off). Default: no cache."""

    def enable_prompt_tuning(self) -> None:
        """Add the backend's prompt-tuning parameters (default: unsupported)."""
        raise UserError(f"backend '{self.name}' does not support prompt tuning")

    def enable_deep_prompts(self, tokens: int) -> None:
        """Add ``tokens`` learnable text tokens at every fusion layer, in the ``deep_prompt`` parameter group
        (default: unsupported)."""
        raise UserError(f"backend '{self.name}' does not support deep prompts", field="--regime")

    def frozen_stage_names(self, freeze_at: int) -> list[str]:
        """Parameters of the image backbone's stem and first stages that GLIP's ``FREEZE_CONV_BODY_AT`` freezes
        in every regime (2: the stem and stage 1; -1: none). Default: none."""
        return []

    def never_trained_names(self) -> list[str]:
        """Parameters no regime trains (GLIP: the dead ``cls_logits`` classifier). Default: none."""
        return []

    def lora_targets(self, groups: Sequence[str]) -> list[str]:
        """Names of the linear layers that LoRA adapts in ``groups``: the attention projections (a layer whose name
        holds ``attn`` or ``attention``) all of whose parameters belong to those groups. Groups the backend does not
        have are skipped."""
        import torch

        by_group = self.parameter_groups()
        owned = {name for g in groups for name in by_group.get(g, [])}
        targets = []
        for name, layer in self.named_modules():
            if not isinstance(layer, torch.nn.Linear) or not ("attn" in name or "attention" in name):
                continue
            params = [f"{name}.{p}" for p, _ in layer.named_parameters()]
            if params and all(p in owned for p in params):
                targets.append(name)
        return targets

    def enable_lora(self, groups: Sequence[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
        """Add LoRA adapters (``peft``) to :meth:`lora_targets` of ``groups``; their parameters form the ``lora``
        group. The adapted layers keep their weights (now ``<layer>.base_layer.*``), and ``lora_B`` starts at zero,
        so the model predicts exactly as before until it trains.

        Returns:
            The adapted layers' names.

        Raises:
            UserError: If no layer of ``groups`` can be adapted, or adapters of another shape are already there.
        """
        from peft import LoraConfig, inject_adapter_in_model

        existing = sorted({n.split(LORA_MARK)[0] for n, _ in self.named_parameters() if LORA_MARK in n})
        if existing:  # one set of adapters per model: the same regime applied again keeps them
            return existing
        targets = self.lora_targets(groups)
        if not targets:
            raise UserError(f"backend '{self.name}' has no attention projection in groups {list(groups)} to adapt",
                            field="--regime")
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets),
                                self)
        return targets

    def set_cached_tower(self, on: bool) -> None:
        """Compute the frozen part before the output layers per image and reuse it across epochs (the
        ``linear-probe-cached`` regime); off restores the backend's own computation (default: unsupported)."""
        if on:
            raise UserError(f"backend '{self.name}' cannot cache its frozen features in training", field="--regime")


def groups_by_prefix(module: Any, prefixes: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Parameter names of ``module`` by group, each in the first group one of whose prefixes it starts with.

    Raises:
        RuntimeError: A parameter no prefix covers (a backend's group table must cover the whole model).
    """
    groups: dict[str, list[str]] = {name: [] for name in prefixes}
    groups.setdefault(LORA_GROUP, [])
    for pname, _ in module.named_parameters():
        if LORA_MARK in pname:  # adapters added by enable_lora, wherever they sit
            groups[LORA_GROUP].append(pname)
            continue
        group = next((g for g, starts in prefixes.items() if pname.startswith(starts)), None)
        if group is None:
            raise RuntimeError(f"parameter {pname} belongs to no group")
        groups[group].append(pname)
    return groups


def load_backend(name: str) -> type:
    """Import and return the backend class registered under ``name``.

    Raises:
        UserError: For an unknown name, with the closest known names.
    """
    import difflib

    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=3)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown backend '{name}'{hint}; known: {', '.join(sorted(BACKENDS))}", field="backend")
    module_name, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)
