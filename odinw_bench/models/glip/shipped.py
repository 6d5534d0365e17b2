"""Weights that ship inside the package (``glip-nano``, pre-trained here): found, checked, never downloaded.

A shipped model is a folder ``<models dir>/<preset>/`` holding ``<preset>.safetensors`` and ``model_card.json``
(what ``python -m odinw_bench pretrain`` writes). The card's ``weights.sha256`` must match the file: a file that
does not is refused (one line, exit 2) rather than loaded. The models dir is ``odinw_bench/resources/models``,
or ``$ODINW_BENCH_MODELS`` (tests, or a user's own pre-training). When a preset's folder is absent, the preset
starts from random weights, as ``glip-micro`` does.

Example:
    >>> path = shipped_checkpoint("glip-nano")     # None: not shipped (random init)      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from odinw_bench import paths
from odinw_bench.errors import UserError

#: Presets whose weights come from this package (or $ODINW_BENCH_MODELS), never from a model zoo.
SHIPPED_PRESETS = ("glip-nano",)
MODELS_ENV = "ODINW_BENCH_MODELS"
CARD_NAME = "model_card.json"


def models_dir() -> Path:
    """``$ODINW_BENCH_MODELS`` if set, else ``odinw_bench/resources/models`` (read at each call)."""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else paths.RESOURCES_DIR / "models"


def weights_file_name(preset: str) -> str:
    """``<preset>.safetensors``: the name ``pretrain`` writes and a shipped folder holds."""
    return f"{preset}.safetensors"


def read_card(path: str | Path) -> dict[str, Any]:
    """A model card (``model_card.json``) as a dict, checked for the fields loading needs.

    Raises:
        UserError: Naming the card and the field, if it is unreadable or lacks ``weights.sha256``.
    """
    from odinw_bench.jsonio import read_json_file

    card = read_json_file(path, what="model card")
    weights = card.get("weights") if isinstance(card, dict) else None
    if not isinstance(weights, dict):
        raise UserError("expected an object with the weights file's name and sha256", path=path, field="weights")
    sha = weights.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise UserError("expected the 64-hex-digit sha256 of the weights file", path=path, field="weights.sha256")
    return card


def verify_weights(weights: str | Path, card_path: str | Path) -> dict[str, Any]:
    """Check that ``weights`` hashes to the sha256 its card records; return the card.

    Raises:
        UserError: The weights file does not match its card (a corrupt or substituted file), naming both.
    """
    card = read_card(card_path)
    stat = Path(weights).stat()
    actual = _sha256_of(str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns)
    expected = card["weights"]["sha256"]
    if actual != expected:
        raise UserError(f"sha256 {actual[:12]}... does not match {card_path} ({expected[:12]}...): the weights file "
                        "is corrupt or not the one its card describes; restore it (git checkout) or re-run pretrain",
                        path=weights)
    return card


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key, so a rewritten file is hashed again.
    from odinw_bench.models.glip.checkpoint import sha256_file

    return sha256_file(path)


def shipped_checkpoint(preset: str) -> Path | None:
    """The verified weights file of a shipped preset, or None when its folder is absent (random init).

    Raises:
        UserError: The folder exists but lacks the weights or the card, or they do not match.
    """
    if preset not in SHIPPED_PRESETS:
        return None
    folder = models_dir() / preset
    if not folder.is_dir():
        return None
    weights, card = folder / weights_file_name(preset), folder / CARD_NAME
    for needed in (weights, card):
        if not needed.is_file():
            raise UserError(f"the shipped model folder has no {needed.name}", path=folder)
    verify_weights(weights, card)
    return weights

