"""Text prompts and token maps, exactly as GLIP builds them for ODinW.

A task's categories become one caption (GLIP ``create_queries_and_maps`` for evaluation,
``convert_od_to_grounding_simple`` for training): names in label order, joined by the separator, no trailing
separator; each category's positive span is its name only (never a caption-prompt prefix or suffix). The span
becomes token indices through the tokenizer's ``char_to_token`` with GLIP's fallbacks. Example::

    from odinw_bench.data.prompts import TaskPrompt

    prompt = TaskPrompt.from_names(["fish", "jellyfish", "penguin"])
    chunk = prompt.chunks[0]
    chunk.caption.text        # 'fish. jellyfish. penguin'
    chunk.positive_map        # {1: [1], 2: [3, 4], 3: [6]}   ([CLS] is token 0)
    chunk.labels              # (0, 1, 2): global 0-based category indices

Captions that do not fit in the 256-token window are split into chunks of consecutive categories; ODinW never
needs more than one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from odinw_bench.data.tokenizer import MAX_QUERY_LEN, count_tokens, get_tokenizer
from odinw_bench.errors import UserError
from odinw_bench.tasks.spec import PromptSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from odinw_bench.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

# One caption entry: (prefix, name, suffix); only ``name`` is the positive span.
Entry = tuple[str, str, str]


@dataclass(frozen=True)
class Caption:
    """A prompt string and, per label, the character span of its name.

    Attributes:
        text: The caption.
        spans: ``spans[i] = (start, end)`` (end exclusive) of label ``i + 1``'s name in ``text``.
    """

    text: str
    spans: tuple[tuple[int, int], ...]


def clean_name(name: str) -> str:
    """GLIP's ``clean_name``: greedy ``(...)`` removal, ``_`` to space, each ``"  "`` to ``" "`` once.

    The replacements are not repeated, so ``"cat (animal)"`` keeps a trailing space (``"cat "``) and three
    spaces become two; GLIP's positive-map fallbacks then decide the span.
    """
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def _part(part: Any, key: str) -> str:
    """Field of a caption-prompt entry given as a dataclass, OmegaConf node or plain mapping."""
    if isinstance(part, Mapping):
        return str(part.get(key, "") or "")
    return str(getattr(part, key, "") or "")


def prompt_entries(
    names: Sequence[str], prompt: PromptSpec | None = None, *, for_training: bool = False
) -> list[Entry]:
    """The ``(prefix, name, suffix)`` of every category, in label order.

    ``prompt.names`` renames the categories (GLIP ``OVERRIDE_CATEGORY``); ``prompt.caption`` entries (GLIP
    ``CAPTION_PROMPT``) replace them and add a prefix and suffix. Plain names always go through
    :func:`clean_name`. Caption-prompt names do only on the training path: GLIP's evaluation routine uses them
    verbatim, its training routine cleans them.

    Raises:
        UserError: If ``prompt.names`` or ``prompt.caption`` does not have one entry per category.
    """
    prompt = prompt if prompt is not None else PromptSpec()
    labels = [str(n) for n in names]
    if prompt.names is not None:
        _check_length(prompt.names, labels, "prompt.names")
        labels = [str(n) for n in prompt.names]
    if prompt.caption is None:
        return [("", clean_name(n), "") for n in labels]
    _check_length(prompt.caption, labels, "prompt.caption")
    entries = []
    for part in prompt.caption:
        name = _part(part, "name")
        entries.append((_part(part, "prefix"), clean_name(name) if for_training else name, _part(part, "suffix")))
    return entries


def _check_length(values: Sequence[Any], names: Sequence[str], field: str) -> None:
    if len(values) != len(names):
        raise UserError(f"has {len(values)} entries but the task has {len(names)} categories", field=field)


def join_entries(entries: Sequence[Entry], separator: str = ". ") -> Caption:
    """Concatenate entries as GLIP does: ``prefix + name + suffix``, ``separator`` between, none at the end."""
    text = ""
    spans = []
    for index, (prefix, name, suffix) in enumerate(entries):
        text += prefix
        start = len(text)
        text += name
        spans.append((start, len(text)))
        text += suffix
        if index != len(entries) - 1:
            text += separator
    return Caption(text=text, spans=tuple(spans))


def build_caption(names: Sequence[str], prompt: PromptSpec | None = None, *, for_training: bool = False) -> Caption:
    """The caption GLIP builds for these categories (see :func:`prompt_entries` for the rules).

    Args:
        names: Category names in label order (label ``i + 1`` is ``names[i]``).
        prompt: Separator, renames and caption-prompt entries; ``None`` means ``PromptSpec()`` (``". "``).
        for_training: Build the training caption (caption-prompt names cleaned) instead of the evaluation one.
    """
    prompt = prompt if prompt is not None else PromptSpec()
    return join_entries(prompt_entries(names, prompt, for_training=for_training), prompt.separator)


def _char_to_token(encoding: Any, index: int) -> int | None:
    """``char_to_token`` that answers None (as GLIP's try/except does) for characters it cannot map."""
    if index < 0:
        return None
    try:
        return encoding.char_to_token(index)
    except Exception:  # the tokenizer raises for indices past the text
        return None


def _span_tokens(encoding: Any, start: int, end: int) -> list[int]:
    """Token indices of the character span ``[start, end)`` with GLIP's ``create_positive_dict`` fallbacks."""
    first = _char_to_token(encoding, start)
    if first is None:  # e.g. the span starts on a space: try the next two characters
        first = _char_to_token(encoding, start + 1)
        if first is None:
            first = _char_to_token(encoding, start + 2)
    last = _char_to_token(encoding, end - 1)
    if last is None:  # e.g. clean_name left a trailing space: try the two characters before it
        last = _char_to_token(encoding, end - 2)
        if last is None:
            last = _char_to_token(encoding, end - 3)
    if first is None or last is None:
        return []
    return list(range(first, last + 1))


def positive_map(
    caption: Caption, tokenizer: PreTrainedTokenizerBase | None = None, max_length: int = MAX_QUERY_LEN
) -> dict[int, list[int]]:
    """Token indices of every label's name (GLIP ``positive_map_label_to_token``).

    The caption is tokenized with ``[CLS]``/``[SEP]`` and truncated at ``max_length``, as the model sees it.
    Labels whose span maps to no token (GLIP skips them silently) are absent from the result.

    Returns:
        ``{label (1-based): [token indices]}``, with ``[CLS]`` at index 0.
    """
    tokenizer = tokenizer or get_tokenizer()
    encoding = tokenizer(caption.text, max_length=max_length, truncation=True)
    result = {}
    for label, (start, end) in enumerate(caption.spans, start=1):
        tokens = _span_tokens(encoding, start, end)
        if tokens:
            result[label] = tokens
    return result


def positive_map_tensor(
    label_to_tokens: Mapping[int, Sequence[int]], num_labels: int, max_length: int = MAX_QUERY_LEN
) -> torch.Tensor:
    """Dense 0/1 form of a positive map.

    Args:
        label_to_tokens: ``{label (1-based): [token indices]}`` from :func:`positive_map`.
        num_labels: Number of rows (labels ``1..num_labels``).
        max_length: Number of token positions.

    Returns:
        ``(num_labels, max_length)`` float32; row ``k`` marks the tokens of label ``k + 1``.
    """
    import torch

    dense = torch.zeros(num_labels, max_length, dtype=torch.float32)
    for label, tokens in label_to_tokens.items():
        if not 1 <= label <= num_labels:
            raise ValueError(f"label {label} outside 1..{num_labels}")
        if any(t < 0 or t >= max_length for t in tokens):
            raise ValueError(f"label {label} has token indices outside 0..{max_length - 1}: {list(tokens)}")
        dense[label - 1, list(tokens)] = 1.0
    return dense


@dataclass(frozen=True)
class PromptChunk:
    """One caption over a run of consecutive categories.

    Attributes:
        caption: The caption and the spans of its categories (chunk-local order).
        labels: Global 0-based category index of each chunk-local label (local label ``i + 1`` is category
            ``labels[i]``).
        positive_map: ``{local label (1-based): [token indices]}``.
    """

    caption: Caption
    labels: tuple[int, ...]
    positive_map: dict[int, list[int]]

    @property
    def text(self) -> str:
        """The caption string."""
        return self.caption.text

    def positive_map_tensor(self, max_length: int = MAX_QUERY_LEN) -> torch.Tensor:
        """``(len(labels), max_length)`` float 0/1 map of this chunk's labels."""
        return positive_map_tensor(self.positive_map, len(self.labels), max_length)


def _name_field(index: int, prompt: PromptSpec) -> str:
    if prompt.caption is not None:
        return f"prompt.caption[{index}]"
    if prompt.names is not None:
        return f"prompt.names[{index}]"
    return f"categories[{index}].name"


def _chunk_bounds(entries: list[Entry], separator: str, fits: Any, prompt: PromptSpec) -> list[tuple[int, int]]:
    """Greedy ``[start, end)`` runs of consecutive entries whose joined caption ``fits``."""
    bounds = []
    start = 0
    while start < len(entries):
        if not fits(join_entries(entries[start : start + 1], separator).text):
            name = entries[start][1]
            raise UserError(
                f"category {start} ({name!r}) does not fit alone in the prompt token limit",
                field=_name_field(start, prompt),
            )
        end = start + 1
        while end < len(entries) and fits(join_entries(entries[start : end + 1], separator).text):
            end += 1
        bounds.append((start, end))
        start = end
    return bounds


def chunk_categories(
    names: Sequence[str],
    prompt: PromptSpec | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = MAX_QUERY_LEN,
    *,
    for_training: bool = False,
) -> list[PromptChunk]:
    """Split the categories into captions that fit in ``max_length`` tokens (``[CLS]`` and ``[SEP]`` included).

    One chunk when everything fits (always the case on ODinW, as in GLIP's default ``CHUNKED_EVALUATION -1``);
    otherwise greedy runs of consecutive categories. Unlike GLIP's fixed-size chunks, nothing is ever truncated.

    Raises:
        UserError: If one category's caption entry alone exceeds ``max_length`` tokens.
    """
    prompt = prompt if prompt is not None else PromptSpec()
    tokenizer = tokenizer or get_tokenizer()
    entries = prompt_entries(names, prompt, for_training=for_training)
    if not entries:
        raise UserError("no categories to build a prompt from", field="categories")

    def fits(text: str) -> bool:
        return count_tokens(text, tokenizer) <= max_length

    full = join_entries(entries, prompt.separator)
    bounds = [(0, len(entries))] if fits(full.text) else _chunk_bounds(entries, prompt.separator, fits, prompt)
    chunks = []
    for start, end in bounds:
        caption = join_entries(entries[start:end], prompt.separator)
        label_map = positive_map(caption, tokenizer, max_length)
        for index in range(start, end):
            if index - start + 1 not in label_map:
                # GLIP skips such a label silently; it then never scores, so say so.
                logger.warning("category %d (%r) maps to no token in %r", index, entries[index][1], caption.text)
        chunks.append(PromptChunk(caption=caption, labels=tuple(range(start, end)), positive_map=label_map))
    if len(chunks) > 1:
        logger.info("%d categories exceed %d tokens: split into %d prompts", len(entries), max_length, len(chunks))
    return chunks


@dataclass(frozen=True)
class TaskPrompt:
    """Everything a detector needs to score a task's categories from text.

    Attributes:
        names: The task's category names in label order.
        chunks: Captions covering every category exactly once, in label order.
        max_length: Token window of each caption.
    """

    names: tuple[str, ...]
    chunks: tuple[PromptChunk, ...]
    max_length: int = MAX_QUERY_LEN

    @classmethod
    def from_names(
        cls,
        names: Sequence[str],
        prompt: PromptSpec | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_length: int = MAX_QUERY_LEN,
        for_training: bool = False,
    ) -> TaskPrompt:
        """Build the prompt(s) for ``names`` under ``prompt`` (default: names joined by ``". "``)."""
        chunks = chunk_categories(names, prompt, tokenizer, max_length, for_training=for_training)
        return cls(names=tuple(str(n) for n in names), chunks=tuple(chunks), max_length=max_length)

    @classmethod
    def from_task(cls, task: TaskSpec, variant: str | None = None, **kwargs: Any) -> TaskPrompt:
        """Build a task's default prompt or a named variant (``kwargs`` as for :meth:`from_names`)."""
        try:
            spec = task.prompt_for(variant)
        except KeyError:
            known = ", ".join(sorted(task.prompt_variants)) or "none"
            raise UserError(f"unknown prompt variant {variant!r} (known: default, {known})", field="prompt") from None
        return cls.from_names(task.category_names, spec, **kwargs)

    @property
    def captions(self) -> list[str]:
        """The caption of each chunk."""
        return [chunk.text for chunk in self.chunks]

    @property
    def num_labels(self) -> int:
        """Number of categories."""
        return len(self.names)
