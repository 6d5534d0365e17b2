"""What makes a run the run it is, computed before anything heavy is loaded.

``run`` and ``sweep`` both call :func:`run_identity`: the run id hashes the task (and its version), the model
name, the checkpoint's sha256, the regime, the shots, the seed and the resolved configuration (recipe, prompt
variant, split, model config). A run that does not train (zero-shot) uses neither sampled data nor random
training, so its seed changes nothing: its id leaves the seed out (:data:`SEEDLESS`), and every seed names the
same run, computed once per (task, model, checkpoint, split, prompt). Reading a preset or an official YAML needs
no weights; a checkpoint is hashed once per file version in a process. A sweep therefore knows which cells
already have records before it starts any.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.models.catalog import ModelRef
    from odinw_bench.runs.request import RunRequest


#: The seed an evaluation-only run is identified with, whatever seed it was asked for (not a seed anyone runs).
SEEDLESS = -1


class CheckpointNotDownloaded(UserError):
    """A zoo checkpoint is needed but not in the local cache, and downloading was not allowed."""


@dataclass(frozen=True)
class RunIdentity:
    """What makes a run the run it is, known before anything is loaded.

    Attributes:
        run_id: :func:`~odinw_bench.results.records.make_run_id` of the fields below and of the task.
        model: The record's model entry: ``name``, ``checkpoint`` (path or None), ``checkpoint_sha256``.
        resolved: The recipe resolved for the regime and shot count.
        identity: The config part of the id: resolved recipe, prompt variant, split and the model config.
    """

    run_id: str
    model: dict
    resolved: dict
    identity: dict


def model_ref(req: RunRequest) -> ModelRef | None:
    """What ``req.model`` names (None for an official GLIP YAML given with ``--config``)."""
    from odinw_bench.models.catalog import resolve_model

    return None if req.official_config is not None else resolve_model(req.model)


def model_config(req: RunRequest) -> Any:
    """The GLIP config of a preset or an official YAML; reading it needs no weights."""
    from odinw_bench.models.glip.config import get_preset
    from odinw_bench.models.glip.official_config import from_official_yaml

    if req.official_config is not None:
        return from_official_yaml(req.official_config)
    return get_preset(req.model)


def resolve_checkpoint(req: RunRequest, *, fetch: bool = True) -> Path | None:
    """The weights file a request loads: ``--checkpoint``, else a shipped preset's (``glip-nano``) or a zoo
    preset's cached file (None: random init).

    Args:
        req: The request.
        fetch: Download a zoo checkpoint that is not cached yet; without it such a request raises.

    Raises:
        UserError: The checkpoint file does not exist.
        CheckpointNotDownloaded: ``fetch`` is False and the zoo file is not cached yet.
    """
    ref = model_ref(req)
    if ref is not None and ref.is_hf:
        return _hf_weights(req, ref, fetch=fetch)
    if req.checkpoint is not None:
        if not Path(req.checkpoint).is_file():
            raise UserError("checkpoint file not found", path=req.checkpoint, field="--checkpoint")
        return Path(req.checkpoint)
    if req.official_config is not None or req.model == "glip-micro":
        return None
    from odinw_bench.models.glip.shipped import SHIPPED_PRESETS, shipped_checkpoint

    preset = model_config(req).name  # the canonical name ("GLIP_Nano" -> "glip-nano")
    if preset in SHIPPED_PRESETS:  # in the package, sha256-checked against its card; None: random init
        return shipped_checkpoint(preset)
    from odinw_bench.models.glip.zoo import converted_checkpoint_path, fetch_checkpoint

    cached = converted_checkpoint_path(req.model)
    if cached.is_file():
        return cached
    if not fetch:
        raise CheckpointNotDownloaded(f"the checkpoint of '{req.model}' is not downloaded yet", path=cached,
                                      field="--model")
    return fetch_checkpoint(req.model, trust=req.trust_checkpoint)


def _hf_weights(req: RunRequest, ref: ModelRef, *, fetch: bool) -> Path:
    """The folder of a Hugging Face model's weights: ``--checkpoint`` (a ``save_pretrained`` folder), the
    ``hf:`` folder, or the hub snapshot in the Hugging Face cache (downloaded when ``fetch``, unless offline)."""
    if req.checkpoint is not None:
        if not (Path(req.checkpoint) / "config.json").is_file():
            raise UserError(f"model '{ref.name}' takes a folder written by save_pretrained (with config.json)",
                            path=req.checkpoint, field="--checkpoint")
        from odinw_bench.models.catalog import hf_backend_of

        if hf_backend_of(req.checkpoint) != ref.backend:
            raise UserError(f"holds another kind of model than '{ref.name}'", path=req.checkpoint,
                            field="--checkpoint")
        return Path(req.checkpoint)
    if Path(ref.source).is_dir():
        return Path(ref.source)
    from odinw_bench.models.hf.loading import resolve_offline

    offline = resolve_offline(None)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.source, local_files_only=offline or not fetch))
    except Exception as err:  # noqa: BLE001 - the hub's errors differ by version; one line says what is missing
        if not fetch and not offline:
            raise CheckpointNotDownloaded(f"the weights of '{ref.name}' are not downloaded yet", path=ref.source,
                                          field="--model") from None
        raise UserError(f"cannot get the weights of '{ref.name}' ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'})",
                        path=ref.source, field="--model") from None


#: Weight files of a ``save_pretrained`` folder (a folder's hash is over these).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt")


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file, or of a folder's weight files (their names and hashes), each file hashed once
    per version (path, size, mtime) in this process."""
    path = Path(path)
    if path.is_dir():
        import hashlib

        files = sorted({f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern) if f.is_file()})
        if not files:
            raise UserError("holds no weight file (*.safetensors, *.bin)", path=path, field="--checkpoint")
        h = hashlib.sha256()
        for file in files:
            h.update(f"{file.name}:{checkpoint_sha256(file)}\n".encode())
        return h.hexdigest()
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so a rewritten file is hashed again.
    from odinw_bench.models.glip.checkpoint import sha256_file

    return sha256_file(path)


def _hf_model_config(ref: ModelRef, weights: Path) -> dict:
    """A Hugging Face model's identity: its backend, its preset's settings (without their citations) and the
    config.json of its weights."""
    from odinw_bench.models.hf.loading import read_config

    preset = {k: v for k, v in ref.preset.items() if k != "source"}
    # Where the folder was saved from and the library version that wrote it do not make another model.
    config = {k: v for k, v in read_config(weights, True).items() if k not in ("_name_or_path", "transformers_version")}
    return {"backend": ref.backend, "preset": preset, "config": config}


def _searched(resolved: dict, req: RunRequest) -> dict:
    """The resolved config as a searched run's id sees it: the searched values are what the search finds, so the
    id names the search instead (the same id before and after it)."""
    if not req.search:
        return resolved
    from odinw_bench.runs.search_spec import SEARCHABLE

    optim = {**resolved["optim"], **{SEARCHABLE[name]: "searched" for name in req.search}}
    return {**resolved, "optim": optim}


def identity_seed(req: RunRequest) -> int:
    """The seed a request's run id depends on: its own for a run that trains, :data:`SEEDLESS` for zero-shot."""
    return req.seed if req.regime.fit else SEEDLESS


def run_identity(req: RunRequest, *, fetch: bool = True) -> RunIdentity:
    """The run id and record identity of a request, computed without building the model or reading data.

    ``run`` and ``sweep`` both call this, so a sweep knows which runs exist before it starts any. A zero-shot
    request has the same id for every seed (:func:`identity_seed`).
    """
    from odinw_bench.results.records import make_run_id

    ref = model_ref(req)  # first: an unknown model is named as such, not as a missing checkpoint
    config = model_config(req) if ref is None or not ref.is_hf else None
    ckpt = resolve_checkpoint(req, fetch=fetch)
    model_info = {"name": req.model_name, "checkpoint": str(ckpt) if ckpt else None,
                  "checkpoint_sha256": checkpoint_sha256(ckpt) if ckpt else None}
    resolved = req.config.resolved_for(req.regime, req.shots)
    identity = {"resolved": _searched(resolved, req), "prompt": req.prompt_variant or "default", "split": req.split,
                "model_config": config.to_dict() if config is not None else _hf_model_config(ref, ckpt)}
    if req.search:
        from odinw_bench.runs.search_spec import search_identity

        identity["search"] = search_identity(req)
    run_id = make_run_id(req.task.name, req.task.version, model_info["name"], model_info["checkpoint_sha256"],
                         req.regime.name, req.shots, identity_seed(req), identity)
    return RunIdentity(run_id, model_info, resolved, identity)
