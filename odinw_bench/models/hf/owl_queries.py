"""Category names -> OWLv2 text queries: one query per category and prompt template, as the authors evaluate.

OWL-ViT and OWLv2 read each category as a short text query of its own (no caption, no token spans). The authors'
evaluation (scenic ``owl_vit/evaluator.py`` ``get_predictions``) embeds every class name in each of CLIP's seven
"best" ImageNet prompt templates (``label_ops.CLIP_BEST_PROMPT_TEMPLATES``), canonicalises each query
(``_canonicalize_string_tf``: lower case, every character but ``a-z``, ``0-9``, ``-`` and space becomes a space,
runs of spaces and of dashes collapse, ends stripped), truncates it to the model's 16 tokens, and averages the class
*logits* over the templates. transformers' examples instead pass ``"a photo of a {}"`` once per class; a single
template (``templates=("{}",)``) gives one query per category, exactly what the processor receives.

Queries are ordered template-major: query ``t * C + c`` is template ``t`` for category ``c``, so the logits of an
image reshape to ``(P, T, C)``.

Example:
    >>> query_texts(["Traffic light"], templates=("a photo of a {}.",))
    ['a photo of a traffic light']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from odinw_bench.data.prompts import prompt_entries
from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from odinw_bench.tasks.spec import PromptSpec

logger = logging.getLogger(__name__)

#: scenic ``owl_vit/preprocessing/label_ops.py`` ``CLIP_BEST_PROMPT_TEMPLATES`` (from CLIP's ImageNet prompt
#: engineering notebook): the templates the authors' evaluator ensembles.
AUTHORS_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.",
)


def canonicalize(text: str) -> str:
    """The authors' query canonicalisation (lower case; only ``a-z0-9-`` and single spaces kept; stripped)."""
    text = re.sub(r"[^a-z0-9\- ]", " ", text.lower())
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"-+", "-", text).strip()


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """``templates`` as a tuple.

    Raises:
        UserError: If there is none, or one lacks exactly one ``{}`` slot for the name.
    """
    templates = tuple(str(t) for t in templates)
    if not templates:
        raise UserError("needs at least one prompt template (e.g. '{}')", field="templates")
    for template in templates:
        if template.count("{}") != 1:
            raise UserError(f"prompt template {template!r} needs exactly one '{{}}' for the category name",
                            field="templates")
    return templates


def category_phrases(names: Sequence[str], prompt: PromptSpec | None = None) -> list[str]:
    """Each category's phrase: ``prefix + name + suffix`` of the prompt's entries (renames applied).

    There is one text per category for training and evaluation alike: canonicalisation removes what GLIP's training
    cleaning (``clean_name``) would, so the evaluation entries are used throughout.
    """
    return [prefix + name + suffix for prefix, name, suffix in prompt_entries(names, prompt)]


def query_texts(names: Sequence[str], prompt: PromptSpec | None = None, *,
                templates: Sequence[str] = AUTHORS_TEMPLATES) -> list[str]:
    """The canonical query of every (template, category), template-major (``T * C`` texts).

    Raises:
        UserError: If there are no categories, or a category's phrase is empty once canonicalised.
    """
    phrases = category_phrases(names, prompt)
    if not phrases:
        raise UserError("no categories to build queries from", field="categories")
    for index, phrase in enumerate(phrases):
        if not canonicalize(phrase):
            raise UserError(f"category {index} ({phrase!r}) has no letter or digit left for a text query",
                            field=f"categories[{index}]")
    return [canonicalize(template.format(phrase)) for template in check_templates(templates) for phrase in phrases]


def tokenize_queries(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                     max_len: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (Q, max_len) of the queries, padded to ``max_len`` as the processor pads.

    A query longer than ``max_len`` tokens (start and end included) is cut to ``max_len``, keeping the end token the
    text model pools at, as the authors' evaluation truncates; a warning names the queries cut.
    """
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    cut = [text for text, length in zip(texts, lengths) if length > max_len]
    if cut:
        logger.warning("%d text queries exceed the model's %d tokens and are truncated: %s", len(cut), max_len,
                       ", ".join(repr(t) for t in cut[:5]) + (" ..." if len(cut) > 5 else ""))
    encoded = tokenizer(list(texts), padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
