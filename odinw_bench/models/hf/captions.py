"""Category names -> Grounding DINO captions and per-category token spans, chunked to the model's text length.

Grounding DINO's caption is the lower-cased names joined by ``". "`` and ended by ``"."`` (``"cat. traffic
light."``): transformers' processor merges candidate labels this way, IDEA's evaluation writes ``" . ".join(names) +
" ."`` and mmdetection ``name + ". "`` per name; BERT splits the punctuation, so all three tokenize alike. The
``"."`` tokens delimit the phrases the model attends within. A category's span is its name only (never a caption
prompt's prefix or suffix), found with GLIP's ``char_to_token`` fallbacks
(:func:`odinw_bench.data.prompts.positive_map`).

A vocabulary whose caption exceeds ``max_text_len`` tokens (``[CLS]`` and ``[SEP]`` included) is split greedily into
runs of consecutive categories, one caption each.

Example:
    >>> chunks = chunk_vocabulary(["Cat", "traffic light"], tokenizer=get_tokenizer(), max_len=256)  # doctest: +SKIP
    >>> chunks[0].text, chunks[0].token_spans                                                     # doctest: +SKIP
    ('cat. traffic light.', ((1,), (3, 4)))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from odinw_bench.data.prompts import Caption, join_entries, positive_map, prompt_entries
from odinw_bench.data.tokenizer import count_tokens
from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from odinw_bench.tasks.spec import PromptSpec

logger = logging.getLogger(__name__)

Entry = tuple[str, str, str]


@dataclass(frozen=True)
class CaptionChunk:
    """One caption over a run of consecutive categories.

    Attributes:
        text: The caption, e.g. ``"cat. traffic light."``.
        labels: Global 0-based category index of each chunk-local category.
        token_spans: Token indices (``[CLS]`` is 0) of each chunk-local category's name; empty if none maps.
    """

    text: str
    labels: tuple[int, ...]
    token_spans: tuple[tuple[int, ...], ...]

    def span_map(self, max_len: int) -> torch.Tensor:
        """``(len(labels), max_len)`` float 0/1: row ``i`` marks the tokens of chunk-local category ``i``."""
        import torch

        dense = torch.zeros(len(self.labels), max_len, dtype=torch.float32)
        for row, tokens in enumerate(self.token_spans):
            dense[row, list(tokens)] = 1.0
        return dense

    def token_labels(self, max_len: int) -> torch.Tensor:
        """``(max_len,)`` int64: the chunk-local category of each token position, -1 for none."""
        import torch

        owner = torch.full((max_len,), -1, dtype=torch.long)
        for row, tokens in enumerate(self.token_spans):
            owner[list(tokens)] = row
        return owner


def caption_entries(names: Sequence[str], prompt: PromptSpec | None = None, *,
                    for_training: bool = False) -> list[Entry]:
    """``(prefix, name, suffix)`` of every category, lower-cased (the processor lower-cases candidate labels)."""
    entries = prompt_entries(names, prompt, for_training=for_training)
    return [(p.lower(), n.lower(), s.lower()) for p, n, s in entries]


def build_caption(entries: Sequence[Entry], separator: str = ". ") -> Caption:
    """Entries joined by ``separator`` and ended by ``"."``; spans are the names' character ranges."""
    joined = join_entries(entries, separator)
    return Caption(text=joined.text + ".", spans=joined.spans)


def _greedy_bounds(entries: list[Entry], separator: str, fits) -> list[tuple[int, int]]:
    """``[start, end)`` runs of consecutive entries whose caption ``fits``; one entry alone must fit."""
    bounds, start = [], 0
    while start < len(entries):
        if not fits(build_caption(entries[start:start + 1], separator).text):
            raise UserError(f"category {start} ({entries[start][1]!r}) does not fit alone in the model's text "
                            "length", field=f"categories[{start}]")
        end = start + 1
        while end < len(entries) and fits(build_caption(entries[start:end + 1], separator).text):
            end += 1
        bounds.append((start, end))
        start = end
    return bounds


def chunk_vocabulary(names: Sequence[str], prompt: PromptSpec | None = None, *,
                     tokenizer: PreTrainedTokenizerBase, max_len: int,
                     for_training: bool = False) -> list[CaptionChunk]:
    """Captions covering every category once, in label order, each within ``max_len`` tokens.

    Args:
        names: Category names in label order.
        prompt: Separator, renames and caption-prompt entries (default: names joined by ``". "``).
        tokenizer: The model's (fast) tokenizer.
        max_len: The model's ``max_text_len``.
        for_training: Build the training captions (caption-prompt names cleaned, as GLIP's training does).

    Raises:
        UserError: If there are no categories, or one category alone exceeds ``max_len`` tokens.
    """
    entries = caption_entries(names, prompt, for_training=for_training)
    if not entries:
        raise UserError("no categories to build a caption from", field="categories")
    separator = prompt.separator if prompt is not None else ". "

    def fits(text: str) -> bool:
        return count_tokens(text, tokenizer) <= max_len

    whole = build_caption(entries, separator)
    bounds = [(0, len(entries))] if fits(whole.text) else _greedy_bounds(entries, separator, fits)
    chunks = []
    for start, end in bounds:
        caption = build_caption(entries[start:end], separator)
        spans = positive_map(caption, tokenizer, max_len)
        for local in range(end - start):
            if local + 1 not in spans:  # it then never scores and cannot be learnt
                logger.warning("category %d (%r) maps to no token in %r", start + local, entries[start + local][1],
                               caption.text)
        chunks.append(CaptionChunk(text=caption.text, labels=tuple(range(start, end)),
                                   token_spans=tuple(tuple(spans.get(i + 1, ())) for i in range(end - start))))
    if len(chunks) > 1:
        logger.info("%d categories exceed %d tokens: split into %d captions", len(entries), max_len, len(chunks))
    return chunks
