"""Watching a run without a progress bar: one line per epoch, the per-epoch history, peak GPU memory.

Sweep workers, SLURM jobs and ``run --no-progress`` draw no progress bar, so :class:`EpochLog` prints one line per
epoch (epoch, mean training loss, learning rate, val AP, elapsed time) and keeps the same values as the run's
``history``, which the runner stores in the record. With a progress bar the line goes to the log (INFO) instead,
since the bar shows the same numbers. :func:`hide_lightning_tips` drops the advertising line Lightning prints when
a Trainer is built; :func:`reset_peak_gpu_memory` and :func:`peak_gpu_memory_bytes` give the peak CUDA memory of one
run (None when CUDA was not used).

Example::

    epoch_log = EpochLog()
    trainer = pl.Trainer(callbacks=[epoch_log, ...], enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    epoch_log.history   # [{"epoch": 0, "loss": 1.93, "lr": 1e-4, "val_AP": 0.12, "elapsed_s": 41.0}, ...]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl

from odinw_bench.training.callbacks import MONITOR, monitored_ap

logger = logging.getLogger(__name__)

# The advertising lines of Lightning 2.6 (``logger_connector.py``: printed by every Trainer built without a
# LitLogger; ``callback_connector.py``: when Lightning adds its own checkpoint callback). Only these are hidden.
_LIGHTNING_TIPS = ("💡 Tip: For seamless cloud logging", "💡 Tip: For seamless cloud uploads")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_LIGHTNING_TIPS)


def hide_lightning_tips() -> None:
    """Drop Lightning's advertising lines ("💡 Tip: For seamless cloud logging ...") from its log; idempotent.

    Lightning logs them with ``rank_zero_info`` through the logger its ``rank_zero`` module holds; a filter on that
    logger drops exactly those records and leaves every other Lightning message alone.
    """
    from lightning_utilities.core import rank_zero

    for log in {rank_zero.log, logging.getLogger("pytorch_lightning.utilities.rank_zero")}:
        if _not_a_tip not in log.filters:
            log.addFilter(_not_a_tip)


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def reset_peak_gpu_memory() -> None:
    """Start a new peak: a sweep worker runs several runs in one process, and each record wants its own."""
    import torch

    if _cuda_in_use():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_memory_bytes() -> int | None:
    """Peak CUDA memory allocated by tensors on the current device since the last reset; None without CUDA."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if _cuda_in_use() else None


def format_epoch(entry: Mapping[str, Any], max_epochs: int | None = None) -> str:
    """One history entry as a log line: ``epoch 3/199  loss 0.8123  lr 1.0e-04  val AP 0.2310  elapsed 61 s``."""

    def number(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    last = f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else ""
    line = (f"epoch {entry['epoch']}{last}  loss {number(entry['loss'], '.4f')}  lr {number(entry['lr'], '.2e')}  "
            f"val AP {number(entry['val_AP'], '.4f')}  elapsed {entry['elapsed_s']:.0f} s")
    if entry.get("peak_gpu_memory_bytes") is not None:
        line += f"  GPU peak {entry['peak_gpu_memory_bytes'] / 2**30:.1f} GiB"
    return line


class EpochLog(pl.Callback):
    """Records and announces every training epoch: mean loss, learning rate, val AP, elapsed seconds.

    The history is part of the callback's checkpoint state, so a resumed run keeps the epochs it ran before the
    interruption and counts elapsed time on from them.

    Args:
        echo: Where a line goes when no progress bar is shown (default: ``print`` to stdout, flushed, so that it
            appears in a sweep worker's or SLURM job's log as it happens).

    Attributes:
        history: One dict per finished epoch: ``epoch`` (0-based, as ``best_epoch``), ``loss`` (mean of the epoch's
            finite training losses on rank 0; None if every step was skipped), ``lr`` (of the first optimizer
            group; the plateau schedule scales all groups together), ``val_AP`` (None for an epoch without
            validation), ``elapsed_s`` (since training started, across resumptions).
    """

    def __init__(self, echo: Callable[[str], Any] | None = None):
        super().__init__()
        self.history: list[dict[str, Any]] = []
        self._echo = echo or (lambda line: print(line, flush=True))
        self._started = time.monotonic()
        self._elapsed_before = 0.0
        self._loss_sum: Any = 0.0
        self._loss_steps = 0
        self._val_ap: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._loss_steps, self._val_ap = 0.0, 0, None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:  # a skipped (non-finite) step returns nothing
            return
        # Summed on the device: one synchronisation per epoch, not one per step.
        self._loss_sum = self._loss_sum + (loss.detach() if hasattr(loss, "detach") else float(loss))
        self._loss_steps += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val_ap = monitored_ap(trainer.callback_metrics.get(MONITOR))
        # The epoch's entry is written here too, so that any checkpoint written after this validation (at the
        # epoch's end, TimedLastCheckpoint) holds it, and a run resumed from it keeps this epoch in its history.
        self._upsert(self._entry(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so its val AP is known here.
        entry = self._upsert(self._entry(trainer))
        if not trainer.is_global_zero:
            return
        line = format_epoch({**entry, "peak_gpu_memory_bytes": peak_gpu_memory_bytes()}, trainer.max_epochs)
        if trainer.progress_bar_callback is None:
            self._echo(line)
        else:
            logger.info(line)

    def _entry(self, trainer: pl.Trainer) -> dict[str, Any]:
        loss = float(self._loss_sum) / self._loss_steps if self._loss_steps else None
        return {"epoch": int(trainer.current_epoch), "loss": loss if loss is None or math.isfinite(loss) else None,
                "lr": _first_lr(trainer), "val_AP": self._val_ap,
                "elapsed_s": round(self._elapsed_before + time.monotonic() - self._started, 3)}

    def _upsert(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Add the entry, or replace the one of the same epoch (written at an earlier validation of it)."""
        if self.history and self.history[-1]["epoch"] == entry["epoch"]:
            self.history[-1] = entry
        else:
            self.history.append(entry)
        return entry

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
        self._elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0


def _first_lr(trainer: pl.Trainer) -> float | None:
    optimizers = trainer.optimizers
    if not optimizers or not optimizers[0].param_groups:
        return None
    return float(optimizers[0].param_groups[0]["lr"])
