"""Find the operations that make a GPU wait for the host, on any device (a CPU is enough to find them).

A CUDA training step runs ahead of Python as long as nothing asks for a value: ``.item()``, ``int(t)``, ``if t:``,
``nonzero`` and boolean-mask indexing (their output size depends on the data) stall the host until the GPU has
finished everything queued. :class:`HostSyncCounter` is a dispatch mode that records each such operator call with
the line of this package that made it, whatever the device, so tests on CPU keep the training step free of them.
``torch.cuda.set_sync_debug_mode`` says the same on a GPU, where one is present.

Example::

    with HostSyncCounter() as syncs:
        loss = sum(backend.compute_losses(batch).values())
        loss.backward()
    syncs.calls          # [] when the step never waits; else [("nonzero", "odinw_bench/models/glip/loss.py:157")]
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operators whose result the host must see before it can go on (a value, or an output size from the data).
SYNC_OPERATORS = frozenset({
    "_local_scalar_dense",  # .item(), int(t), float(t), bool(t), if t:
    "is_nonzero", "equal", "allclose",
    "nonzero", "masked_select", "argwhere",  # also what x[bool_mask] and torch.where(mask) run
    "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "bincount", "histc",
    "repeat_interleave",  # without output_size
})

_PACKAGE = Path(__file__).resolve().parents[1]
# Indexing operators that take a list of index tensors, which may hold a boolean mask.
_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_"})


def _has_mask_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class HostSyncCounter(TorchDispatchMode):
    """Record every call of a :data:`SYNC_OPERATORS` operator made while the mode is on (forward and backward).

    Attributes:
        calls: ``(operator, where)`` pairs in call order; ``where`` is the innermost line of this package on the
            Python stack (``"?"`` when none: Lightning, torch itself).
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in _INDEXING and _has_mask_index(args):
            name = "nonzero"  # x[mask] and x[mask] = v find the mask's True entries first
        if name in SYNC_OPERATORS and not (name == "repeat_interleave" and (kwargs or {}).get("output_size")):
            stack = traceback.extract_stack()
            # Optimizers keep their step counts on the host (unless capturable): reading them waits for nothing.
            if not any(f"torch{os.sep}optim{os.sep}" in frame.filename for frame in stack):
                self.calls.append((name, _caller(stack)))
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict[str, int]:
        """Calls counted by ``"operator at where"``."""
        counts: dict[str, int] = {}
        for name, where in self.calls:
            key = f"{name} at {where}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def _caller(stack: traceback.StackSummary) -> str:
    """The innermost frame of this package (``odinw_bench/...py:line``), else the innermost one outside this
    module and torch's dispatch machinery (``transformers/masking_utils.py:369``)."""
    stack = [f for f in reversed(stack) if Path(f.filename).name != "host_syncs.py"]
    for frame in stack:
        path = Path(frame.filename)
        if path.is_relative_to(_PACKAGE):
            return f"{path.relative_to(_PACKAGE.parent)}:{frame.lineno}"
    for frame in stack:
        if "_python_dispatch" not in frame.filename and "overrides" not in frame.filename:
            parts = Path(frame.filename).parts
            return f"{'/'.join(parts[-3:])}:{frame.lineno}"
    return "?"
