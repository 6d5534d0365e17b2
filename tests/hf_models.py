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


# ----------------------------------------------------------------------------------------------------- OWLv2
#: Words the tiny CLIP tokenizer knows whole (each one token); other words fall back to one token per character.
OWL_WORDS = ("itap", "of", "a", "bad", "photo", "the", "origami", "large", "in", "video", "game", "art", "small",
             "apple", "banana", "cherry", "lemon", "grape", "red", "green", "blue", "square", "ripe", "fruit")
OWL_IMAGE_SIZE = 64


def tiny_clip_tokenizer(words=OWL_WORDS):
    """A CLIP tokenizer over a made-up vocabulary, built offline the way transformers' CLIP tests build theirs.

    ``!`` is id 0 (the padding of OWLv2's real tokenizer), then every lower-case letter, digit and ``-`` with and
    without the end-of-word marker, the prefixes of ``words`` merged character by character, and the start and end
    tokens last: the text model pools at the highest id, which must be the end token, as in CLIP's vocabulary.
    """
    from transformers import CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789-"
    vocab = ["!", *chars, *(c + "</w>" for c in chars)]
    merges: list[tuple[str, str]] = []
    for word in sorted(words, key=len, reverse=True):  # longer words first, so a shorter one never splits them
        token = word[0]
        for i, char in enumerate(word[1:], start=1):
            piece = char + ("</w>" if i == len(word) - 1 else "")
            if (token, piece) not in merges:
                merges.append((token, piece))
            token += piece
            if token not in vocab:
                vocab.append(token)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, pad_token="!",
                         model_max_length=16)


def tiny_owlv2_config(vocab_size: int):
    """An ``Owlv2Config`` of a few channels: 64 px images in 8 px patches (64 boxes), 16 text tokens."""
    import transformers

    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": OWL_IMAGE_SIZE, "patch_size": 8}
    text = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1}
    # The class head compares image embeddings of the text width with projected text: projection = text width.
    return transformers.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)


def tiny_owlv2(vocab_size: int):
    """The detection model of :func:`tiny_owlv2_config`, seeded, in eval mode."""
    import transformers

    torch.manual_seed(0)
    model = transformers.Owlv2ForObjectDetection(tiny_owlv2_config(vocab_size)).eval()
    # Owlv2Config has no initializer_range, so the heads' linear layers start at unit scale and every score saturates
    # at 0 or 1; a published checkpoint's are moderate. Smaller head weights keep the scores spread.
    with torch.no_grad():
        for head in (model.class_head, model.box_head):
            for layer in head.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0.0, 0.1)
                    layer.bias.zero_()
    return model


def save_tiny_owlv2(folder: Path, *, processor: bool = True) -> Path:
    """Write a tiny OWLv2 model (and, with ``processor``, its 64 px processor and tiny tokenizer) into ``folder``."""
    from transformers import Owlv2ImageProcessor, Owlv2Processor

    tokenizer = tiny_clip_tokenizer()
    tiny_owlv2(len(tokenizer)).save_pretrained(folder)
    if processor:
        image_processor = Owlv2ImageProcessor(size={"height": OWL_IMAGE_SIZE, "width": OWL_IMAGE_SIZE})
        Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
