"""Features of frozen parts, computed once and reused: the same weights on the same input give the same output.

A regime evaluates its model after every epoch, and a sweep evaluates the same pre-trained weights on the same
images in many runs (zero-shot, then linear probing, prompt tuning, ... at every shot count). Whatever part of the
model is frozen and in eval mode gives the same output each time, so :class:`FeatureCache` keeps it:

* ``image``: the FPN features of a padded image batch, when Swin and the FPN are frozen (linear probing, prompt
  tuning, zero-shot);
* ``text``: BERT's features of a caption, when BERT is frozen;
* ``tower``: the fused visual and text features leaving the head tower, when everything before the output layers
  is frozen (linear probing, zero-shot): only the output layers and post-processing then run.

Keys are content hashes: of the input tensors (bytes, shape, dtype) and of every weight and buffer the stage
depends on (:meth:`FeatureCache.fingerprint`). An entry can therefore never be served to other weights or another
input: a run with other weights misses, a run with the same weights (another seed, shot count or regime of the same
checkpoint) hits. Entries are kept in memory up to ``max_bytes`` (least recently used first out) and, with a
``spill_dir``, moved to disk up to ``max_disk_bytes`` instead of being dropped.

The cache is used only outside training mode (validation, test, zero-shot, ``predict_images``): a training batch is
a new random resize and flip each time, and GLIP keeps the linear-probe tower's dropout on in training.

Example::

    cache = FeatureCache(max_bytes=1 << 30)
    model.feature_cache = cache            # a GLIP model; its predictions are unchanged, only faster
    cache.stats                            # {'hits': ..., 'misses': ..., ...}
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Default memory bound: ample for the demo and ODinW's few-shot val splits at GLIP-T size (~23 MB per image).
DEFAULT_MAX_BYTES = 2 << 30


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """blake2b of the tensors' dtype, shape and bytes (moved to the CPU when needed)."""
    h = hashlib.blake2b(digest_size=20)
    for tensor in tensors:
        if tensor is None:
            h.update(b"none")
            continue
        t = tensor.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def is_frozen(module: nn.Module | None) -> bool:
    """No parameter trains and every submodule is in eval mode: the output depends only on the input."""
    if module is None:
        return True
    return (not any(p.requires_grad for p in module.parameters())
            and not any(m.training for m in module.modules()))


def nbytes(value: Any) -> int:
    """Bytes of the tensors in a nested list/tuple/dict."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


def _detached(value: Any) -> Any:
    """Detached tensors; those made under ``torch.inference_mode`` (Lightning's validation) are copied into normal
    tensors, which a later forward with autograd (a linear probe's loss in eval mode) can save for backward."""
    if isinstance(value, torch.Tensor):
        if value.is_inference():
            with torch.inference_mode(False):
                return value.clone()
        return value.detach()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


class FeatureCache:
    """A bounded cache of frozen-stage outputs, keyed by input and weight content.

    Args:
        max_bytes: Memory bound of the entries (tensors' bytes); the least recently used leave first.
        spill_dir: Where entries that leave memory go (None: they are dropped). Safe to share between processes:
            files are content-addressed and written atomically.
        max_disk_bytes: Bound of the spilled files this cache wrote; the oldest are deleted first.

    Attributes:
        stats: ``hits``, ``misses``, ``disk_hits``, ``spilled``, ``dropped`` counts and current ``bytes``.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, spill_dir: str | Path | None = None,
                 max_disk_bytes: int = 20 << 30):
        if max_bytes < 0 or max_disk_bytes < 0:
            raise ValueError("cache bounds must be >= 0")
        self.max_bytes, self.max_disk_bytes = max_bytes, max_disk_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._spilled: OrderedDict[str, int] = OrderedDict()
        self._fingerprints: dict[int, tuple[tuple, str]] = {}
        self.stats = {"hits": 0, "misses": 0, "disk_hits": 0, "spilled": 0, "dropped": 0, "bytes": 0}

    # ------------------------------------------------------------------------------------------- weights
    def fingerprint(self, modules: Iterable[nn.Module | None]) -> str:
        """Content hash of the modules' parameters and buffers (names, dtypes, shapes, values).

        Hashing is memoised per module by each tensor's identity, storage and version counter, which every
        in-place change (an optimizer step, ``load_state_dict``) bumps; :meth:`forget_weights` drops the memo for
        changes that bypass the counter (writes through ``.data``).
        """
        h = hashlib.blake2b(digest_size=20)
        for module in modules:
            h.update(b"|" if module is None else self._module_fingerprint(module).encode())
        return h.hexdigest()

    def _module_fingerprint(self, module: nn.Module) -> str:
        named = [*module.named_parameters(), *module.named_buffers()]
        versions = tuple((id(t), t.data_ptr(), t._version) for _, t in named)
        memo = self._fingerprints.get(id(module))
        if memo is not None and memo[0] == versions:
            return memo[1]
        h = hashlib.blake2b(digest_size=20)
        for name, tensor in named:
            h.update(name.encode())
            h.update(tensor_digest(tensor).encode())
        digest = h.hexdigest()
        self._fingerprints[id(module)] = (versions, digest)
        return digest

    def forget_weights(self) -> None:
        """Hash weights again at their next use (call after changing weights without an in-place op)."""
        self._fingerprints.clear()

    # ------------------------------------------------------------------------------------------- entries
    def get_or_compute(self, stage: str, key_parts: Iterable[str], compute: Callable[[], Any],
                       device: torch.device | None = None) -> Any:
        """The cached output of ``stage`` for ``key_parts``, or ``compute()`` stored under them.

        Args:
            stage: The stage's name (part of the key).
            key_parts: Digests of everything the output depends on (inputs, weights, autocast state).
            compute: Computes the output (tensors in nested lists/dicts) on a miss.
            device: Where the returned tensors go (the model's device); None: where they are kept (the CPU).

        Returns:
            The output. Its tensors are shared with the cache: callers must not change them in place.
        """
        key = hashlib.blake2b("/".join([stage, *key_parts]).encode(), digest_size=20).hexdigest()
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.stats["hits"] += 1
            return _to_device(found[0], device)
        value = self._load_spilled(key)
        if value is not None:
            self.stats["disk_hits"] += 1
        else:
            self.stats["misses"] += 1
            value = _detached(compute())
        # Entries live in host memory: a GPU run keeps its memory for training, and copying back is exact.
        self._store(key, _to_device(value, "cpu"))
        return _to_device(value, device)

    def _store(self, key: str, value: Any) -> None:
        size = nbytes(value)
        if size > self.max_bytes:
            self._spill(key, value, size)
            return
        self._entries[key] = (value, size)
        self.stats["bytes"] += size
        while self.stats["bytes"] > self.max_bytes:
            old_key, (old_value, old_size) = self._entries.popitem(last=False)
            self.stats["bytes"] -= old_size
            self._spill(old_key, old_value, old_size)

    def _spill(self, key: str, value: Any, size: int) -> None:
        if self.spill_dir is None or size > self.max_disk_bytes:
            self.stats["dropped"] += 1
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{key}.pt"
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        torch.save(value, tmp)
        os.replace(tmp, path)
        self._spilled[key] = size
        self.stats["spilled"] += 1
        while sum(self._spilled.values()) > self.max_disk_bytes:
            old_key, _ = self._spilled.popitem(last=False)
            (self.spill_dir / f"{old_key}.pt").unlink(missing_ok=True)

    def _load_spilled(self, key: str) -> Any:
        if self.spill_dir is None:
            return None
        path = self.spill_dir / f"{key}.pt"
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, EOFError, RuntimeError, OSError) as err:
            if not isinstance(err, FileNotFoundError):
                logger.warning("ignoring unreadable cached features %s: %s", path, err)
            return None
        if key in self._spilled:
            del self._spilled[key]
            path.unlink(missing_ok=True)
        return value

    def clear(self) -> None:
        """Drop every entry in memory and the spilled files this cache wrote."""
        self._entries.clear()
        self.stats["bytes"] = 0
        if self.spill_dir is not None:
            for key in self._spilled:
                (self.spill_dir / f"{key}.pt").unlink(missing_ok=True)
        self._spilled.clear()
        self._fingerprints.clear()


def _to_device(value: Any, device: torch.device | str | None) -> Any:
    """``value`` with its tensors on ``device`` (None: unchanged); tensors already there are not copied."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value
