"""Where a run happened: the git state of the odinw_bench checkout, library versions, GPU and the current time.

Every run record carries these (:func:`odinw_bench.results.records.make_record` fills them in), so that a number can be
traced back to the code and environment that produced it. Nothing here imports a heavy package: versions come
from package metadata, and CUDA/GPU details only from a torch the run has already imported.

Example::

    from odinw_bench.results import provenance

    provenance.collect_git()  # {"commit": "3f2c...", "dirty": False}, or None outside a checkout
    provenance.collect_env()  # {"python": "3.11.7", "torch": "2.14.1", ..., "cuda": None, "gpu_name": None}
    provenance.utc_now()      # "2025-01-31T12:00:00+00:00"
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from odinw_bench import paths

logger = logging.getLogger(__name__)

# Distribution names whose versions go into every record; read from package metadata, never by importing.
_ENV_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "lightning": "pytorch-lightning",
    "pycocotools": "pycocotools",
    "odinw_bench": "odinw_bench",
}


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with seconds (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def collect_git(cwd: str | Path | None = None) -> dict[str, str | bool] | None:
    """Commit and dirty flag of the odinw_bench checkout (``cwd`` defaults to the package's folder).

    Returns:
        ``{"commit": str, "dirty": bool}`` (the record's ``git`` field), or None outside a git repository or where git is not installed.
    """
    cwd = Path(cwd) if cwd is not None else paths.PACKAGE_DIR
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def collect_env() -> dict[str, str | None]:
    """Python and library versions, CUDA version and GPU name, without importing heavy packages.

    CUDA and GPU are read from torch only if the run already imported it (a run that used the GPU has).
    """
    from importlib import metadata

    env: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _ENV_PACKAGES.items():
        try:
            env[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[key] = None
    env["cuda"], env["gpu_name"] = None, None
    torch = sys.modules.get("torch")
    if torch is not None:
        env["cuda"] = getattr(torch.version, "cuda", None)
        try:
            if torch.cuda.is_available():
                env["gpu_name"] = torch.cuda.get_device_name(0)
        except Exception:  # a broken driver must not fail the run record
            logger.debug("could not query the GPU name", exc_info=True)
    return env
