"""One guarded ``trainer.fit`` for fine-tuning and pre-training.

Both fits resume from a ``last.ckpt`` loaded with ``weights_only=True`` (explicit, so that
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot make a resume run pickled code), silence the Lightning warnings that
are expected here, and turn a GPU out-of-memory error and an unsafe checkpoint into one clear line. Example::

    from odinw_bench.training.fitting import guarded_fit

    guarded_fit(trainer, module, dm, ckpt_path=last, oom_hint="lower data.batch_size")
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError

#: Lightning warnings that are expected in every fit here: GLIP keeps frozen modules in eval mode on purpose, the
#: modules move their batches themselves, and a Lightning-internal deprecation. Anything else still shows.
EXPECTED_LIGHTNING_WARNINGS = (r".*module\(s\) in eval mode at the start of training.*",
                               r".*overridden `transfer_batch_to_device`.*",
                               r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def guarded_fit(trainer: Any, module: Any, datamodule: Any, *, ckpt_path: Path | None, oom_hint: str,
                expected_warnings: Sequence[str] = ()) -> None:
    """``trainer.fit(module, datamodule, ckpt_path)`` with the guards in the module docstring.

    Args:
        trainer, module, datamodule: What ``pl.Trainer.fit`` takes.
        ckpt_path: The checkpoint to resume from, or None.
        oom_hint: What to change after a GPU out-of-memory error (it names the config key).
        expected_warnings: Further warning message patterns to silence.

    Raises:
        UserError: On a GPU out-of-memory error (field ``data.batch_size``), or a resume checkpoint that would
            need more than tensors and plain values to load (naming the file).
    """
    import torch

    try:
        with warnings.catch_warnings():
            for message in (*EXPECTED_LIGHTNING_WARNINGS, *expected_warnings):
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except torch.cuda.OutOfMemoryError as err:
        raise UserError(f"out of GPU memory: {oom_hint}", field="data.batch_size") from err
    except pickle.UnpicklingError as err:  # only the resume unpickles during fit
        if ckpt_path is None:
            raise
        needed = re.search(r"GLOBAL (\S+)", str(err))
        why = f"it holds {needed.group(1)}, and loading that would run code" if needed else "it is not readable"
        raise UserError(f"cannot resume from this checkpoint: {why}; delete it to start over",
                        path=ckpt_path) from None
