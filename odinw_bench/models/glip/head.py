"""GLIP's VLDyHead: the fusion tower and the per-level box, centerness and token-logit outputs.

Mirrors ``rpn/vldyhead.VLDyHead`` of the official code (state-dict keys ``rpn.head.*`` without the prefix).
The tower is ``dyhead_tower``, an ``nn.Sequential`` whose block i holds ``{3i}`` VLFuse, ``{3i+1}``
BertEncoderLayer and ``{3i+2}`` DyConv (GLIP-T/L), or only DyConv at ``{i}`` without early fusion
(GLIP-T(A)).

Token logits follow the official dot-product head exactly: the text is L2-normalised and halved before
``dot_product_projection_text``, the visual side is not normalised, the bias is ``e·bias_lang + bias0``, the
product is divided by ``exp(log_scale)`` and clamped to ±50000. Prompt-tuning offsets (``tunable_linear``)
are added to the language dict one level up, before this head is called.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from odinw_bench.models.glip.dyconv import DyConv
from odinw_bench.models.glip.fusion import CLAMP, DEEP_PROMPTS, BertEncoderLayer, VLFuse

logger = logging.getLogger(__name__)


class Scale(nn.Module):
    """A learnable scalar multiplier (key ``scale``, shape (1,))."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PassThrough(nn.Module):
    """Keeps a tower slot (and so the official module indices) where GLIP has a ``DummyLayer``."""

    produces: tuple[str, ...] = ()

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs


class VLDyHead(nn.Module):
    """The GLIP head: deep-fusion DyHead tower plus box regression, centerness and token logits.

    Args:
        channels: visual channels of the FPN maps and of the tower (256 in GLIP).
        lang_dim: text feature size (768 for BERT-base).
        num_convs: tower blocks (6 for GLIP-T, 8 for GLIP-L).
        num_classes: ``MODEL.DYHEAD.NUM_CLASSES``; sizes the frozen, unused ``cls_logits`` (num_classes − 1).
        bert_config: ``transformers.BertConfig`` of the language model, reused by the tower's BERT layers
            (unused without early fusion).
        early_fuse: VLFuse + BertEncoderLayer in every block (False for GLIP-T(A)).
        use_fused_dot_product: score tokens with the tower's fused text (``hidden``) rather than the language
            backbone's ``embedded``.
        num_levels: pyramid levels (5: P3–P7).
        prior_prob: focal-loss prior; sets the ``cls_logits`` bias and ``bias0`` to −log((1−p)/p).
        log_scale: initial ``log_scale``.
        use_dyrelu, use_dyfuse, use_deform: DyConv options (all True in GLIP).
        group_norm_groups: GroupNorm groups of the DyConv branches.
        fuse_embed_dim, fuse_num_heads, fuse_dropout: MHA-B settings (fixed in GLIP's code: 2048, 8, 0.1).
        use_checkpoint: gradient checkpointing of the fusion blocks (numerically irrelevant).
    """

    def __init__(
        self,
        channels: int,
        lang_dim: int,
        num_convs: int,
        num_classes: int,
        bert_config: Any = None,
        early_fuse: bool = True,
        use_fused_dot_product: bool = True,
        num_levels: int = 5,
        prior_prob: float = 0.01,
        log_scale: float = 0.0,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_deform: bool = True,
        group_norm_groups: int | None = 16,
        fuse_embed_dim: int = 2048,
        fuse_num_heads: int = 8,
        fuse_dropout: float = 0.1,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background + 1), got {num_classes}")
        if early_fuse and (num_convs > 1 or use_fused_dot_product):
            _check_bert_config(bert_config, lang_dim)
        self.num_levels = num_levels
        self.early_fuse = early_fuse
        self.use_fused_dot_product = use_fused_dot_product
        bias_value = -math.log((1 - prior_prob) / prior_prob)

        fusion = (
            dict(embed_dim=fuse_embed_dim, num_heads=fuse_num_heads, dropout=fuse_dropout,
                 use_checkpoint=use_checkpoint)
            if early_fuse
            else None
        )
        dyconv = dict(use_dyfuse=use_dyfuse, use_dyrelu=use_dyrelu, use_deform=use_deform, gn_groups=group_norm_groups)
        self.dyhead_tower = _build_tower(channels, lang_dim, num_convs, bert_config, fusion, dyconv,
                                         use_fused_dot_product)

        # The dead classifier: only its width (num_classes − 1) matters downstream. Frozen as in GLIP.
        self.cls_logits = nn.Conv2d(channels, num_classes - 1, kernel_size=1)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        self.dot_product_projection_text = nn.Linear(lang_dim, channels, bias=True)
        self.log_scale = nn.Parameter(torch.tensor([log_scale], dtype=torch.float32))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        self.bias0 = nn.Parameter(torch.tensor([bias_value], dtype=torch.float32))
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, bias_value)
        self.cls_logits.requires_grad_(False)
        logger.debug("VLDyHead tower: %s", [type(m).__name__ for m in self.dyhead_tower])

    def train(self, mode: bool = True) -> VLDyHead:
        """Switch mode; like GLIP, every call leaves ``cls_logits`` frozen."""
        super().train(mode)
        self.cls_logits.requires_grad_(False)
        return self

    def forward(
        self,
        features: Sequence[torch.Tensor],
        lang: dict[str, torch.Tensor],
        return_intermediates: bool = False,
    ) -> dict[str, Any]:
        """Run the tower and the output convolutions.

        Args:
            features: FPN maps [(B, C, H_l, W_l)] for P3..P7.
            lang: language features: ``hidden`` (B, L, D) unmasked last BERT layer (fed to the fusion),
                ``masks`` (B, L) 0/1, ``embedded`` (B, L, D) masked (scored when ``use_fused_dot_product``
                is False). Prompt-tuning offsets must already be added. The dict is not modified.
            return_intermediates: also return ``tower_outputs``, a flat dict of debug tensors named like
                the reference fixtures without their ``head.`` prefix: ``tower.{i}.{Module}.visual.level{l}``,
                ``tower.{i}.{Module}.lang`` and ``dot_product.{text_embedding_normalized,proj_tokens,
                token_bias}``.

        Returns:
            dict with per-level lists ``logits`` [(B, H_l·W_l, L)] (row-major over (y, x)), ``bbox_reg``
            [(B, 4, H_l, W_l)] after the level's Scale, ``centerness`` [(B, 1, H_l, W_l)] and ``cls_logits``
            [(B, num_classes − 1, H_l, W_l)], plus ``tower_outputs`` (dict or None).
        """
        record: dict[str, torch.Tensor] | None = {} if return_intermediates else None
        state = self.run_tower(features, lang, record)
        return self.outputs(state, lang, record)

    @property
    def fusion_steps(self) -> int:
        """The tower's VLFuse steps (0 without early fusion)."""
        return sum(isinstance(m, VLFuse) for m in self.dyhead_tower)

    def run_tower(self, features: Sequence[torch.Tensor], lang: dict[str, torch.Tensor],
                  record: dict[str, torch.Tensor] | None = None,
                  deep_prompts: Sequence[torch.Tensor] = ()) -> dict[str, Any]:
        """The fusion/DyConv tower alone: ``{"visual": [(B, C, H_l, W_l)], "lang": {...}}`` after its last block.

        Args:
            features, lang: As :meth:`forward`.
            record: Filled with the tower's intermediate tensors when given (see ``return_intermediates``).
            deep_prompts: One (P, D) tensor per fusion step (the ``deep-prompt`` regime), or none.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(features)}")
        if len(deep_prompts) not in (0, self.fusion_steps):
            raise ValueError(f"{len(deep_prompts)} deep prompts for a tower of {self.fusion_steps} fusion steps")
        state: dict[str, Any] = {"visual": list(features), "lang": {**lang, DEEP_PROMPTS: tuple(deep_prompts)}}
        for index, module in enumerate(self.dyhead_tower):
            state = module(state)
            if record is not None:
                _record_tower_output(record, index, module, state)
        state["lang"] = {k: v for k, v in state["lang"].items() if k != DEEP_PROMPTS}
        return state

    def outputs(self, state: dict[str, Any], lang: dict[str, torch.Tensor],
                record: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The output layers on a tower state (:meth:`run_tower`); returns what :meth:`forward` returns.

        Args:
            state: The tower's output; not modified.
            lang: The language features that entered the tower (``embedded`` is scored without fusion).
            record: Debug tensors, as in :meth:`run_tower`.
        """
        text = state["lang"]["hidden"] if self.use_fused_dot_product else lang["embedded"]
        normalized, proj_tokens, token_bias = self.project_tokens(text)
        if record is not None:
            record["dot_product.text_embedding_normalized"] = normalized
            record["dot_product.proj_tokens"] = proj_tokens
            record["dot_product.token_bias"] = token_bias

        outputs: dict[str, Any] = {"logits": [], "bbox_reg": [], "centerness": [], "cls_logits": []}
        for level, x in enumerate(state["visual"]):
            outputs["cls_logits"].append(self.cls_logits(x))
            outputs["bbox_reg"].append(self.scales[level](self.bbox_pred(x)))
            outputs["centerness"].append(self.centerness(x))
            outputs["logits"].append(self.token_logits(x, proj_tokens, token_bias))
        outputs["tower_outputs"] = record
        return outputs

    def project_tokens(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text side of the dot-product head.

        Args:
            text: (B, L, D) token features.

        Returns:
            normalized (B, L, D) = L2-normalised text, proj_tokens (B, L, C) =
            ``dot_product_projection_text(normalized / 2)``, token_bias (B, L) = normalized·bias_lang + bias0.
        """
        normalized = F.normalize(text, p=2, dim=-1)
        proj_tokens = self.dot_product_projection_text(normalized / 2.0)
        token_bias = torch.matmul(normalized, self.bias_lang) + self.bias0
        return normalized, proj_tokens, token_bias

    def token_logits(self, x: torch.Tensor, proj_tokens: torch.Tensor, token_bias: torch.Tensor) -> torch.Tensor:
        """Token logits of one level.

        Args:
            x: (B, C, H, W) tower output of the level (not normalised).
            proj_tokens: (B, L, C) from :meth:`project_tokens`.
            token_bias: (B, L) from :meth:`project_tokens`.

        Returns:
            (B, H·W, L) logits, locations row-major over (y, x), clamped to ±50000.
        """
        batch, channels = x.shape[:2]
        queries = x.permute(0, 2, 3, 1).reshape(batch, -1, channels)
        logits = torch.matmul(queries, proj_tokens.transpose(-1, -2)) / self.log_scale.exp()
        logits = logits + token_bias.unsqueeze(1)
        return logits.clamp(min=-CLAMP, max=CLAMP)


def _check_bert_config(bert_config: Any, lang_dim: int) -> None:
    """The tower's BERT layers run on the text stream, so their hidden size must be the text size."""
    hidden_size = getattr(bert_config, "hidden_size", None)
    if hidden_size != lang_dim:
        raise ValueError(f"early fusion needs a BERT config with hidden_size == lang_dim ({lang_dim}), got "
                         f"{hidden_size}")


def _build_tower(
    channels: int,
    lang_dim: int,
    num_convs: int,
    bert_config: Any,
    fusion: dict[str, Any] | None,
    dyconv: dict[str, Any],
    use_fused_dot_product: bool,
) -> nn.Sequential:
    """Tower modules in official order: per block [VLFuse, BertEncoderLayer, DyConv], or DyConv alone.

    ``fusion`` holds the VLFuse options, None without early fusion. The last block's BERT layer only exists
    when its output is scored (``use_fused_dot_product``); otherwise its slot is kept empty, as in GLIP.
    """
    tower: list[nn.Module] = []
    for block in range(num_convs):
        if fusion is not None:
            tower.append(VLFuse(channels, lang_dim, num_convs, **fusion))
            last = block == num_convs - 1
            tower.append(BertEncoderLayer(bert_config) if not last or use_fused_dot_product else PassThrough())
        tower.append(DyConv(channels, channels, **dyconv))
    return nn.Sequential(*tower)


def _record_tower_output(record: dict, index: int, module: nn.Module, state: dict[str, Any]) -> None:
    """Store what tower module ``index`` produced, under the reference fixtures' names."""
    prefix = f"tower.{index}.{type(module).__name__}"
    produces = getattr(module, "produces", ())
    if "visual" in produces:
        for level, x in enumerate(state["visual"]):
            record[f"{prefix}.visual.level{level}"] = x
    if "lang" in produces:
        record[f"{prefix}.lang"] = state["lang"]["hidden"]
