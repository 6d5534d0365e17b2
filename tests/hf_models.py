"""Tiny random Grounding DINO family models saved as ``save_pretrained`` folders, for offline tests.

Swin and BERT of a few channels, 20 queries, no dropout or drop path (training steps are reproducible), the
shipped bert-base-uncased vocabulary (the real tokenizer drives the model), resized to 64-96 px.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_config(kind: str, max_text_len: int = 16):
    """A ``GroundingDinoConfig`` (``kind="grounding-dino"``) or ``MMGroundingDinoConfig`` of a few channels."""
    import transformers

    from odinw_bench.data.tokenizer import VOCAB_SIZE

    swin = transformers.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   image_size=64, out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"],
                                   drop_path_rate=0.0)
    bert = transformers.BertConfig(vocab_size=VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, max_position_embeddings=max(32, 2 * max_text_len),
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config_cls = transformers.GroundingDinoConfig if kind == "grounding-dino" else transformers.MMGroundingDinoConfig
    return config_cls(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                      num_queries=20, encoder_n_points=2, decoder_n_points=2, max_text_len=max_text_len,
                      dropout=0.0, fusion_droppath=0.0)


def tiny_model(kind: str, max_text_len: int = 16):
    """The detection model of :func:`tiny_config`, seeded, in eval mode."""
    import transformers

    torch.manual_seed(0)
    model_cls = (transformers.GroundingDinoForObjectDetection if kind == "grounding-dino"
                 else transformers.MMGroundingDinoForObjectDetection)
    return model_cls(tiny_config(kind, max_text_len)).eval()


def save_tiny_grounding_dino(folder: Path, kind: str = "grounding-dino", max_text_len: int = 16) -> Path:
    """Write a tiny model and its processor (64/96 px resize, the shipped vocabulary) into ``folder``."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    from odinw_bench.data.tokenizer import get_tokenizer

    tiny_model(kind, max_text_len).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=get_tokenizer()).save_pretrained(folder)
    return folder
