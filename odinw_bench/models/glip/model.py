"""The GLIP detector assembled from its parts, with the official module names.

``GLIP(config)`` builds ``backbone.body`` (Swin), ``backbone.fpn``, ``language_backbone.body`` (BERT) and ``rpn``
(VLDyHead + anchors [+ the prompt-tuning offset]), so that ``GLIP.state_dict()`` keys equal the official ones and an
official checkpoint loads with a ``module.`` strip (:func:`odinw_bench.models.glip.checkpoint.load_glip_state_dict`).

This module works on tensors: images already normalised and padded, captions already tokenised, label -> token
maps already built. :class:`odinw_bench.models.glip.backend.GLIPBackend` adds images, prompts and chunking.

Example:
    >>> from odinw_bench.models.glip.config import get_preset
    >>> model = GLIP(get_preset("glip-micro")).eval()
    >>> dets = model.predict(images, image_sizes, input_ids, attention_mask, {1: [1], 2: [3, 4]})  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from odinw_bench.models.glip.anchors import AnchorGenerator
from odinw_bench.models.glip.config import GLIPConfig
from odinw_bench.models.glip.feature_cache import FeatureCache, is_frozen, tensor_digest
from odinw_bench.models.glip.fpn import FPN
from odinw_bench.models.glip.fusion import DeepPrompts
from odinw_bench.models.glip.head import VLDyHead
from odinw_bench.models.glip.language import BertEncoder
from odinw_bench.models.glip.loss import ATSSLoss
from odinw_bench.models.glip.postprocess import ATSSPostProcessor
from odinw_bench.models.glip.swin import SwinTransformer

logger = logging.getLogger(__name__)

# GLIP's prompt-tuning layer has 1000 rows; only the first ``max_query_len`` (256) are ever used.
TUNABLE_LINEAR_ROWS = 1000


def trimmed_width(attention_mask: torch.Tensor) -> int:
    """Token columns a batch needs: its longest caption plus one padding column (all of them when one is full).

    GLIP pads every caption to 256 tokens. A padded token is masked out of BERT's and the fusion's attention and
    out of the token loss, so it never reaches a real token's logit, a box, a score or a loss term; cutting the
    padding changes no number. One padding column stays because GLIP puts an unmatched anchor's "no object" target
    on the last column (masked unless a caption fills the window): with it, the token loss stays GLIP's exactly.

    Args:
        attention_mask: (B, L) 0/1 mask of the padded captions.

    Returns:
        The width to keep, at most L.
    """
    return min(attention_mask.shape[1], int(attention_mask.sum(dim=1).max()) + 1)


def _needs_grad(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` trains: frozen parts then run without building an autograd graph."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


class VLDyHeadModule(nn.Module):
    """GLIP's ``rpn``: the head, the anchor generator and, for prompt tuning, ``tunable_linear``.

    The post-processor and the loss hold no parameters and are plain attributes.
    """

    def __init__(self, config: GLIPConfig, bert_config: Any):
        super().__init__()
        dy = config.dyhead
        self.head = VLDyHead(
            channels=dy.channels,
            lang_dim=config.language.lang_dim,
            num_convs=dy.num_convs,
            num_classes=dy.num_classes,
            bert_config=bert_config,
            early_fuse=dy.early_fuse,
            use_fused_dot_product=dy.use_fused_dot_product,
            num_levels=len(config.anchors.strides),
            prior_prob=dy.prior_prob,
            log_scale=dy.log_scale,
            group_norm_groups=dy.group_norm_groups,
            fuse_embed_dim=dy.fuse_embed_dim,
            fuse_num_heads=dy.fuse_num_heads,
            use_checkpoint=dy.use_checkpoint,
        )
        self.anchor_generator = AnchorGenerator(config.anchors.sizes, config.anchors.strides)
        self.lang_dim = config.language.lang_dim
        if dy.add_linear_layer:
            self.add_tunable_linear()
        post = config.postprocess
        self.post_processor = ATSSPostProcessor(
            pre_nms_thresh=post.pre_nms_thresh,
            pre_nms_top_n=post.pre_nms_top_n,
            nms_thresh=post.nms_thresh,
            detections_per_img=post.detections_per_img,
            num_classes=dy.num_classes,
        )
        loss = config.loss
        self.loss = ATSSLoss(
            topk=loss.topk,
            reg_loss_weight=loss.reg_loss_weight,
            focal_alpha=loss.focal_alpha,
            focal_gamma=loss.focal_gamma,
            token_alpha=loss.token_alpha,
            token_gamma=loss.token_gamma,
            dot_product_token_loss_weight=loss.dot_product_token_loss_weight,
        )

    def add_tunable_linear(self) -> None:
        """Create GLIP's ``language_prompt_v2`` offset: a zero-initialised (1000, lang_dim) weight."""
        if getattr(self, "tunable_linear", None) is None:
            self.tunable_linear = nn.Linear(self.lang_dim, TUNABLE_LINEAR_ROWS, bias=False)
            nn.init.zeros_(self.tunable_linear.weight)
            self.tunable_linear.to(self.anchor_generator.level_cell_anchor(0).device)

    def add_deep_prompts(self, tokens: int) -> None:
        """Create ``tokens`` learnable text tokens per fusion step (the ``deep-prompt`` regime; kept if present).

        Raises:
            ValueError: For a tower without fusion (GLIP-T(A)), or deep prompts of another size already there.
        """
        steps = self.head.fusion_steps
        if steps == 0:
            raise ValueError("this model's head has no fusion step to prompt (early fusion is off)")
        existing = getattr(self, "deep_prompts", None)
        if existing is not None:
            if existing.weight.shape[1] != tokens:
                raise ValueError(f"the model already has {existing.weight.shape[1]} deep prompt tokens, not {tokens}")
            return
        self.deep_prompts = DeepPrompts(steps, tokens, self.lang_dim)
        self.deep_prompts.to(self.anchor_generator.level_cell_anchor(0).device)

    def deep_prompt_tokens(self) -> tuple[torch.Tensor, ...]:
        """The (P, D) deep prompt of each fusion step; empty when the regime has none."""
        prompts = getattr(self, "deep_prompts", None)
        return () if prompts is None else prompts()

    def apply_prompt_offset(self, lang: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the per-position prompt offset to ``embedded`` and ``hidden`` (before fusion), as GLIP does.

        Args:
            lang: Language dict with ``hidden`` and ``embedded`` of shape (B, L, D).

        Returns:
            A new dict (the input is not changed); unchanged values when prompt tuning is off.
        """
        linear = getattr(self, "tunable_linear", None)
        if linear is None:
            return lang
        offset = linear.weight[: lang["hidden"].shape[1]].unsqueeze(0)  # (1, L, D)
        return {**lang, "embedded": lang["embedded"] + offset, "hidden": lang["hidden"] + offset}


class GLIP(nn.Module):
    """GLIP (Swin + FPN + BERT + VLDyHead) with the official parameter names.

    Args:
        config: The architecture and its post-processing / loss settings.
    """

    def __init__(self, config: GLIPConfig):
        super().__init__()
        self.config = config
        # Run the text side at the batch's caption length (see trimmed_width): identical outputs, and the fusion's
        # attention no longer spans 256 mostly padded columns. False keeps GLIP's padded computation (the reference).
        self.trim_text = True
        # Frozen parts' outputs reused outside training (odinw_bench.models.glip.feature_cache); None: no cache.
        self.feature_cache: FeatureCache | None = None
        # The linear-probe-cached regime: each image runs the frozen, eval-mode tower alone (padded to
        # size_divisibility, not to its batch), so its tower output is reusable across epochs and batches.
        self.per_image_tower = False
        bert_config = config.language.bert_config()
        sw = config.swin
        body = SwinTransformer(
            sw.embed_dim, sw.depths, sw.num_heads, sw.window_size, mlp_ratio=sw.mlp_ratio,
            drop_path_rate=sw.drop_path_rate, patch_size=sw.patch_size, out_norm=sw.out_norm,
            frozen_stages=config.freeze_conv_body_at, use_checkpoint=sw.use_checkpoint,
        )
        fpn = FPN(sw.out_channels[1:], config.fpn.out_channels, drop_block_prob=config.fpn.drop_block_prob,
                  drop_block_size=config.fpn.drop_block_size)
        self.backbone = nn.Sequential(OrderedDict(body=body, fpn=fpn))
        language = BertEncoder(bert_config, num_layers=config.language.n_layers,
                               use_checkpoint=config.language.use_checkpoint)
        self.language_backbone = nn.Sequential(OrderedDict(body=language))
        self.rpn = VLDyHeadModule(config, bert_config)

    @property
    def max_query_len(self) -> int:
        return self.config.language.max_query_len

    def encode_image(self, images: torch.Tensor) -> list[torch.Tensor]:
        """FPN features P3..P7 of a padded batch (B, 3, H, W); no autograd graph when the backbone is frozen."""
        with torch.set_grad_enabled(_needs_grad(self.backbone.body)):
            c2_to_c5 = self.backbone.body(images)
        with torch.set_grad_enabled(_needs_grad(self.backbone)):
            return self.backbone.fpn(c2_to_c5[1:])

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """BERT features (hidden, embedded, masks) of (B, L) tokens, plus the prompt-tuning offset if enabled."""
        with torch.set_grad_enabled(_needs_grad(self.language_backbone)):
            lang = self.language_backbone.body(input_ids, attention_mask)
        return self.rpn.apply_prompt_offset(lang)

    def forward_head(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     image_sizes: Sequence[tuple[int, int]] | None = None) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Head outputs and anchors for a batch.

        Args:
            images: (B, 3, H, W) normalised images, zero-padded to a multiple of 32.
            input_ids: (B, L) token ids of each image's caption (L = 256 in GLIP).
            attention_mask: (B, L) 0/1 mask.
            image_sizes: Unpadded (h, w) of each image; needed only with :attr:`per_image_tower`.

        Returns:
            ``(outputs, anchors)``: ``outputs`` has per-level ``logits`` (B, HW, L'), ``bbox_reg`` (B, 4, H, W),
            ``centerness`` (B, 1, H, W), ``cls_logits``; ``anchors`` is a list of (HW, 4) per level. L' is
            :func:`trimmed_width` when ``trim_text`` is on, else L; the logits of the real tokens are the same.
        """
        if self.trim_text and attention_mask.shape[1] >= self.max_query_len:  # narrower: trimmed by the caller
            width = trimmed_width(attention_mask)
            input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
        if self.per_image_tower:
            fused = self._fused_per_image(images, input_ids, attention_mask, image_sizes)
        elif self.feature_cache is not None and not self.training:
            fused = self._fused_features(self.feature_cache, images, input_ids, attention_mask)
        else:
            features = self.encode_image(images)  # before the text: dropout draws in GLIP's order
            lang = self.encode_text(input_ids, attention_mask)
            fused = {"state": self.rpn.head.run_tower(features, lang, deep_prompts=self.rpn.deep_prompt_tokens()),
                     "lang": lang}
        outputs = self.rpn.head.outputs(fused["state"], fused["lang"])
        anchors = self.rpn.anchor_generator([f.shape[-2:] for f in fused["state"]["visual"]])
        return outputs, anchors

    def _cache_plan(self, cache: FeatureCache | None, device: torch.device) -> dict[str, str | None]:
        """What a forward can reuse: the key parts (autocast state, weight hashes) of each frozen stage.

        ``image``/``text``/``tower`` are None for a stage that trains (or without a cache). The tower is reused
        when everything before the output layers is frozen (zero-shot, linear probing); else the image features
        when Swin and the FPN are, and BERT's features when BERT is (prompt tuning).
        """
        plan: dict[str, str | None] = {"env": None, "image": None, "text": None, "tower": None}
        if cache is None:
            return plan
        plan["env"] = f"{device.type}|{torch.is_autocast_enabled(device.type)}|{torch.get_autocast_dtype(device.type)}"
        if is_frozen(self.backbone):
            plan["image"] = cache.fingerprint([self.backbone])
        if is_frozen(self.language_backbone):
            plan["text"] = cache.fingerprint([self.language_backbone])
        prompts = [getattr(self.rpn, "tunable_linear", None), getattr(self.rpn, "deep_prompts", None)]
        tower = self.rpn.head.dyhead_tower
        if plan["image"] and plan["text"] and all(map(is_frozen, prompts)) and is_frozen(tower):
            plan["tower"] = cache.fingerprint([*prompts, tower])
        return plan

    def _fused_features(self, cache: FeatureCache | None, images: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor, plan: dict[str, str | None] | None = None) -> dict[str, Any]:
        """The tower's output ``{"state": run_tower(...), "lang": its text input}``, reusing the frozen stages.

        Args:
            cache: Where frozen stages' outputs are kept; None computes everything (the same numbers).
            images, input_ids, attention_mask: As :meth:`forward_head` (text already trimmed).
            plan: :meth:`_cache_plan` of ``cache`` (computed when None; a batch computes it once for its images).
        """
        device = images.device
        plan = plan if plan is not None else self._cache_plan(cache, device)
        # Keys hash weights and inputs, so they are only built for the stages that are reused.
        image_key = [plan["env"], tensor_digest(images), plan["image"]] if plan["image"] else []
        text_key = [plan["env"], tensor_digest(input_ids, attention_mask), plan["text"]] if plan["text"] else []

        def image_features() -> list[torch.Tensor]:
            if not image_key:
                return self.encode_image(images)
            return cache.get_or_compute("image", image_key, lambda: self.encode_image(images), device)

        def text_features() -> dict[str, torch.Tensor]:
            if not text_key:
                return self.encode_text(input_ids, attention_mask)
            lang = cache.get_or_compute("text", text_key,
                                        lambda: self.language_backbone.body(input_ids, attention_mask), device)
            return self.rpn.apply_prompt_offset(lang)

        def tower() -> dict[str, Any]:
            lang = text_features()
            state = self.rpn.head.run_tower(image_features(), lang, deep_prompts=self.rpn.deep_prompt_tokens())
            return {"state": state, "lang": lang}

        if plan["tower"]:
            return cache.get_or_compute("tower", [*image_key, *text_key, plan["tower"]], tower, device)
        return tower()

    def _fused_per_image(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         image_sizes: Sequence[tuple[int, int]] | None) -> dict[str, Any]:
        """The tower's output with each image computed alone, then zero-padded to the batch's feature sizes.

        An image alone is what GLIP computes for a batch of one: the image padded to ``size_divisibility``. Its
        tower output therefore depends only on (image, resize, flip, caption, weights), so the cache serves it in
        every later epoch, whatever batch the image lands in. In a batch GLIP pads every image to the largest
        and the fusion's attention spans that padding; here the padding is zeros after the tower, a protocol
        difference the ``linear-probe-cached`` regime records.

        Args:
            images: (B, 3, H, W) padded batch; input_ids, attention_mask: (B, L) trimmed captions.
            image_sizes: Unpadded (h, w) of each image.

        Returns:
            As :meth:`_fused_features` for the whole batch: per-level visual (B, C, H_l, W_l), text (B, L, D).
        """
        if image_sizes is None or len(image_sizes) != images.shape[0]:
            raise ValueError("per_image_tower needs the unpadded size of every image of the batch")
        prompts = (getattr(self.rpn, "tunable_linear", None), getattr(self.rpn, "deep_prompts", None))
        if not all(is_frozen(m) for m in (self.backbone, self.language_backbone, *prompts, self.rpn.head.dyhead_tower)):
            raise RuntimeError("per_image_tower needs Swin, the FPN, BERT and the tower frozen and in eval mode")
        div = self.config.input.size_divisibility
        plan = self._cache_plan(self.feature_cache, images.device)
        parts = []
        for i, (height, width) in enumerate(image_sizes):
            crop = images[i:i + 1, :, : -(-height // div) * div, : -(-width // div) * div]
            parts.append(self._fused_features(self.feature_cache, crop, input_ids[i:i + 1],
                                              attention_mask[i:i + 1], plan))
        return _stack_fused(parts)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]], input_ids: torch.Tensor,
                attention_mask: torch.Tensor, positive_map: Mapping[int, Sequence[int]]) -> list[dict[str, torch.Tensor]]:
        """Detections per image in resized-image pixels (GLIP's output BoxList, before rescaling).

        Args:
            images: (B, 3, H, W) padded batch.
            image_sizes: Unpadded (h, w) of each image, for clipping.
            input_ids, attention_mask: (B, L) tokenised captions.
            positive_map: 1-based label -> caption token indices.

        Returns:
            Per image ``dict(boxes (N, 4) xyxy, scores (N,), labels (N,) 1-based)``.
        """
        outputs, anchors = self.forward_head(images, input_ids, attention_mask, image_sizes)
        return self.rpn.post_processor(outputs["logits"], outputs["bbox_reg"], outputs["centerness"], anchors,
                                       positive_map, image_sizes)

    def compute_losses(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       targets: Sequence[Mapping[str, torch.Tensor]],
                       image_sizes: Sequence[tuple[int, int]] | None = None,
                       real_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """GLIP's training losses.

        Args:
            images: (B, 3, H, W) padded batch.
            input_ids, attention_mask: (B, L) tokenised captions.
            targets: Per image ``dict(boxes (G, 4) xyxy in resized pixels, positive_map (G, L) 0/1)``; G may be 0.
            image_sizes: Unpadded (h, w) of each image; needed only with :attr:`per_image_tower`.
            real_tokens: Tokens of the caption when every row of ``attention_mask`` is that many ones then zeros
                (known on the host: the loss then reads no mask back from a GPU).

        Returns:
            ``loss_reg``, ``loss_centerness``, ``loss_cls`` (always 0, as GLIP), ``loss_dot_product_token``.
        """
        outputs, anchors = self.forward_head(images, input_ids, attention_mask, image_sizes)
        width = outputs["logits"][0].shape[-1]
        # Trimmed text (here or by the caller): cut the targets' padding columns likewise.
        targets = [{**t, "positive_map": t["positive_map"][:, :width]}
                   if "positive_map" in t and t["positive_map"].shape[-1] > width else t for t in targets]
        return self.rpn.loss(outputs["logits"], outputs["bbox_reg"], outputs["centerness"], anchors, targets,
                             attention_mask[:, :width], cls_logits=outputs["cls_logits"], real_tokens=real_tokens)


def _stack_fused(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One batch from per-image tower outputs: visual levels zero-padded (bottom, right) to the largest image's
    sizes, which are the padded batch's (each level's size grows with the image's), text tensors concatenated."""
    if len(parts) == 1:
        return parts[0]
    levels = []
    for level in zip(*(p["state"]["visual"] for p in parts)):
        height, width = max(x.shape[-2] for x in level), max(x.shape[-1] for x in level)
        levels.append(torch.cat([nn.functional.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))
                                 for x in level]))

    def cat(dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {k: torch.cat([d[k] for d in dicts]) if isinstance(dicts[0][k], torch.Tensor) else dicts[0][k]
                for k in dicts[0]}

    return {"state": {**parts[0]["state"], "visual": levels, "lang": cat([p["state"]["lang"] for p in parts])},
            "lang": cat([p["lang"] for p in parts])}
