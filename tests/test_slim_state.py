"""Fine-tuning checkpoints without the frozen weights: smaller, and never loaded into other frozen weights."""

from __future__ import annotations

import pytest
import torch

from odinw_bench.errors import UserError
from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.training.module import DetectionModule
from odinw_bench.training.run_config import load_run_config
from odinw_bench.training.slim_state import (
    FROZEN_KEY,
    check_frozen_parameters,
    load_slim_state,
)


def _module(regime: str, seed: int = 0) -> DetectionModule:
    torch.manual_seed(seed)
    backend = GLIPBackend.from_preset("glip-micro")
    backend.set_vocabulary(["cat", "dog"])
    return DetectionModule.from_resolved(backend, load_run_config().resolved_for(regime, 1), [1, 2])


def _saved(module: DetectionModule) -> dict:
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


@pytest.mark.parametrize("regime", ["linear-probe", "prompt"])
def test_slim_checkpoint_restores_the_trained_weights(regime):
    trained = _module(regime)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(1.0)
    checkpoint = _saved(trained)
    kept = set(checkpoint["state_dict"])
    assert {f"backend.{n}" for n in trained.trainable_names} <= kept and not kept & set(checkpoint[FROZEN_KEY]["names"])
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) < 0.1 * sum(
        v.numel() for v in trained.state_dict().values())
    fresh = _module(regime)  # the same pre-trained (here: seeded) weights, not yet trained
    load_slim_state(fresh, checkpoint, source="last.ckpt")
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_other_frozen_weights_are_refused_with_the_file_and_field():
    checkpoint = _saved(_module("linear-probe", seed=0))
    with pytest.raises(UserError, match="other frozen weights") as err:
        load_slim_state(_module("linear-probe", seed=1), checkpoint, source="runs/x/last.ckpt")
    assert "runs/x/last.ckpt" in str(err.value) and FROZEN_KEY in str(err.value)


def test_a_checkpoint_of_another_model_layout_is_refused():
    checkpoint = _saved(_module("linear-probe"))
    checkpoint["state_dict"]["backend.model.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="does not fit this model"):
        check_frozen_parameters(_module("linear-probe"), checkpoint, source="last.ckpt")


def test_a_full_checkpoint_still_loads_strictly():
    module = _module("full")
    check_frozen_parameters(module, {"state_dict": module.state_dict()})  # no FROZEN_KEY: nothing to check
    load_slim_state(_module("full", seed=1), {"state_dict": module.state_dict()})
