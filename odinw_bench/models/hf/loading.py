"""Load a Grounding DINO family model and its processor from a hub id or a ``save_pretrained`` folder.

The config is read first, so a folder of another model (a saved BERT, an OWLv2) fails with one clear
:class:`~odinw_bench.errors.UserError` naming the folder and its ``model_type`` before any weights are read.
Hub ids go through the Hugging Face cache and honour offline mode (``HF_HUB_OFFLINE``). transformers is imported
inside the functions only.

Example:
    >>> model, processor = load_model_and_processor("IDEA-Research/grounding-dino-tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Files that mark a saved tokenizer; a folder with none of them gets the shipped bert-base-uncased vocabulary.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
# The token ids Grounding DINO hard-codes as phrase delimiters ([CLS], [SEP], ".", "?" of bert-base-uncased).
_DELIMITERS = ("[CLS]", "[SEP]", ".", "?")


def model_classes() -> dict[str, str]:
    """Config ``model_type`` -> the transformers detection class that runs it (LLMDet runs on the MM class)."""
    return {"grounding-dino": "GroundingDinoForObjectDetection",
            "mm-grounding-dino": "MMGroundingDinoForObjectDetection"}


def resolve_offline(local_files_only: bool | None) -> bool:
    """``local_files_only`` as given, or (None) whether offline mode is on (``HF_HUB_OFFLINE``), read now."""
    if local_files_only is not None:
        return bool(local_files_only)
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or constants.is_offline_mode()


def read_config(source: str | Path, local_files_only: bool) -> dict[str, Any]:
    """The ``config.json`` of ``source`` (a folder, or a hub id through the cache) as a dict.

    Raises:
        UserError: If the folder has no config (not a saved model), or the hub id cannot be resolved (offline and
            not cached, unknown, or unreachable), or the file is not JSON.
    """
    from transformers.utils import cached_file

    text = str(Path(source).expanduser()) if str(source).startswith("~") else str(source)
    if text.startswith(("/", ".")) and not Path(text).is_dir():  # a path, not a hub id
        raise UserError("no such folder (give a save_pretrained folder or a hub id)", path=source, field="config.json")
    try:
        path = cached_file(text, "config.json", local_files_only=local_files_only)
    except (OSError, ValueError) as err:  # ValueError: not a valid repo id
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "; offline: only the Hugging Face cache was read" if local_files_only else ""
        raise UserError(f"cannot read the model's config.json ({first}){where}", path=source,
                        field="config.json") from None
    if path is None:  # a folder without config.json
        raise UserError("has no config.json: not a model saved with save_pretrained", path=source,
                        field="config.json")
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"config.json is not readable JSON ({err})", path=source, field="config.json") from None


def model_class_name(config: dict[str, Any], source: str | Path) -> str:
    """The transformers class for a config dict.

    Raises:
        UserError: If ``model_type`` is not a Grounding DINO family type.
    """
    model_type = config.get("model_type")
    classes = model_classes()
    if model_type not in classes:
        raise UserError(f"model_type '{model_type}' is not a Grounding DINO model (expected one of: "
                        f"{', '.join(classes)})", path=source, field="model_type")
    return classes[model_type]


def load_model(source: str | Path, class_name: str, local_files_only: bool) -> PreTrainedModel:
    """The detection model's weights, in eval mode."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load would interleave with a sweep's lines
    model_cls = getattr(transformers, class_name)
    try:
        model = model_cls.from_pretrained(str(source), local_files_only=local_files_only)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load the {class_name} weights ({first})", path=source, field="weights") from None
    return model.eval()


def _image_processor(source: str | Path, local_files_only: bool) -> Any:
    """The source's image processor, or transformers' default one (800/1333) where the source has none."""
    from transformers import GroundingDinoImageProcessor

    try:
        return GroundingDinoImageProcessor.from_pretrained(str(source), local_files_only=local_files_only)
    except OSError:
        logger.info("%s has no image processor config: using GroundingDinoImageProcessor's defaults", source)
        return GroundingDinoImageProcessor()


def _tokenizer(source: str | Path, local_files_only: bool) -> PreTrainedTokenizerBase:
    """The source's tokenizer, or the shipped bert-base-uncased one (what Grounding DINO uses) where it has none."""
    from transformers import AutoTokenizer

    from odinw_bench.data.tokenizer import get_tokenizer

    folder = Path(source)
    if folder.is_dir():
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            return get_tokenizer()
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=local_files_only)
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=local_files_only)
    except (OSError, ValueError):
        logger.warning("%s: no tokenizer found; using the shipped bert-base-uncased vocabulary", source)
        return get_tokenizer()


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, text_vocab_size: int, source: str | Path) -> None:
    """Fail clearly where the tokenizer cannot drive this model.

    Raises:
        UserError: If it is not a fast tokenizer (token spans need ``char_to_token``), its delimiter ids differ from
            the ones the model hard-codes (bert-base-uncased), or it has more tokens than the text model's vocabulary.
    """
    from transformers.models.grounding_dino import modeling_grounding_dino

    delimiter_ids = list(modeling_grounding_dino.SPECIAL_TOKENS)
    if not tokenizer.is_fast:
        raise UserError("the tokenizer is not a fast tokenizer (char_to_token is needed)", path=source,
                        field="tokenizer")
    ids = tokenizer.convert_tokens_to_ids(list(_DELIMITERS))
    if list(ids) != delimiter_ids:
        raise UserError(f"the tokenizer maps {list(_DELIMITERS)} to {ids}, but the model's phrase delimiters are "
                        f"{delimiter_ids} (bert-base-uncased)", path=source, field="tokenizer")
    if len(tokenizer) > text_vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the text model only {text_vocab_size}",
                        path=source, field="tokenizer")


def load_model_and_processor(source: str | Path, local_files_only: bool | None = None
                             ) -> tuple[PreTrainedModel, Any]:
    """Model (eval mode) and processor of a hub id or ``save_pretrained`` folder.

    Args:
        source: A hub id (``IDEA-Research/grounding-dino-tiny``) or a local folder.
        local_files_only: Never reach the network; None follows offline mode (``HF_HUB_OFFLINE``).

    Raises:
        UserError: For a source without a config, of another ``model_type``, without weights, or with a tokenizer
            the model cannot use.
    """
    from transformers import GroundingDinoProcessor

    source = Path(source).expanduser() if str(source).startswith("~") else source
    offline = resolve_offline(local_files_only)
    class_name = model_class_name(read_config(source, offline), source)
    model = load_model(source, class_name, offline)
    tokenizer = _tokenizer(source, offline)
    check_tokenizer(tokenizer, model.config.text_config.vocab_size, source)
    processor = GroundingDinoProcessor(image_processor=_image_processor(source, offline), tokenizer=tokenizer)
    return model, processor
