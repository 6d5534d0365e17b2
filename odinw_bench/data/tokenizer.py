"""The offline ``bert-base-uncased`` tokenizer GLIP uses for prompts.

The WordPiece vocabulary ships inside the package (``odinw_bench/data/assets/vocab.txt``), so tokenization never
touches the network. Example::

    from odinw_bench.data.tokenizer import get_tokenizer, tokenize_prompts

    tok = get_tokenizer()
    batch = tokenize_prompts(["fish. jellyfish. penguin"])  # input_ids / attention_mask, (1, 256) int64
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: GLIP's ``MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN``: every prompt is padded or truncated to this many tokens.
MAX_QUERY_LEN = 256
#: Size of the uncased BERT WordPiece vocabulary (``bert-base-uncased``).
VOCAB_SIZE = 30522
# Words that must map to real vocabulary entries; if any becomes [UNK] the vocabulary was not read.
_GUARD_WORDS = ("fish", "person", "rabbit")


def vocab_path() -> str:
    """Filesystem path of the packaged uncased BERT vocabulary."""
    resource = importlib.resources.files("odinw_bench.data").joinpath("assets", "vocab.txt")
    return str(resource)


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> PreTrainedTokenizerBase:
    """The ``bert-base-uncased`` tokenizer, built offline from the packaged vocabulary (cached).

    It is the fast (Rust-backed) tokenizer, so encodings offer ``char_to_token``, which positive maps need.

    Raises:
        RuntimeError: If the vocabulary is missing or was not read (every word would become ``[UNK]``).
    """
    from transformers import BertTokenizerFast

    path = vocab_path()
    # transformers 5 renamed the keyword: ``vocab_file=`` is silently ignored and yields an all-[UNK]
    # tokenizer, while ``vocab=`` reads the file.
    tokenizer = BertTokenizerFast(vocab=path, do_lower_case=True, model_max_length=512)
    _check_vocabulary(tokenizer, path)
    return tokenizer


def _check_vocabulary(tokenizer: PreTrainedTokenizerBase, path: str) -> None:
    """Fail loudly if the tokenizer did not load the real vocabulary."""
    unk = tokenizer.unk_token_id
    for word in _GUARD_WORDS:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids or unk in ids:
            raise RuntimeError(
                f"tokenizer built from {path} maps the plain word {word!r} to [UNK]: the vocabulary was not read "
                "(transformers needs BertTokenizerFast(vocab=PATH), not vocab_file=PATH)"
            )
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer built from {path} has {len(tokenizer)} entries, expected {VOCAB_SIZE}")


def tokenize_prompts(captions: list[str], max_length: int = MAX_QUERY_LEN) -> dict[str, torch.Tensor]:
    """Tokenize captions exactly as GLIP's language backbone does.

    ``[CLS] caption [SEP]`` followed by ``[PAD]`` up to ``max_length``, truncated if longer (GLIP:
    ``batch_encode_plus(..., max_length=256, padding="max_length", truncation=True)``). ``[CLS]`` and ``[SEP]``
    keep attention 1 (GLIP's ``MASK_SPECIAL`` is off).

    Args:
        captions: One prompt per image.
        max_length: Tokens per prompt (GLIP ``MAX_QUERY_LEN``).

    Returns:
        ``input_ids`` and ``attention_mask``, each ``(len(captions), max_length)`` int64.
    """
    encoded = get_tokenizer()(
        list(captions),
        max_length=max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def count_tokens(text: str, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """Number of tokens of ``text`` including ``[CLS]`` and ``[SEP]``, without truncation."""
    tokenizer = tokenizer or get_tokenizer()
    # verbose=False: long texts are expected here (chunking measures them); no length warning.
    return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
