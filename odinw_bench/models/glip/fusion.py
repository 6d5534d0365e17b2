"""Vision-language deep fusion of the VLDyHead tower: MHA-B cross attention and the tower's BERT layers.

Mirrors ``utils/fuse_helper.{BiMultiHeadAttention, BiAttentionBlockForCheckpoint}``, ``rpn/vldyhead.VLFuse``
and ``rpn/vldyhead.BertEncoderLayer`` (with the clamped BERT blocks of ``rpn/modeling_bert.py``) of the
official GLIP code, parameter names included. Every numerical quirk of the official code is kept on purpose:

* text→image attention adds the raw 0/1 text mask with padding filled by −9e15, so valid tokens get +1;
* image→text attention has no mask at all: it softmaxes over every visual token, batch padding included,
  after a row-max subtraction and a second ±50000 clamp;
* the fusion residual starts from the layer-normalised inputs, not the raw ones;
* the tower's BERT layer clamps to ±50000 after q·kᵀ/√d (before the mask), in the intermediate block and
  around the output LayerNorm.

Tower modules exchange a dict ``{"visual": [(B, C, H_l, W_l)] * levels, "lang": {"hidden", "masks", ...}}``.
They return a new dict and a new ``lang`` dict rather than mutating the caller's (GLIP mutates in place; the
values are the same).

Deep prompts (the ``deep-prompt`` regime, not GLIP's) are learnable tokens a fusion step prepends to the text:
``lang["deep_prompts"]`` holds one (P, D) tensor per remaining fusion step, and each ``VLFuse`` takes the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: GLIP's overflow/underflow guard, sized for float16.
CLAMP = 50000.0
#: Additive value for padded text tokens in the text→image softmax (valid tokens get their mask value, 1).
MASKED_FILL = -9e15
#: The ``lang`` key of the deep prompts still to be used by the tower's fusion steps.
DEEP_PROMPTS = "deep_prompts"


class BiMultiHeadAttention(nn.Module):
    """Bidirectional multi-head attention between visual tokens and text tokens (MHA-B).

    Args:
        v_dim: visual feature size (the head's channels).
        l_dim: text feature size (the language model's hidden size).
        embed_dim: joint attention size (2048 in GLIP).
        num_heads: attention heads (8 in GLIP, so the scale is 1/16).
        dropout: attention-probability dropout, applied to both directions in training only.
    """

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int = 2048, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for linear in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                       self.out_l_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _head_view(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) → (B, heads, N, head_dim), a view (no copy)."""
        return x.view(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, heads, N, head_dim) → (B, N, E)."""
        return x.transpose(1, 2).reshape(batch, -1, self.embed_dim)

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, attention_mask_l: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attend both ways.

        Args:
            v: (B, Nv, v_dim) visual tokens (all levels flattened).
            l: (B, L, l_dim) text tokens.
            attention_mask_l: (B, L) text mask, 1 for real tokens and 0 for padding.

        Returns:
            delta_v (B, Nv, v_dim) and delta_l (B, L, l_dim).
        """
        batch, num_visual, _ = v.shape
        # The visual side is (B, Nv, 2048): at GLIP-T's test size each such tensor is 180 MB, so the heads are
        # views (matmul reads the strides) and the scale is applied in place: no copies, the same numbers.
        query = self.v_proj(v)
        query.mul_(self.scale)
        query = self._head_view(query)
        value_v = self._head_view(self.values_v_proj(v))
        key = self._head_view(self.l_proj(l))
        value_l = self._head_view(self.values_l_proj(l))

        num_text = l.shape[1]
        attn = torch.matmul(query, key.transpose(-1, -2)).view(batch * self.num_heads, num_visual, num_text)
        attn = attn.clamp(min=-CLAMP, max=CLAMP)  # (B·h, Nv, L)

        # Image→text: every visual token (padding included) is attended to; no mask.
        attn_t = attn.transpose(1, 2)
        attn_l = (attn_t - attn_t.max(dim=-1, keepdim=True)[0]).clamp(min=-CLAMP, max=CLAMP).softmax(dim=-1)

        if attention_mask_l is not None:
            num_text = attn.shape[-1]
            attn = attn.view(batch, self.num_heads, num_visual, num_text) + _additive_text_mask(attention_mask_l)
            attn = attn.view(batch * self.num_heads, num_visual, num_text)
        attn_v = attn.softmax(dim=-1)

        attn_v = F.dropout(attn_v, p=self.dropout, training=self.training)
        attn_l = F.dropout(attn_l, p=self.dropout, training=self.training)
        heads = (batch, self.num_heads)
        out_v = self._merge_heads(torch.matmul(attn_v.view(*heads, num_visual, num_text), value_l), batch)
        out_l = self._merge_heads(torch.matmul(attn_l.view(*heads, num_text, num_visual), value_v), batch)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


def _additive_text_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 0/1 mask → (B, 1, 1, L) additive term: padding −9e15, valid tokens keep their value 1.

    GLIP fills the raw mask in place, so valid positions add +1 rather than 0; the softmax is
    shift-invariant but float32 rounding is not, hence the faithful copy.
    """
    if mask.dtype == torch.bool:
        mask = mask.long()
    mask = mask[:, None, None, :]
    return mask.masked_fill(mask == 0, MASKED_FILL)


class BiAttentionBlock(nn.Module):
    """Pre-LN bidirectional attention with layer scale (GLIP's ``BiAttentionBlockForCheckpoint``).

    ``v' = LN_v(v) + gamma_v · Δv`` and ``l' = LN_l(l) + gamma_l · Δl``: the residual starts from the
    normalised inputs. Keys: ``gamma_v``, ``gamma_l``, ``layer_norm_v``, ``layer_norm_l``, ``attn.*``.

    Args:
        v_dim: visual feature size.
        l_dim: text feature size.
        embed_dim: joint attention size.
        num_heads: attention heads.
        dropout: attention dropout (training only).
        init_values: initial layer-scale value (1/num_convs in GLIP).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim=embed_dim, num_heads=num_heads, dropout=dropout)
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, attention_mask_l: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Nv, v_dim), (B, L, l_dim), (B, L) → updated (B, Nv, v_dim), (B, L, l_dim)."""
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(l)
        delta_v, delta_l = self.attn(v, l, attention_mask_l=attention_mask_l)
        return v + self.gamma_v * delta_v, l + self.gamma_l * delta_l


def flatten_levels(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Concatenate per-level maps into one token sequence.

    Args:
        features: per-level maps (B, C, H_l, W_l).

    Returns:
        (B, Σ H_l·W_l, C) tokens, level order then row-major (y, x) within a level, and the (H_l, W_l) sizes.
    """
    sizes = [(f.shape[-2], f.shape[-1]) for f in features]
    tokens = torch.cat([f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1]) for f in features], dim=1)
    return tokens, sizes


def split_levels(tokens: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_levels`: (B, N, C) → per-level (B, C, H_l, W_l)."""
    batch = tokens.shape[0]
    channels_first = tokens.transpose(1, 2).contiguous()
    maps, start = [], 0
    for h, w in sizes:
        maps.append(channels_first[:, :, start : start + h * w].reshape(batch, -1, h, w))
        start += h * w
    return maps


class VLFuse(nn.Module):
    """Early fusion step of a tower block (MHA-B): one attention over all levels' tokens and the text.

    Args:
        v_dim: visual feature size (the head's channels).
        l_dim: text feature size.
        num_convs: tower blocks; the layer scale starts at 1/num_convs.
        embed_dim: joint attention size (2048 in GLIP).
        num_heads: attention heads (8 in GLIP).
        dropout: attention dropout (0.1 in GLIP, training only).
        use_checkpoint: recompute the block in the backward pass (saves memory; same numbers).
    """

    produces = ("visual", "lang")

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        num_convs: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.b_attn = BiAttentionBlock(
            v_dim, l_dim, embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, init_values=1.0 / num_convs
        )

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{"visual": [(B,C,Hl,Wl)], "lang": {"hidden": (B,L,D), "masks": (B,L), ...}}`` → fused copy.

        With deep prompts (``lang["deep_prompts"]``, a sequence of (P, D) tensors) the first is prepended to the
        text as P always-valid tokens: the image attends to them, and their own update is dropped, so the text
        leaving the step keeps its L tokens and the later steps get the remaining prompts.
        """
        tokens, sizes = flatten_levels(inputs["visual"])
        lang = inputs["lang"]
        hidden, masks, prompts = lang["hidden"], lang["masks"], lang.get(DEEP_PROMPTS, ())
        if len(prompts):
            prompt = prompts[0].to(hidden.dtype).expand(hidden.shape[0], -1, -1)  # (B, P, D)
            hidden = torch.cat([prompt, hidden], dim=1)
            masks = torch.cat([masks.new_ones(prompt.shape[:2]), masks], dim=1)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            new_v, new_l = checkpoint(self.b_attn, tokens, hidden, masks, use_reentrant=False)
        else:
            new_v, new_l = self.b_attn(tokens, hidden, masks)
        if len(prompts):
            new_l = new_l[:, prompts[0].shape[0]:]
            lang = {**lang, DEEP_PROMPTS: prompts[1:]}
        return {"visual": split_levels(new_v, sizes), "lang": {**lang, "hidden": new_l}}


class DeepPrompts(nn.Module):
    """Learnable text tokens for each fusion step of the tower (the ``deep-prompt`` regime; not in GLIP).

    In the manner of VPT-deep (Jia et al., 2022): every fusion step gets its own P tokens, prepended to the text
    the image attends to (see :meth:`VLFuse.forward`). They start as BERT initialises embeddings (normal, std
    0.02); the fusion layer-normalises them like any text token. The ``weight`` is (steps, P, D).

    Args:
        steps: Fusion steps of the tower.
        tokens: Tokens per step (P).
        dim: Text feature size (D).
    """

    def __init__(self, steps: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(steps, tokens, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self) -> tuple[torch.Tensor, ...]:
        """One (P, D) tensor per fusion step, in tower order."""
        return tuple(self.weight.unbind(0))


class _BertSelfAttention(nn.Module):
    """BERT self-attention with GLIP's ±50000 clamp between the scaling and the mask."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads"
            )
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) → (B, heads, L, head_size)."""
        return x.view(*x.shape[:-1], self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, hidden: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) and the additive (B, 1, 1, L) mask → context (B, L, D)."""
        query, key, value = self._split(self.query(hidden)), self._split(self.key(hidden)), self._split(
            self.value(hidden)
        )
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)
        scores = scores.clamp(min=-CLAMP, max=CLAMP) + extended_mask
        probs = self.dropout(scores.softmax(dim=-1))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        return context.view(*context.shape[:-2], -1)


class _BertSelfOutput(nn.Module):
    """Dense, dropout, LayerNorm(x + residual); no clamps (as in GLIP)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class _BertAttention(nn.Module):
    """``attention.self`` + ``attention.output``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.self = _BertSelfAttention(config)
        self.output = _BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, extended_mask), hidden)


class _BertIntermediate(nn.Module):
    """Dense, clamp, activation, clamp."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        act = config.hidden_act
        self.intermediate_act_fn = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.dense(hidden).clamp(min=-CLAMP, max=CLAMP)
        return self.intermediate_act_fn(hidden).clamp(min=-CLAMP, max=CLAMP)


class _BertOutput(nn.Module):
    """Dense, dropout, clamp, LayerNorm(x + residual), clamp."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.dense(hidden)).clamp(min=-CLAMP, max=CLAMP)
        return self.LayerNorm(hidden + residual).clamp(min=-CLAMP, max=CLAMP)


class BertEncoderLayer(nn.Module):
    """Post-LN BERT layer applied to the text stream inside the tower (GLIP's ``BertEncoderLayer``).

    Keys: ``attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``, ``intermediate.dense``,
    ``output.{dense,LayerNorm}``. The visual stream passes through unchanged.

    Args:
        config: a ``transformers.BertConfig`` (or any object with its attributes): hidden_size,
            num_attention_heads, intermediate_size, hidden_act, layer_norm_eps, hidden_dropout_prob,
            attention_probs_dropout_prob.
    """

    produces = ("lang",)

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = _BertAttention(config)
        self.intermediate = _BertIntermediate(config)
        self.output = _BertOutput(config)

    def encode(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) text and (B, L) 0/1 mask → (B, L, D)."""
        dtype = self.attention.self.query.weight.dtype
        # HuggingFace's get_extended_attention_mask: (1 − mask)·finfo.min, broadcast over heads and queries.
        extended = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        attention_output = self.attention(hidden, extended)
        return self.output(self.intermediate(attention_output), attention_output)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Tower interface: replaces ``lang["hidden"]`` (in a new dict)."""
        lang = inputs["lang"]
        return {"visual": inputs["visual"], "lang": {**lang, "hidden": self.encode(lang["hidden"], lang["masks"])}}
