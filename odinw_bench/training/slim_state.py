"""Fine-tuning checkpoints that hold what training changes, and a hash of what it does not.

A linear probe trains 0.02% of GLIP-T's weights and prompt tuning one (1000, D) offset, yet a Lightning checkpoint
holds the whole model, written after every epoch (``last.ckpt``) and at every new best (``model_best.ckpt``). A
:class:`~odinw_bench.training.module.DetectionModule` checkpoint therefore keeps every trained parameter and every
buffer, and replaces the frozen parameters by their names and one content hash (:data:`FROZEN_KEY`). Loading it
into a model checks that hash against the model's own frozen weights (the pre-trained checkpoint of the same run id)
and refuses any other model: nothing is ever filled in from the wrong weights.

Example::

    state = torch.load("model_best.ckpt", weights_only=True)
    load_slim_state(module, state)   # into a module built like the one that saved it
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from odinw_bench.errors import UserError

#: Checkpoint entry of the frozen parameters left out of ``state_dict``: ``names`` and ``sha`` (blake2b).
FROZEN_KEY = "odinw_frozen_parameters"


def frozen_parameter_names(module: nn.Module) -> list[str]:
    """State-dict names of the parameters that do not train (``requires_grad`` False), in module order."""
    return [name for name, p in module.named_parameters() if not p.requires_grad]


def frozen_digest(module: nn.Module, names: list[str]) -> str:
    """blake2b over the named parameters' names, dtypes, shapes and values."""
    from odinw_bench.models.glip.feature_cache import tensor_digest

    params = dict(module.named_parameters())
    h = hashlib.blake2b(digest_size=20)
    for name in names:
        if name not in params:
            return "missing:" + name
        h.update(name.encode())
        h.update(tensor_digest(params[name]).encode())
    return h.hexdigest()


class SlimStateMixin:
    """For a LightningModule: checkpoints without its frozen parameters (Lightning's save and load hooks).

    The frozen parameters' hash is computed once per set of tensor versions, so the per-epoch save costs the
    trained weights only.
    """

    _frozen_memo: tuple[tuple, str] | None = None

    def _frozen_entry(self) -> dict[str, Any]:
        names = frozen_parameter_names(self)
        params = dict(self.named_parameters())
        versions = tuple((n, id(params[n]), params[n].data_ptr(), params[n]._version) for n in names)
        if self._frozen_memo is None or self._frozen_memo[0] != versions:
            self._frozen_memo = (versions, frozen_digest(self, names))
        return {"names": names, "sha": self._frozen_memo[1]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        entry = self._frozen_entry()
        dropped = set(entry["names"])
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in dropped}
        checkpoint[FROZEN_KEY] = entry

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_frozen_parameters(self, checkpoint)
        self.strict_loading = FROZEN_KEY not in checkpoint  # the keys were checked here instead


def check_frozen_parameters(module: nn.Module, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Refuse a slim checkpoint whose left-out parameters are not exactly this model's frozen weights.

    Args:
        module: The model to load into (built as the one that saved the checkpoint, before loading).
        checkpoint: A Lightning checkpoint dict (``state_dict`` and, when slim, :data:`FROZEN_KEY`).
        source: The file, for the message.

    Raises:
        UserError: Frozen weights differ (another pre-trained checkpoint), or keys are missing or unknown.
    """
    entry = checkpoint.get(FROZEN_KEY)
    if entry is None:
        return
    expected = set(module.state_dict())
    have = set(checkpoint["state_dict"]) | set(entry["names"])
    if have != expected:
        missing, unknown = sorted(expected - have)[:3], sorted(have - expected)[:3]
        raise UserError(f"checkpoint does not fit this model (missing {missing}, unknown {unknown})",
                        path=source, field="state_dict")
    if frozen_digest(module, list(entry["names"])) != entry["sha"]:
        raise UserError("checkpoint was trained from other frozen weights than this model's (another pre-trained "
                        "checkpoint?)", path=source, field=FROZEN_KEY)


def load_slim_state(module: nn.Module, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Load a (slim or full) Lightning checkpoint's weights into ``module``, checking its frozen part first."""
    check_frozen_parameters(module, checkpoint, source)
    with torch.no_grad():
        module.load_state_dict(checkpoint["state_dict"], strict=FROZEN_KEY not in checkpoint)
