"""What one process reuses across the runs it does: checkpoint state dicts, indexed task splits, frozen features.

A sweep worker (:mod:`odinw_bench.runs.launchers`) runs many cells; :func:`process_cache` gives each process one
:class:`RunCache`, which :func:`odinw_bench.runs.runner.run_request` reads through. Example::

    from odinw_bench.runs.cache import RunCache

    cache = RunCache()
    state = cache.state_dict("glip_tiny.pth")     # read once per file version
    split = cache.split(task, "train", root)      # indexed once per task content, split and data root
    model.feature_cache = cache.features          # frozen stages' outputs, shared by every run of the process
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.data.coco import CocoSplit
    from odinw_bench.tasks.spec import TaskSpec


class RunCache:
    """What one process reuses across its runs: checkpoint state dicts, task splits and frozen features.

    Args:
        max_checkpoints: State dicts kept at once (GLIP-L's is 1.7 GB); the least recently used goes first.
        feature_bytes: Memory bound of the frozen-feature cache; beyond it entries spill to a temporary folder
            of this process (removed by :meth:`close`).

    Attributes:
        features: The :class:`~odinw_bench.models.glip.feature_cache.FeatureCache` the runs' models share: a
            zero-shot run's val features serve the linear probe of every seed and shot count, which then only
            runs the output layers.
    """

    def __init__(self, max_checkpoints: int = 1, feature_bytes: int | None = None):
        import tempfile

        from odinw_bench.models.glip.feature_cache import (
            DEFAULT_MAX_BYTES,
            FeatureCache,
        )

        self._spill_dir = Path(tempfile.gettempdir()) / f"odinw_bench_features_{os.getpid()}_{id(self):x}"
        self.features = FeatureCache(DEFAULT_MAX_BYTES if feature_bytes is None else feature_bytes,
                                     spill_dir=self._spill_dir)
        self.max_checkpoints = max_checkpoints
        self._states: OrderedDict[tuple, dict] = OrderedDict()
        self._splits: dict[tuple, CocoSplit] = {}
        #: How often each kind was actually read from disk (the rest were cache hits).
        self.reads = {"checkpoint": 0, "split": 0}

    def state_dict(self, path: str | Path, trust: bool = False) -> dict:
        """``read_checkpoint(path)``, read once per file version (path, size, mtime).

        The tensors are shared between runs: callers copy them into a model, never change them in place.
        """
        from odinw_bench.models.glip import checkpoint

        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, trust)
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key]
        state = checkpoint.read_checkpoint(path, trust=trust)
        self.reads["checkpoint"] += 1
        self._states[key] = state
        while len(self._states) > self.max_checkpoints:
            self._states.popitem(last=False)
        return state

    def split(self, task: TaskSpec, split: str, data_root: str | Path) -> CocoSplit:
        """``load_task_split(task, split, data_root)``, indexed once per task content, split and data root."""
        from odinw_bench.data import task_files
        from odinw_bench.tasks.registry import task_sha256

        key = (task_sha256(task), split, str(Path(data_root).resolve()))
        if key not in self._splits:
            self._splits[key] = task_files.load_task_split(task, split, data_root)
            self.reads["split"] += 1
        return self._splits[key]


    def close(self) -> None:
        """Drop the frozen features and their spilled files (the state dicts and splits go with the object)."""
        self.features.clear()
        shutil.rmtree(self._spill_dir, ignore_errors=True)


_PROCESS_CACHE: RunCache | None = None


def process_cache() -> RunCache:
    """This process's :class:`RunCache`, created on first use."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None:
        _PROCESS_CACHE = RunCache()
    return _PROCESS_CACHE


def reset_process_cache() -> None:
    """Drop this process's cache (frees the state dicts it holds)."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is not None:
        _PROCESS_CACHE.close()
    _PROCESS_CACHE = None
