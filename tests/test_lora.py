"""LoRA regimes (``lora``, ``lora-language``): peft adapters on any backend's attention projections, as data.

Adapters start at zero (the model predicts as before), are the only parameters that train, merge into the base
weights with the same detections, and run through the CLI with their trainable counts in the record.
"""

from __future__ import annotations

import json

import pytest
import torch
from tuning_steps import micro_backend, predict, run_micro, step, tune_then_reload

from odinw_bench.results.records import read_record
from odinw_bench.training.regimes import (
    apply_regime,
    count_parameters,
    get_regime,
)


@pytest.mark.parametrize(("regime_name", "groups"), [("lora", ("language", "tower")), ("lora-language", ("language",))])
def test_only_the_adapters_train_and_they_start_at_zero(regime_name, groups):
    backend = micro_backend()
    before = predict(backend)
    regime = get_regime(regime_name)
    trainable = apply_regime(backend, regime, freeze_conv_body_at=2)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    owners = {g for g, names in backend.parameter_groups().items() for n in names if n.startswith(tuple(adapted))}
    assert owners - {"lora"} == set(groups)  # the adapted layers' own weights sit in exactly the regime's groups
    assert count_parameters(backend)[0] < count_parameters(backend)[1] // 10
    after = predict(backend)
    assert all(torch.equal(a.scores, b.scores) and torch.equal(a.boxes, b.boxes) for a, b in zip(before, after))
    state = {k: v.clone() for k, v in backend.state_dict().items()}
    step(backend, regime)
    changed = {k for k, v in backend.state_dict().items() if not torch.equal(v, state[k])}
    # The first step moves the zero-initialised lora_B only (lora_A's gradient is B^T...); the second moves both.
    assert changed == {n for n in trainable if ".lora_B." in n}
    step(backend, regime)
    changed = {k for k, v in backend.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == set(trainable)


def test_merged_adapters_give_the_same_detections():
    from peft.tuners.lora import LoraLayer

    backend = micro_backend()
    regime = get_regime("lora")
    apply_regime(backend, regime, freeze_conv_body_at=2)
    for _ in range(2):
        step(backend, regime)
    unmerged = predict(backend)
    layers = [m for m in backend.modules() if isinstance(m, LoraLayer)]
    assert layers
    for layer in layers:
        layer.merge()
    merged = predict(backend)
    assert sum(len(d.scores) for d in merged) > 0
    for a, b in zip(unmerged, merged):
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=1e-4)


def test_a_lora_run_records_its_adapters(tmp_path):
    record = run_micro(tmp_path, "lora")
    assert record["regime"] == "lora" and 0 < record["params"]["trainable"] < record["params"]["total"] // 10
    assert "LoRA" in record["protocol_differences"][0]


def test_other_backends_take_lora_through_the_same_regime(tmp_path):
    from hf_models import save_tiny_grounding_dino, save_tiny_owlv2

    from odinw_bench.models.hf.grounding_dino import GroundingDinoBackend
    from odinw_bench.models.hf.owlv2 import Owlv2Backend

    gdino = GroundingDinoBackend.from_pretrained(save_tiny_grounding_dino(tmp_path / "gdino"))
    owl = Owlv2Backend.from_pretrained(save_tiny_owlv2(tmp_path / "owl"))
    for backend in (gdino, owl):
        backend.set_vocabulary(["red square", "blue square"])
        trainable = apply_regime(backend, get_regime("lora"), freeze_conv_body_at=2)
        adapted = {n.split(".lora_")[0] for n in trainable}
        groups = backend.parameter_groups()
        owners = {g for g, names in groups.items() for n in names if n.startswith(tuple(adapted)) and g != "lora"}
        assert owners and owners <= {"language", "fusion"}
    assert "fusion" in {g for g, names in gdino.parameter_groups().items()
                        for n in names if ".base_layer." in n}  # Grounding DINO's fusion is adapted too


def test_a_lora_runs_best_checkpoint_loads_merged_with_the_runs_detections(tmp_path):
    """``--checkpoint <run>/model_best.ckpt`` of a LoRA run: the adapters merged into plain GLIP weights predict what
    the run predicted on the test split (to float rounding: merging changes the order of the sums)."""
    tuned, again = tune_then_reload(tmp_path, "lora")
    assert read_record(again)["metrics"]["AP"] == pytest.approx(read_record(tuned)["metrics"]["AP"], abs=1e-3)
    runs = [json.loads(p.with_name(p.stem + "_predictions.json").read_text()) for p in (tuned, again)]
    top = [sorted((d["image_id"], d["category_id"], round(d["score"], 3)) for d in run if d["score"] > 0.3)
           for run in runs]
    assert top[0] and top[0] == top[1]
