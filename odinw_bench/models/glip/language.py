"""GLIP's language backbone (``language_backbone.body.*``): a HuggingFace ``BertModel`` and GLIP's pooling.

The wrapped model lives at ``.model`` so keys read ``model.embeddings...`` / ``model.encoder.layer.{i}...``,
the official names after the ``language_backbone.body.`` prefix. With transformers >= 4.31,
``embeddings.position_ids`` (and ``embeddings.token_type_ids``) are non-persistent buffers, so the state dict has
one key fewer than official checkpoints written with transformers 4.30; a loader must ignore ``position_ids``.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import BertConfig

logger = logging.getLogger(__name__)


def bert_config_from_dict(values: dict) -> BertConfig:
    """Build a ``transformers.BertConfig`` from plain values (e.g. ``meta.json["bert_config"]``).

    Args:
        values: BertConfig keyword arguments (hidden_size, num_hidden_layers, ...).

    Returns:
        The config; unspecified fields keep bert-base-uncased defaults.
    """
    from transformers import BertConfig

    return BertConfig(**values)


class BertEncoder(nn.Module):
    """BERT text encoder returning GLIP's language dict.

    Args:
        bert_config: Architecture of the BERT (bert-base-uncased for GLIP-T/L). It is copied, never mutated.
        num_layers: GLIP's ``N_LAYERS``: how many of the last layers are averaged into ``embedded``.
        attn_implementation: "eager" (the arithmetic of the transformers version GLIP ran) or "sdpa"; both
            match the official outputs to float32 rounding.
        use_checkpoint: Gradient checkpointing of the BERT layers.
    """

    def __init__(self, bert_config: BertConfig, num_layers: int = 1, attn_implementation: str = "eager",
                 use_checkpoint: bool = False):
        super().__init__()
        from transformers import BertModel

        self.num_layers = num_layers
        self.model = BertModel(copy.deepcopy(bert_config), add_pooling_layer=False)
        self.model.set_attn_implementation(attn_implementation)
        self.language_dim = bert_config.hidden_size
        if use_checkpoint:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _additive_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, L) additive mask: 0 where a token is seen, the dtype's minimum where it is padding.

        transformers builds the same mask from a 2D one, but first asks whether any token is padded
        (``padding_mask.all()``), which makes a GPU step wait for the host; a prepared 4D mask is used as given.
        Adding 0 where transformers would drop the mask leaves every score as it is.
        """
        dtype = self.model.embeddings.word_embeddings.weight.dtype
        seen = attention_mask[:, None, None, :].bool()
        return torch.where(seen, torch.zeros((), dtype=dtype, device=seen.device), torch.finfo(dtype).min)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """Encode token ids.

        Only ``input_ids`` and ``attention_mask`` reach BERT (token types are the default zeros), as in GLIP.

        Args:
            input_ids: (B, L) int64 ids, [CLS] ... [SEP] then [PAD]s.
            attention_mask: (B, L) 0/1; [CLS] and [SEP] are 1.

        Returns:
            dict with
            ``hidden`` (B, L, D): last layer, unmasked (what the fusion consumes);
            ``embedded`` (B, L, D): mean of the last ``num_layers`` layers divided by ``num_layers`` again
            (GLIP's double division), times the mask;
            ``masks`` (B, L): the attention mask as given;
            ``aggregate`` (B, D): sum of ``embedded`` over tokens / number of unmasked tokens;
            ``hidden_states``: tuple of (B, L, D), the embeddings output then every layer.
        """
        outputs = self.model(input_ids=input_ids, attention_mask=self._additive_mask(attention_mask),
                             output_hidden_states=True)
        layers = outputs.hidden_states[1:]
        features = torch.stack(layers[-self.num_layers:], dim=1).mean(dim=1) / self.num_layers
        mask = attention_mask.unsqueeze(-1).to(features.dtype)
        embedded = features * mask
        aggregate = embedded.sum(dim=1) / mask.sum(dim=1)
        return {
            "hidden": layers[-1],
            "embedded": embedded,
            "masks": attention_mask,
            "aggregate": aggregate,
            "hidden_states": outputs.hidden_states,
        }
