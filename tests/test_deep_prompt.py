"""The ``deep-prompt`` regime: learnable text tokens prepended at every fusion step of GLIP's tower (VPT-deep style).

Only the prompts train; the image attends to them while the text's own update is unchanged; the feature cache
never reuses a tower that depends on prompts in training; a saved deep-prompt model reloads with the same
detections; other backends refuse the regime in one line.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tuning_steps import micro_backend, predict, run_micro, step, tune_then_reload

from odinw_bench.cli import main
from odinw_bench.errors import UserError
from odinw_bench.models.glip.config import get_preset
from odinw_bench.models.glip.feature_cache import FeatureCache
from odinw_bench.models.glip.fusion import DEEP_PROMPTS, VLFuse
from odinw_bench.results.records import read_record
from odinw_bench.training.regimes import (
    apply_regime,
    get_regime,
)


def test_only_the_prompts_train_and_one_step_changes_exactly_them():
    backend = micro_backend()
    regime = get_regime("deep-prompt")
    trainable = apply_regime(backend, regime, freeze_conv_body_at=2)
    assert trainable == ["model.rpn.deep_prompts.weight"]
    assert backend.parameter_groups()["deep_prompt"] == trainable
    steps = backend.model.rpn.head.fusion_steps
    weight = backend.model.rpn.deep_prompts.weight
    assert steps > 0 and weight.shape == (steps, regime.deep_prompt_tokens, backend.config.language.lang_dim)
    state = {k: v.clone() for k, v in backend.state_dict().items()}
    step(backend, regime)
    changed = {k for k, v in backend.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == set(trainable)
    # Applying the regime again (a resume, a second fit) keeps the trained prompts.
    apply_regime(backend, regime, freeze_conv_body_at=2)
    assert backend.model.rpn.deep_prompts.weight is weight


def test_the_image_attends_to_the_prompts_and_the_text_keeps_its_tokens():
    torch.manual_seed(0)
    fuse = VLFuse(v_dim=16, l_dim=24, num_convs=2, embed_dim=32, num_heads=4, dropout=0.0).eval()
    visual = [torch.randn(2, 16, 4, 6), torch.randn(2, 16, 2, 3)]
    masks = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    lang = {"hidden": torch.randn(2, 5, 24), "masks": masks}
    prompts = (torch.randn(3, 24), torch.randn(3, 24))
    with torch.no_grad():
        plain = fuse({"visual": visual, "lang": lang})
        prompted = fuse({"visual": visual, "lang": {**lang, DEEP_PROMPTS: prompts}})
    # The text attends only to the image, so its update does not see the prompts; it keeps its L tokens.
    assert prompted["lang"]["hidden"].shape == (2, 5, 24)
    torch.testing.assert_close(prompted["lang"]["hidden"], plain["lang"]["hidden"])
    assert prompted["lang"][DEEP_PROMPTS] == prompts[1:]  # the next fusion step gets the next prompt
    # The image attends to the prompts: every level's features change.
    for before, after in zip(plain["visual"], prompted["visual"]):
        assert before.shape == after.shape and not torch.allclose(before, after)
    # A batch of one gives what the batch gives for that image (the prompt is broadcast, not mixed across images).
    with torch.no_grad():
        alone = fuse({"visual": [v[1:] for v in visual],
                      "lang": {"hidden": lang["hidden"][1:], "masks": masks[1:], DEEP_PROMPTS: prompts}})
    for batched, single in zip(prompted["visual"], alone["visual"]):
        torch.testing.assert_close(batched[1:], single, atol=1e-5, rtol=1e-5)


def test_trained_prompts_are_never_served_from_the_tower_cache():
    backend = micro_backend()
    apply_regime(backend, get_regime("deep-prompt"), freeze_conv_body_at=2)
    backend.eval()
    cache = FeatureCache(max_bytes=1 << 26)
    model = backend.model
    assert model._cache_plan(cache, torch.device("cpu"))["tower"] is None  # the prompts train
    backend.model.rpn.deep_prompts.weight.requires_grad_(False)  # evaluation after the fit
    frozen = model._cache_plan(cache, torch.device("cpu"))["tower"]
    with torch.no_grad():
        backend.model.rpn.deep_prompts.weight.add_(1.0)
    assert frozen is not None and model._cache_plan(cache, torch.device("cpu"))["tower"] != frozen


def test_a_saved_deep_prompt_model_reloads_with_the_same_detections():
    source = micro_backend()
    regime = get_regime("deep-prompt")
    apply_regime(source, regime, freeze_conv_body_at=2)
    step(source, regime)
    expected = predict(source)
    loaded = micro_backend()
    loaded.load_state(source.model.state_dict(), source="deep_prompt_model.pth")
    assert loaded.model.rpn.deep_prompts.weight.shape == source.model.rpn.deep_prompts.weight.shape
    for a, b in zip(expected, predict(loaded)):
        assert torch.equal(a.scores, b.scores) and torch.equal(a.boxes, b.boxes)


def test_a_tower_without_fusion_refuses_deep_prompts():
    micro = get_preset("glip-micro")
    config = dataclasses.replace(micro, dyhead=dataclasses.replace(micro.dyhead, early_fuse=False,
                                                                   use_fused_dot_product=False))
    with pytest.raises(UserError, match="no fusion step"):
        apply_regime(micro_backend(config), get_regime("deep-prompt"), freeze_conv_body_at=2)


def test_a_deep_prompt_run_records_its_prompts(tmp_path):
    record = run_micro(tmp_path, "deep-prompt")
    config = get_preset("glip-micro")
    steps = config.dyhead.num_convs  # glip-micro fuses in every block
    assert record["regime"] == "deep-prompt"
    tokens = get_regime("deep-prompt").deep_prompt_tokens
    assert record["params"]["trainable"] == steps * tokens * config.language.lang_dim
    assert "learnable text tokens" in record["protocol_differences"][0]


def test_other_backends_refuse_deep_prompts_in_one_line(tmp_path):
    from hf_models import save_tiny_owlv2

    from odinw_bench.models.hf.owlv2 import Owlv2Backend

    owl = Owlv2Backend.from_pretrained(save_tiny_owlv2(tmp_path / "owl"))
    owl.set_vocabulary(["red square", "blue square"])
    with pytest.raises(UserError, match="'owlv2' does not support deep prompts"):
        apply_regime(owl, get_regime("deep-prompt"), freeze_conv_body_at=2)


def test_a_deep_prompt_runs_best_checkpoint_reevaluates_to_the_same_detections(tmp_path):
    """``--checkpoint <run>/model_best.ckpt`` loads the fine-tuned glip-nano, deep prompts included: evaluated on the
    test split it predicts exactly what the run predicted there."""
    tuned, again = tune_then_reload(tmp_path, "deep-prompt")
    predictions = [json.loads(p.with_name(p.stem + "_predictions.json").read_text()) for p in (tuned, again)]
    assert predictions[0] and predictions[0] == predictions[1]
    assert read_record(again)["metrics"]["AP"] == read_record(tuned)["metrics"]["AP"]
    # Without its deep prompts the model predicts otherwise: the checkpoint did carry them.
    zero = tmp_path / "zero"
    assert main(["run", "--task", "demo_pantry", "--model", "glip-nano", "--data-root", str(tmp_path / "data"),
                 "--no-progress", "--shots", "0", "--split", "test", "--output", str(zero)]) == 0
    (plain,) = [p for p in zero.glob("runs/**/*_predictions.json")]
    assert json.loads(plain.read_text()) != predictions[1]
