"""Released GLIP checkpoints: which file each preset loads, and fetching it once into a local cache.

Files come from the Hugging Face repo ``GLIPModel/GLIP`` (the GLIP README's model-zoo links point there) through
``huggingface_hub.hf_hub_download``, which shows progress bars, resumes, and honours ``HF_ENDPOINT`` (mirrors, or a
local server in tests). Each ``.pth`` (model + EMA + optimizer, up to 6.9 GB) is converted once to a slim
``<name>.safetensors`` beside it; later calls return that file without touching the network.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from odinw_bench import paths
from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

HUB_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint.

    Attributes:
        preset: The :func:`~odinw_bench.models.glip.config.get_preset` name whose architecture it fits.
        repo_id: Hugging Face repo holding the file.
        filename: File name in that repo.
        official_config: The official GLIP config it was trained with.
        pretrain_data: Pre-training data, as the GLIP README lists it.
    """

    preset: str
    repo_id: str
    filename: str
    official_config: str
    pretrain_data: str

    @property
    def url(self) -> str:
        """Direct download URL on the public hub (for manual downloads)."""
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"


def zoo_entries() -> dict[str, ZooEntry]:
    """Preset name -> released checkpoint (built on call; plain data, no registration)."""
    rows = [
        ("glip-t-a", "glip_a_tiny_o365.pth", "configs/pretrain/glip_A_Swin_T_O365.yaml", "O365"),
        ("glip-t-b", "glip_tiny_model_o365.pth", "configs/pretrain/glip_Swin_T_O365.yaml", "O365"),
        ("glip-t-c", "glip_tiny_model_o365_goldg.pth", "configs/pretrain/glip_Swin_T_O365_GoldG.yaml", "O365, GoldG"),
        ("glip-t", "glip_tiny_model_o365_goldg_cc_sbu.pth", "configs/pretrain/glip_Swin_T_O365_GoldG.yaml",
         "O365, GoldG, CC3M, SBU"),
        ("glip-l", "glip_large_model.pth", "configs/pretrain/glip_Swin_L.yaml", "FourODs, GoldG, CC3M+12M, SBU"),
    ]
    return {preset: ZooEntry(preset, HUB_REPO, name, cfg, data) for preset, name, cfg, data in rows}


def zoo_entry(preset: str) -> ZooEntry:
    """The released checkpoint of ``preset``.

    Raises:
        UserError: For presets without a released checkpoint (``glip-micro``) or unknown names.
    """
    entries = zoo_entries()
    key = preset.strip().lower().replace("_", "-")
    if key in entries:
        return entries[key]
    if key == "glip-micro":
        raise UserError("'glip-micro' is a tiny test/demo model with no released checkpoint; it starts from random "
                        "weights", field="model")
    close = difflib.get_close_matches(key, entries, n=1, cutoff=0.4)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"no released checkpoint for '{preset}'; {hint}known: {', '.join(entries)}", field="model")


def checkpoint_dir(cache_dir: str | Path | None = None, repo_id: str = HUB_REPO) -> Path:
    """Folder holding the files of ``repo_id`` inside the cache."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else paths.cache_dir()
    return root / "checkpoints" / repo_id.replace("/", "--")


def converted_checkpoint_path(preset: str, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`fetch_checkpoint` keeps the converted ``.safetensors`` of ``preset`` (it may not exist yet)."""
    entry = zoo_entry(preset)
    return checkpoint_dir(cache_dir, entry.repo_id) / (Path(entry.filename).stem + ".safetensors")


def fetch_checkpoint(
    preset: str,
    cache_dir: str | Path | None = None,
    *,
    delete_pth: bool = False,
    trust: bool = False,
    revision: str = "main",
    endpoint: str | None = None,
) -> Path:
    """Return the local ``.safetensors`` weights of a preset's released checkpoint, downloading once if needed.

    Args:
        preset: ``glip-t-a``, ``glip-t-b``, ``glip-t-c``, ``glip-t`` or ``glip-l``.
        cache_dir: Cache root (default :func:`odinw_bench.paths.cache_dir`); files go to ``checkpoints/GLIPModel--GLIP/``.
        delete_pth: Delete the downloaded ``.pth`` after conversion (it is 2.4 to 6.9 GB).
        trust: Allow full unpickling of the ``.pth`` (see :func:`~odinw_bench.models.glip.checkpoint.read_checkpoint`).
        revision: Hub revision.
        endpoint: Hub endpoint; default ``$HF_ENDPOINT`` (read at call time) or huggingface.co.

    Returns:
        Path of ``<checkpoint name>.safetensors``.

    Raises:
        UserError: If the hub cannot be reached or refuses the file, saying how to use a local file instead.
    """
    from odinw_bench.models.glip.checkpoint import convert_to_safetensors

    entry = zoo_entry(preset)
    folder = checkpoint_dir(cache_dir, entry.repo_id)
    converted = converted_checkpoint_path(preset, cache_dir)
    if converted.is_file():
        logger.info("Using cached %s", converted)
        return converted
    pth = folder / entry.filename
    if not pth.is_file():
        pth = _download(entry, folder, revision, endpoint or os.environ.get("HF_ENDPOINT"))
    logger.info("Converting %s to %s", pth.name, converted.name)
    convert_to_safetensors(pth, converted, trust=trust)
    if delete_pth:
        pth.unlink()
        logger.info("Deleted %s after conversion", pth)
    return converted


def _download(entry: ZooEntry, folder: Path, revision: str, endpoint: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    where = endpoint or "https://huggingface.co"
    logger.info("Downloading %s from %s/%s", entry.filename, where, entry.repo_id)
    try:
        path = hf_hub_download(entry.repo_id, entry.filename, revision=revision, local_dir=folder, endpoint=endpoint)
    except _network_errors() as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"could not download {entry.filename} from {where}/{entry.repo_id} ({reason}). Download it by other "
            f"means ({entry.url}) and pass its path with --checkpoint PATH, or set HF_ENDPOINT to a reachable mirror",
            field="checkpoint",
        ) from None
    return Path(path)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the hub could not deliver the file". Hub errors (HTTP status, offline mode, missing
    metadata) are OSErrors; transport errors come from whichever HTTP client this huggingface_hub uses."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
