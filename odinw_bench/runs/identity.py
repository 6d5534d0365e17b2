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


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint, hashed once per file version (path, size, mtime) in this process."""
    stat = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so a rewritten file is hashed again.
    from odinw_bench.models.glip.checkpoint import sha256_file

    return sha256_file(path)


def identity_seed(req: RunRequest) -> int:
    """The seed a request's run id depends on: its own for a run that trains, :data:`SEEDLESS` for zero-shot."""
    return req.seed if req.regime.fit else SEEDLESS


def run_identity(req: RunRequest, *, fetch: bool = True) -> RunIdentity:
    """The run id and record identity of a request, computed without building the model or reading data.

    ``run`` and ``sweep`` both call this, so a sweep knows which runs exist before it starts any. A zero-shot
    request has the same id for every seed (:func:`identity_seed`).
    """
    from odinw_bench.results.records import make_run_id

    config = model_config(req)  # first: an unknown preset is named as such, not as a missing checkpoint
    ckpt = resolve_checkpoint(req, fetch=fetch)
    model_info = {"name": req.model_name, "checkpoint": str(ckpt) if ckpt else None,
                  "checkpoint_sha256": checkpoint_sha256(ckpt) if ckpt else None}
    resolved = req.config.resolved_for(req.regime, req.shots)
    identity = {"resolved": resolved, "prompt": req.prompt_variant or "default", "split": req.split,
                "model_config": config.to_dict()}
    run_id = make_run_id(req.task.name, req.task.version, model_info["name"], model_info["checkpoint_sha256"],
                         req.regime.name, req.shots, identity_seed(req), identity)
    return RunIdentity(run_id, model_info, resolved, identity)
