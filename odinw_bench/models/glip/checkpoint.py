"""Reading official GLIP checkpoints and loading them into the port.

Official files are ``torch.save`` dicts ``{"model": ..., "model_ema": ..., "optimizer": ..., "scheduler": ...,
"iteration": ...}`` written from a DistributedDataParallel model, so keys carry ``module.``. GLIP evaluates
``model`` (never the EMA copy), strips ``module.`` only when every key has it, and matches each model key to the
longest loaded key that is a suffix of it. Our parameter names equal the official ones, so exact matching does the
work and the suffix rule is only a fallback (e.g. for a file saved from a sub-module).

Unlike GLIP's loader, which silently skips anything that does not fit, :func:`load_glip_state_dict` tolerates only
what the official loader is *known* to leave at its init on a released checkpoint, and reports anything else.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.atomic import atomic_target
from odinw_bench.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

DDP_PREFIX = "module."
#: A key of every Lightning checkpoint (a fine-tuning run's ``model_best.ckpt``).
RUN_CHECKPOINT_MARK = "pytorch-lightning_version"

# Keys the official loader leaves at their init without harm, with the reason reported for each.
# Missing in the file: recomputed buffers, and the prompt-tuning layer that starts at zero.
_IGNORABLE_MISSING: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^rpn\.anchor_generator\."), "anchor buffer, recomputed"),
    (re.compile(r"(^|\.)position_ids$"), "BERT position ids buffer, recomputed"),
    (re.compile(r"(^|\.)relative_position_index$"), "Swin relative position index buffer, recomputed"),
    (re.compile(r"^rpn\.tunable_linear\.weight$"), "prompt-tuning layer, keeps its zero init"),
)
# Present in the file but absent from the model: the same recomputed buffers (transformers >= 4.31 no longer keeps
# `position_ids` in the state dict, while GLIP's files, saved with older versions, have it).
_IGNORABLE_UNEXPECTED = _IGNORABLE_MISSING[:3]
# Shape mismatch: `cls_logits` is sized by the pretraining NUM_CLASSES, is frozen and unused by token scoring.
_IGNORABLE_MISMATCH: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^rpn\.head\.cls_logits\."), "unused classifier sized by the pretraining NUM_CLASSES"),
)
_MAX_LISTED = 15


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB checkpoints never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read the model weights of a checkpoint file.

    Args:
        path: ``.safetensors`` file, or a ``torch.save`` file (``.pth``/``.pt``/``.bin``) holding either a plain
            state dict or GLIP's ``{"model": ..., "model_ema": ..., ...}`` (only ``model`` is used), or a fine-tuning
            run's ``model_best.ckpt`` (its prompt and deep-prompt weights included).
        trust: Allow full unpickling for ``torch.save`` files that hold more than tensors and plain containers.
            Unpickling runs code from the file, so this is opt-in (``--trust-checkpoint``).

    Returns:
        ``{name: tensor}`` with ``module.`` stripped when every key carries it.

    Raises:
        UserError: Missing or unreadable file, a file needing full unpickling without ``trust``, or no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint file not found", path=path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        loaded = _torch_load(path, trust)
        if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
            state = loaded["model"]
        elif isinstance(loaded, Mapping) and RUN_CHECKPOINT_MARK in loaded:
            from odinw_bench.models.glip.run_checkpoint import run_checkpoint_state

            state = run_checkpoint_state(loaded, path)
        else:
            state = loaded
        state = _as_state_dict(state, path)
    return strip_ddp_prefix(state)


def strip_ddp_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``module.`` from every key, but only if *all* keys have it (as GLIP does)."""
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        return {key[len(DDP_PREFIX):]: value for key, value in state.items()}
    return dict(state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read safetensors checkpoint: {err}", path=path) from None


def _torch_load(path: Path, trust: bool) -> Any:
    import pickle

    import torch

    if trust:
        logger.warning("Unpickling %s with weights_only=False (trusted by --trust-checkpoint)", path)
        try:
            return _torch_load_mmap(torch, path, weights_only=False)
        except (pickle.UnpicklingError, AttributeError, ImportError) as err:
            raise UserError(f"cannot unpickle checkpoint: {err}", path=path) from None
    try:
        return _torch_load_mmap(torch, path, weights_only=True)
    except pickle.UnpicklingError as err:
        needed = re.search(r"GLOBAL (\S+)", str(err))
        if "Unsupported global" not in str(err):
            raise UserError("cannot read checkpoint: not a valid torch.save file", path=path) from None
        raise UserError(
            f"this file holds Python objects beyond tensors ({needed.group(1) if needed else 'a custom class'}), so "
            "reading it would run code from it. If you trust its source, pass --trust-checkpoint "
            "(read_checkpoint(..., trust=True)), and consider converting it once to .safetensors",
            path=path,
        ) from None


# What torch.load raises for a file that is empty, truncated or not a checkpoint at all (an unpickling error is
# handled by the caller, which tells a file needing trust from a corrupt one).
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError)


def _torch_load_mmap(torch: Any, path: Path, weights_only: bool) -> Any:
    """Memory-map zip-format files (a 3.7 GB GLIP file then costs little RAM); fall back for the legacy format."""
    if path.stat().st_size == 0:
        raise UserError("cannot read checkpoint: the file is empty", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except _UNREADABLE as err:
        if "mmap can only be used" not in str(err):
            raise _unreadable(err, path) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except _UNREADABLE as err:
        raise _unreadable(err, path) from None


def _unreadable(err: BaseException, path: Path) -> UserError:
    """One line for a file torch cannot read; torch's own messages run over several lines or are empty."""
    lines = str(err).strip().splitlines()
    detail = lines[0] if lines else type(err).__name__
    return UserError(f"cannot read checkpoint (truncated or not a torch.save file?): {detail}", path=path)


def _as_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(state, Mapping) or not state:
        raise UserError("no state dict found (expected a 'model' entry or a mapping of tensors)", path=path)
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise UserError(f"not a state dict: non-tensor values under {_listing(map(str, bad))}", path=path)
    return dict(state)


@dataclass
class LoadReport:
    """What :func:`load_glip_state_dict` did.

    Attributes:
        loaded: Model keys that received a value from the checkpoint.
        suffix_matched: ``{model key: checkpoint key}`` for keys matched by GLIP's longest-suffix rule.
        ignored: ``{key: reason}`` for tolerated missing, unexpected or mismatched keys (left at their init).
        missing: Model keys absent from the checkpoint and not tolerated.
        unexpected: Checkpoint keys used by no model key and not tolerated.
        shape_mismatched: ``{model key: (checkpoint shape, model shape)}`` not tolerated.
    """

    loaded: list[str] = field(default_factory=list)
    suffix_matched: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing beyond the tolerated keys was left out."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def problems(self) -> str:
        """One line: each kind of problem with (a truncated number of) key names, shape mismatches first."""
        parts = []
        if self.shape_mismatched:
            items = [f"{k} checkpoint {tuple(c)} vs model {tuple(m)}" for k, (c, m) in self.shape_mismatched.items()]
            parts.append(f"shape mismatch ({len(items)}): {_listing(items)}")
        if self.missing:
            parts.append(f"missing from the checkpoint ({len(self.missing)}): {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model ({len(self.unexpected)}): {_listing(self.unexpected)}")
        return "; ".join(parts)


def _listing(items: Any) -> str:
    items = sorted(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def tolerated_reason(key: str, problem: str) -> str | None:
    """Why the official loader may leave ``key`` at its init, or None if it must load.

    Args:
        key: A state-dict key (official naming).
        problem: ``"missing"`` (not in the checkpoint), ``"unexpected"`` (not in the model) or ``"shape"``.
    """
    table = {"missing": _IGNORABLE_MISSING, "unexpected": _IGNORABLE_UNEXPECTED, "shape": _IGNORABLE_MISMATCH}[problem]
    return next((reason for pattern, reason in table if pattern.search(key)), None)


def match_keys(model_keys: list[str], ckpt_keys: list[str]) -> dict[str, str]:
    """Map each model key to a checkpoint key: itself if present, else the longest checkpoint key that is a
    dot-aligned suffix of it (GLIP's rule, which lets a file saved from a sub-module load).

    Returns:
        ``{model key: checkpoint key}`` for the model keys that found one.
    """
    available = set(ckpt_keys)
    matches = {}
    for key in model_keys:
        if key in available:
            matches[key] = key
            continue
        parts = key.split(".")
        # Longest first: dropping leading components one at a time.
        for start in range(1, len(parts)):
            candidate = ".".join(parts[start:])
            if candidate in available:
                matches[key] = candidate
                break
    return matches


def load_glip_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, source: str | Path | None = None
) -> LoadReport:
    """Load official GLIP weights into ``model``, tolerating only what the official loader leaves at init.

    Tolerated: a ``rpn.head.cls_logits.*`` shape mismatch, missing or extra ``rpn.anchor_generator.*``,
    ``*.position_ids`` and ``*.relative_position_index`` buffers (recomputed), and a missing
    ``rpn.tunable_linear.weight`` (keeps its zero init). Values are cast to the model's dtypes.

    Args:
        model: The port (or any module with official parameter names).
        state_dict: Weights, e.g. from :func:`read_checkpoint`; ``module.`` is stripped if all keys have it.
        strict: Raise on anything else missing, unexpected or mismatched (else log a warning and load the rest).
        source: The file the weights were read from, named in the error.

    Returns:
        A :class:`LoadReport`.

    Raises:
        UserError: When ``strict`` and the report is not ok; the model is then left untouched.
    """
    state_dict = strip_ddp_prefix(state_dict)
    model_state = model.state_dict()
    report = LoadReport()
    merged = _merge_matched(model_state, state_dict, report)
    _finish_load(model, merged, report, strict, source)
    return report


def _merge_matched(model_state: dict, state_dict: Mapping, report: LoadReport) -> dict:
    """Fill ``report`` and return the model's state with every fitting checkpoint value put in."""
    matches = match_keys(list(model_state), list(state_dict))
    merged = dict(model_state)
    for key, target in model_state.items():
        source_key = matches.get(key)
        if source_key is None:
            reason = tolerated_reason(key, "missing")
            if reason:
                report.ignored[key] = reason
            else:
                report.missing.append(key)
            continue
        value = state_dict[source_key]
        if tuple(value.shape) != tuple(target.shape):
            reason = tolerated_reason(key, "shape")
            if reason:
                report.ignored[key] = f"{reason} (checkpoint {tuple(value.shape)}, model {tuple(target.shape)})"
            else:
                report.shape_mismatched[key] = (tuple(value.shape), tuple(target.shape))
            continue
        merged[key] = value
        report.loaded.append(key)
        if source_key != key:
            report.suffix_matched[key] = source_key
    used = set(matches.values())
    for key in state_dict:
        if key not in used:
            reason = tolerated_reason(key, "unexpected")
            if reason:
                report.ignored[key] = reason
            else:
                report.unexpected.append(key)
    return merged


def _finish_load(model: nn.Module, merged: dict, report: LoadReport, strict: bool, source: str | Path | None) -> None:
    if not report.ok:
        if strict:
            raise UserError(f"checkpoint does not fit the model: {report.problems()}", path=source)
        logger.warning("Checkpoint %s loaded partially; left at init: %s", source or "", report.problems())
    for key, reason in sorted(report.ignored.items()):
        logger.info("Left at init: %s (%s)", key, reason)
    if report.suffix_matched:
        logger.info("%d keys matched by suffix, e.g. %s", len(report.suffix_matched), next(iter(report.suffix_matched)))
    # Strict on the merged dict, as GLIP does: every model key has a value (loaded or its own init).
    model.load_state_dict(merged, strict=True)


def convert_to_safetensors(src_pth: str | Path, dst: str | Path, trust: bool = False) -> Path:
    """Write the ``model`` weights of a ``torch.save`` checkpoint as a slim float32 safetensors file.

    The EMA copy, optimizer and scheduler are dropped (a 3.7 GB GLIP-T file becomes about 0.93 GB) and the
    ``module.`` prefix is stripped. Metadata records the source file name and its SHA-256. The file is written
    to a temporary name beside ``dst`` and renamed, so a partial file is never left under ``dst``.

    Args:
        src_pth: The official ``.pth`` file.
        dst: The ``.safetensors`` file to write.
        trust: Passed to :func:`read_checkpoint`.

    Returns:
        ``dst`` as a Path.
    """
    import torch
    from safetensors.torch import save_file

    from odinw_bench import __version__

    src_pth, dst = Path(src_pth), Path(dst)
    state = read_checkpoint(src_pth, trust=trust)
    tensors, seen = {}, set()
    for key, value in state.items():
        value = value.detach().to(torch.float32) if value.is_floating_point() else value.detach()
        # safetensors refuses tensors that share storage; give each its own.
        ptr = value.untyped_storage().data_ptr()
        tensors[key] = value.clone().contiguous() if ptr in seen else value.contiguous()
        seen.add(ptr)
    metadata = {"format": "pt", "source_file": src_pth.name, "source_sha256": sha256_file(src_pth),
                "converted_by": f"odinw_bench {__version__}"}
    with atomic_target(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    logger.info("Converted %s -> %s (%d tensors)", src_pth, dst, len(tensors))
    return dst


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata dict of a safetensors file (e.g. ``source_sha256`` written by :func:`convert_to_safetensors`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
