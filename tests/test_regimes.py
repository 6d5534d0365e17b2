"""Regimes reproduce GLIP's trainable sets exactly, and one optimisation step changes exactly those tensors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from odinw_bench.errors import UserError
from odinw_bench.models.base import DetectorBackend
from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.models.glip.config import get_preset
from odinw_bench.training.regimes import (
    Regime,
    apply_regime,
    count_parameters,
    get_regime,
    regimes,
    set_frozen_modules_eval,
)

# Our regime -> GLIP's TUNING_HIGHLEVEL_OVERRIDE entry in trainable_glip_{t,l}.json.
OFFICIAL = {"full": "full", "linear-probe": "linear_prob", "language": "language_prompt_v1",
            "prompt": "language_prompt_v2"}


def _meta_backend(preset: str) -> GLIPBackend:
    with torch.device("meta"):
        return GLIPBackend(get_preset(preset))


def _official_names(names):
    return sorted(n[len("model."):] for n in names)


@pytest.mark.parametrize("regime", sorted(OFFICIAL))
def test_glip_t_trainable_set_equals_official(regime, glip_reference):
    official = glip_reference.json("trainable_glip_t.json")["regimes"][OFFICIAL[regime]]
    backend = _meta_backend("glip-t")
    # The manifests record GLIP-T's config as is: FREEZE_CONV_BODY_AT = -1.
    names = apply_regime(backend, get_regime(regime), freeze_conv_body_at=-1)
    assert _official_names(names) == sorted(official["trainable"])
    assert count_parameters(backend)[0] == official["num_trainable_elements"]


@pytest.mark.parametrize("regime", sorted(OFFICIAL))
def test_glip_l_trainable_set_equals_official(regime, glip_reference):
    official = glip_reference.json("trainable_glip_l.json")["regimes"][OFFICIAL[regime]]
    backend = _meta_backend("glip-l")
    names = apply_regime(backend, get_regime(regime), freeze_conv_body_at=get_preset("glip-l").freeze_conv_body_at)
    assert _official_names(names) == sorted(official["trainable"])


def test_full_under_the_odinw_recipe_freezes_stem_and_stage_1():
    backend = _meta_backend("glip-t")
    names = apply_regime(backend, get_regime("full"), freeze_conv_body_at=2)
    assert count_parameters(backend)[0] == 231_455_576
    assert not any(".patch_embed." in n or ".layers.0." in n or "cls_logits" in n for n in names)
    assert any(".layers.1." in n for n in names)


def test_linear_probe_is_the_nine_head_tensors():
    backend = _meta_backend("glip-t")
    names = apply_regime(backend, get_regime("linear-probe"), freeze_conv_body_at=2)
    assert len(names) == 9 and count_parameters(backend)[0] == 198_919
    assert not any("scales" in n for n in names)  # GLIP's rule leaves the per-level scales frozen


def test_unknown_regime_and_empty_regime_are_user_errors():
    with pytest.raises(UserError, match="did you mean: linear-probe"):
        get_regime("linear_prob")  # GLIP's name is close to ours
    assert get_regime("linear_probe").name == "linear-probe"
    backend = GLIPBackend.from_preset("glip-micro")
    with pytest.raises(UserError, match="would train no parameter"):
        apply_regime(backend, Regime("nothing", "none", fit=True, groups=("head",), name_filter=("no-such",)))
    assert apply_regime(backend, get_regime("zero-shot")) == []
    assert count_parameters(backend)[0] == 0


def _batch(backend):
    images = [Image.new("RGB", (96, 80), (180, 40, 40)), Image.new("RGB", (80, 96), (40, 40, 180))]
    targets = [{"boxes": [[10.0, 12.0, 60.0, 50.0]], "labels": [0]}, {"boxes": [[5.0, 20.0, 70.0, 90.0]],
                                                                       "labels": [1]}]
    return backend.preprocess(images, targets)


@pytest.mark.parametrize("regime_name", ["linear-probe", "prompt", "full", "language"])
def test_one_step_changes_exactly_the_declared_tensors(regime_name):
    torch.manual_seed(0)
    backend = GLIPBackend.from_preset("glip-micro")
    backend.set_vocabulary(["apple", "banana"])
    regime = get_regime(regime_name)
    trainable = set(apply_regime(backend, regime, freeze_conv_body_at=2))
    backend.train()
    set_frozen_modules_eval(backend, regime, freeze_conv_body_at=2)
    before = {k: v.clone() for k, v in backend.state_dict().items()}
    params = [p for p in backend.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
    loss = sum(backend.compute_losses(_batch(backend)).values())
    loss.backward()
    optimizer.step()
    changed = {k for k, v in backend.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{n}" for n in trainable}
    assert all(p.grad is None for n, p in backend.named_parameters() if n not in trainable)


def test_frozen_modules_follow_glip_eval_rules():
    backend = GLIPBackend.from_preset("glip-micro")
    for name, expect_tower_training in (("prompt", False), ("linear-probe", True), ("full", True)):
        regime = regimes()[name]
        apply_regime(backend, regime, freeze_conv_body_at=2)
        backend.train()
        set_frozen_modules_eval(backend, regime, freeze_conv_body_at=2)
        body = backend.model.backbone.body
        assert not body.patch_embed.training and not body.layers[0].training
        assert backend.model.rpn.head.dyhead_tower.training is expect_tower_training, name
        assert backend.model.language_backbone.training is (name == "full"), name
        assert body.layers[1].training is (name == "full"), name


class _OtherBackend(torch.nn.Module, DetectorBackend):
    """A backend with another layout than GLIP's: regimes reach it only through groups and the contract."""

    name = "other"
    set_vocabulary = preprocess = predict = compute_losses = None

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        self.language = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
        self.fusion = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
        self.head = torch.nn.Linear(2, 2)

    def parameter_groups(self):
        groups = {g: [] for g in ("backbone", "language", "fusion", "head")}
        for name, _ in self.named_parameters():
            groups[name.split(".")[0]].append(name)
        return groups

    def frozen_stage_names(self, freeze_at):
        return ["backbone.0.weight", "backbone.0.bias"] if freeze_at >= 2 else []


def test_regimes_apply_to_any_backend_through_its_groups():
    backend = _OtherBackend()
    assert apply_regime(backend, get_regime("linear-probe"), freeze_conv_body_at=2) == ["head.bias", "head.weight"]
    full = apply_regime(backend, get_regime("full"), freeze_conv_body_at=2)
    assert "backbone.0.weight" not in full and "backbone.1.weight" in full and "fusion.0.weight" in full
    regime = get_regime("language")
    assert apply_regime(backend, regime) == ["language.0.bias", "language.0.weight"]
    backend.train()
    set_frozen_modules_eval(backend, regime)
    # Everything the regime does not train runs in eval mode; groups GLIP has and this backend lacks are ignored.
    assert backend.language.training and not backend.fusion.training and not backend.backbone.training
    with pytest.raises(UserError, match="prompt"):
        apply_regime(backend, get_regime("prompt"))  # no prompt tuning in this backend
