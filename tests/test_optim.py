"""Optimizer groups follow GLIP's make_optimizer rules, and grouping does not change AdamW's math."""

from __future__ import annotations

import pytest
import torch

from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.training.optim import (
    build_optimizer,
    build_param_groups,
    parameter_settings,
)
from odinw_bench.training.regimes import apply_regime, count_parameters, get_regime

RECIPE = {"lr": 1e-4, "language_lr": 1e-5, "weight_decay": 0.05}


@pytest.fixture(scope="module")
def full_micro():
    torch.manual_seed(0)
    backend = GLIPBackend.from_preset("glip-micro")
    apply_regime(backend, get_regime("full"), freeze_conv_body_at=2)
    return backend


def _settings(backend, name):
    return parameter_settings(backend, **RECIPE)[name][1:]


def test_bias_and_language_rules_by_name(full_micro):
    names = [n for n, p in full_micro.named_parameters() if p.requires_grad]
    # Substring "bias": the Swin table, the head's bias_lang / bias0 and ordinary biases: lr x2, no decay.
    table = next(n for n in names if n.endswith("relative_position_bias_table"))
    for name in (table, "model.rpn.head.bias_lang", "model.rpn.head.bias0", "model.rpn.head.bbox_pred.bias"):
        assert _settings(full_micro, name) == (2e-4, 0.0), name
    language_weight = next(n for n in names if "language_backbone" in n and n.endswith("query.weight"))
    language_bias = language_weight[:-len("weight")] + "bias"
    assert _settings(full_micro, language_weight) == (1e-5, 0.05)
    assert _settings(full_micro, language_bias) == (2e-5, 0.0)
    # The fusion tower's BERT-style layers are not "language_backbone": they get the base lr (notes 9.4).
    tower_bert = next(n for n in names if "dyhead_tower" in n and ".attention." in n and n.endswith("weight"))
    assert _settings(full_micro, tower_bert) == (1e-4, 0.05)
    assert _settings(full_micro, "model.rpn.head.bbox_pred.weight") == (1e-4, 0.05)
    # Norm weights keep the full decay (WEIGHT_DECAY_NORM_FACTOR is 1).
    norm = next(n for n in names if "norm" in n.lower() and n.endswith("weight"))
    assert _settings(full_micro, norm)[1] == 0.05


def test_every_trainable_parameter_is_in_exactly_one_group(full_micro):
    groups = build_param_groups(full_micro, **RECIPE)
    assert [g["name"] for g in groups] == ["base", "base_bias", "language", "language_bias"]
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in full_micro.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(full_micro)[0]
    frozen = {n for n, p in full_micro.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & {n for g in groups for n in g["param_names"]}
    for group in groups:
        for name in group["param_names"]:
            assert ("bias" in name) == group["name"].endswith("_bias")
            assert ("language_backbone" in name) == group["name"].startswith("language")


def test_prompt_regime_has_one_group_with_its_hyperparameters():
    backend = GLIPBackend.from_preset("glip-micro")
    apply_regime(backend, get_regime("prompt"), freeze_conv_body_at=2)
    optimizer = build_optimizer(backend, lr=0.05, language_lr=1e-5, weight_decay=0.25, grad_clip_norm=1.0)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["param_names"] == ["model.rpn.tunable_linear.weight"]
    assert (group["lr"], group["weight_decay"]) == (0.05, 0.25)


def test_nothing_trainable_is_an_error():
    backend = GLIPBackend.from_preset("glip-micro")
    apply_regime(backend, get_regime("zero-shot"))
    with pytest.raises(ValueError, match="nothing to optimise"):
        build_param_groups(backend, **RECIPE)


def test_grouped_adamw_equals_glip_one_group_per_parameter():
    # GLIP's make_optimizer builds one group per parameter; sharing groups must give identical updates.
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({
        "language_backbone": torch.nn.Linear(3, 4),
        "head": torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 2)}),
    })
    model["head"].register_parameter("bias_lang", torch.nn.Parameter(torch.randn(2)))
    clone = {n: p.detach().clone() for n, p in model.named_parameters()}
    ours = build_optimizer(model, **RECIPE)
    reference_params = {n: torch.nn.Parameter(v.clone()) for n, v in clone.items()}
    glip_groups = []
    for name, param in reference_params.items():
        lr = RECIPE["language_lr"] if "language_backbone" in name else RECIPE["lr"]
        wd = RECIPE["weight_decay"]
        if "bias" in name:
            lr, wd = lr * 2.0, 0.0
        glip_groups.append({"params": [param], "lr": lr, "weight_decay": wd})
    reference = torch.optim.AdamW(glip_groups, lr=RECIPE["lr"])
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        for name, param in model.named_parameters():
            param.grad = grads[name].clone()
            reference_params[name].grad = grads[name].clone()
        ours.step()
        reference.step()
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), reference_params[name].detach()), name
        assert not torch.equal(param.detach(), clone[name]), name


def test_the_language_lr_follows_the_backends_language_group():
    """A backend whose text tower is not called language_backbone (Grounding DINO, OWLv2) still gets LANG_LR there."""
    import torch

    from odinw_bench.training.optim import parameter_settings

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_backbone = torch.nn.Linear(2, 2)
            self.head = torch.nn.Linear(2, 2)

        def parameter_groups(self):
            return {"language": ["text_backbone.weight", "text_backbone.bias"], "head": ["head.weight", "head.bias"]}

    settings = parameter_settings(Other(), lr=1e-4, language_lr=1e-5, weight_decay=0.05)
    assert settings["text_backbone.weight"] == ("language", 1e-5, 0.05)
    assert settings["text_backbone.bias"] == ("language_bias", 2e-5, 0.0)
    assert settings["head.weight"] == ("base", 1e-4, 0.05)
