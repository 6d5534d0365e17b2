"""Push report tables and plots to a W&B run of job type ``report``.

Same conventions as :mod:`odinw_bench.training.wandb_logging`: W&B never prompts, never prints banners and never fails
the report — any W&B error becomes a warning and the report goes on. ``offline`` writes a local run folder
(``<save_dir>/wandb/offline-run-*``) that ``wandb sync`` uploads later; ``online`` needs an account.

Example::

    run_dir = push_report("offline", save_dir="results", tables={"leaderboard": frame},
                          images={"efficiency": Path("results/leaderboard_efficiency.png")})
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from odinw_bench.training.wandb_logging import wandb_enabled

logger = logging.getLogger(__name__)


def _warn(what: str, err: BaseException) -> None:
    message = f"W&B {what} failed ({type(err).__name__}: {err}); the report goes on without it"
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def push_report(mode: str, *, save_dir: str | Path, tables: Mapping[str, Any], images: Mapping[str, Path],
                config: Mapping[str, Any] | None = None, name: str | None = None,
                project: str = "odinw_bench", entity: str | None = None) -> Path | None:
    """Log ``tables`` (DataFrames -> ``wandb.Table``) and ``images`` (PNG paths -> ``wandb.Image``) to a new run.

    Args:
        mode: ``off`` (nothing happens), ``offline`` or ``online``.
        save_dir: Folder that receives the ``wandb/`` run directory.
        tables: Key -> pandas DataFrame.
        images: Key -> image file.
        config: Logged as the run config (metric, suite, sources).
        name, project, entity: W&B run name, project and entity.

    Returns:
        The local run directory, or None when ``mode`` is ``off`` or W&B failed (a warning says why).

    Raises:
        ValueError: For an unknown ``mode`` (a programming error; the CLI restricts the choices).
    """
    if not wandb_enabled(mode):
        return None
    try:
        import wandb

        Path(save_dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, entity=entity, job_type="report", name=name, mode=mode,
                         dir=str(save_dir), config=dict(config or {}), reinit="create_new")  # fmt: skip
        try:
            payload: dict[str, Any] = {f"report/{k}": wandb.Table(dataframe=_plain(v)) for k, v in tables.items()}
            payload.update({f"report/{k}": wandb.Image(str(p)) for k, p in images.items()})
            run.log(payload)
            run_dir = Path(run.dir).parent  # run.dir is <run folder>/files
        finally:
            run.finish()
        return run_dir
    except Exception as err:  # noqa: BLE001 - W&B must never fail a report
        _warn("report logging", err)
        return None


def _plain(frame: Any) -> Any:
    """W&B tables take plain column types: stringify object columns (tuples, mixed None/str)."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: "" if v is None else str(v))
    return frame
