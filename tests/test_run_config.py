"""The run config: GLIP's ODinW recipe as defaults, dotlist overrides, errors that name the key, regime rules."""

from __future__ import annotations

import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from odinw_bench.errors import UserError
from odinw_bench.training.run_config import (
    RunConfig,
    default_config_path,
    glip_dataset_copies,
    load_run_config,
    resolve_precision,
    trainer_kwargs,
)


def test_recipe_file_matches_the_schema_defaults_and_the_design_numbers():
    config = load_run_config()
    assert config == RunConfig()  # the YAML and the dataclass defaults cannot drift apart
    # design.md "Protocol defaults": AdamW lr 1e-4 (BERT 1e-5), wd 0.05, bias x2 / wd 0, clip 1.0, batch 4,
    # 200 epochs, plateau x0.1 patience 3 (2 full) min 1e-6, early stop 8 (4), Swin stem + stage 1 frozen.
    assert (config.optim.lr, config.optim.language_lr, config.optim.weight_decay) == (1e-4, 1e-5, 0.05)
    assert (config.optim.bias_lr_factor, config.optim.weight_decay_bias, config.optim.grad_clip_norm) == (2, 0, 1)
    schedule = config.schedule
    assert (schedule.max_epochs, schedule.plateau_factor, schedule.min_lr) == (200, 0.1, 1e-6)
    assert (schedule.plateau_patience, schedule.plateau_patience_full) == (3, 2)
    assert (schedule.early_stop_patience, schedule.early_stop_patience_full) == (8, 4)
    assert config.data.batch_size == 4 and config.data.dataset_copies is None
    assert config.model.freeze_conv_body_at == 2
    assert config.wandb.mode == "off" and config.trainer.precision == "auto"
    assert config.explicit_keys == []


def test_every_recipe_value_carries_a_comment():
    for line in default_config_path().read_text().splitlines():
        if re.match(r"^\s+\w+:\s*\S", line):  # a key with a value inside a section
            assert "#" in line, line


def test_overrides_are_typed_and_recorded_as_explicit():
    config = load_run_config(overrides=["optim.lr=2e-4", "data.batch_size=2", "trainer.precision=32",
                                        "data.dataset_copies=3", "wandb.entity=null", "wandb.mode=off"])
    assert config.optim.lr == pytest.approx(2e-4) and isinstance(config.optim.lr, float)
    assert config.data.batch_size == 2 and config.data.dataset_copies == 3
    assert config.trainer.precision == "32"
    assert config.wandb.mode == "off"  # YAML reads a bare off as false; it still means "off"
    assert config.explicit_keys == ["data.batch_size", "data.dataset_copies", "optim.lr", "trainer.precision",
                                    "wandb.entity", "wandb.mode"]
    assert load_run_config(overrides=["trainer.limit_train_batches=5"]).trainer.limit_train_batches == 5
    assert load_run_config(overrides=["trainer.limit_train_batches=0.25"]).trainer.limit_train_batches == 0.25


@pytest.mark.parametrize(("override", "field", "message"), [
    ("optim.lrr=1", "optim.lrr", "did you mean 'lr'"),
    ("optimizer.lr=1", "optimizer", "unknown key"),
    ("optim.lr=fast", "optim.lr", "could not be converted"),
    ("schedule.max_epochs=1.5", "schedule.max_epochs", "could not be converted"),
    ("optim.lr", "optim.lr", "expected key=value"),
    ("=3", None, "expected key=value"),
    ("optim=3", "optim", "expected a section"),
    ("optim.lr=-1", "optim.lr", "> 0"),
    ("optim.lr=nan", "optim.lr", "finite"),
    ("schedule.plateau_factor=1.5", "schedule.plateau_factor", "(0, 1)"),
    ("data.sampler=random", "data.sampler", "auto, glip, prepared"),
    ("wandb.mode=loud", "wandb.mode", "off, offline, online"),
    ("trainer.precision=8", "trainer.precision", "expected one of"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches", "fraction"),
    ("data.dataset_copies=0", "data.dataset_copies", ">= 1"),
    ("data.batch_size=null", "data.batch_size", "null"),
])
def test_bad_overrides_are_user_errors_naming_the_key(override, field, message):
    with pytest.raises(UserError) as info:
        load_run_config(overrides=[override])
    assert message in str(info.value)
    if field is not None:
        assert info.value.field == field
    assert info.value.path is None  # the command line, not a file, is to blame
    assert "command-line" in str(info.value) or "key=value" in str(info.value)


def test_file_errors_name_the_file_and_the_key(tmp_path):
    bad_key = tmp_path / "mine.yaml"
    bad_key.write_text("schedule:\n  plateau_factr: 0.2\n")
    with pytest.raises(UserError, match="did you mean 'plateau_factor'") as info:
        load_run_config(bad_key)
    assert info.value.path == str(bad_key) and info.value.field == "schedule.plateau_factr"

    bad_range = tmp_path / "range.yaml"
    bad_range.write_text("data:\n  num_workers: -1\n")
    with pytest.raises(UserError, match=">= 0") as info:
        load_run_config(bad_range)
    assert info.value.path == str(bad_range) and info.value.field == "data.num_workers"

    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML at line") as info:
        load_run_config(broken)
    assert info.value.path == str(broken)

    with pytest.raises(UserError, match="cannot read"):
        load_run_config(tmp_path / "missing.yaml")
    top_level_list = tmp_path / "list.yaml"
    top_level_list.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_run_config(top_level_list)


def test_user_file_then_overrides(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("optim:\n  lr: 1.0e-4\n  weight_decay: 0.1\ndata:\n  batch_size: 8\n")
    config = load_run_config(mine, ["data.batch_size=2"])
    assert config.optim.weight_decay == 0.1 and config.data.batch_size == 2
    # lr restates the recipe: not an explicit choice, so a regime may still set it.
    assert config.explicit_keys == ["data.batch_size", "optim.weight_decay"]
    resolved = config.resolved_for("prompt", 3)
    assert resolved["optim"]["lr"] == 0.05 and resolved["optim"]["weight_decay"] == 0.1


@pytest.mark.parametrize(("regime", "lr", "wd"), [("prompt", 0.05, 0.25), ("full", 1e-4, 0.05),
                                                  ("linear-probe", 1e-4, 0.05), ("zero_shot", 1e-4, 0.05)])
def test_regime_sets_lr_and_weight_decay(regime, lr, wd):
    resolved = load_run_config().resolved_for(regime, 5)
    assert (resolved["optim"]["lr"], resolved["optim"]["weight_decay"]) == (lr, wd)
    assert resolved["regime"] == regime.replace("_", "-")


def test_explicit_values_beat_the_regime():
    resolved = load_run_config(overrides=["optim.lr=0.01"]).resolved_for("prompt", 1)
    assert resolved["optim"]["lr"] == 0.01 and resolved["optim"]["weight_decay"] == 0.25
    resolved = load_run_config(overrides=["optim.weight_decay=0.05"]).resolved_for("prompt", 1)
    assert resolved["optim"]["lr"] == 0.05 and resolved["optim"]["weight_decay"] == 0.05


def test_full_data_uses_the_full_patience_values():
    config = load_run_config()
    few, full = config.resolved_for("full", 10), config.resolved_for("full", "all")
    assert (few["schedule"]["plateau_patience"], few["schedule"]["early_stop_patience"]) == (3, 8)
    assert (full["schedule"]["plateau_patience"], full["schedule"]["early_stop_patience"]) == (2, 4)
    for resolved in (few, full):  # one value per setting in what a run records
        assert not any(key.endswith("_full") for key in resolved["schedule"])
    assert full["shots"] == "all" and config.resolved_for("full", "5")["shots"] == 5
    with pytest.raises(UserError, match="shots"):
        config.resolved_for("full", "many")


def test_dataset_copies_follow_glip_and_can_be_set():
    # README: 1_200_8, 3_200_4, 5_200_2, 10_200_1 and 0_200_1 for full data.
    assert [glip_dataset_copies(k) for k in (1, 3, 5, 10, "all")] == [8, 4, 2, 1, 1]
    assert [glip_dataset_copies(k) for k in (2, 4, 7, 30, 0)] == [1, 1, 1, 1, 1]  # no GLIP rule: no repeats
    config = load_run_config()
    assert config.resolved_for("full", 1)["data"]["dataset_copies"] == 8
    assert load_run_config(overrides=["data.dataset_copies=3"]).resolved_for("full", 1)["data"]["dataset_copies"] == 3


def test_to_dict_round_trips_through_the_schema():
    config = load_run_config(overrides=["optim.lr=3e-4", "trainer.limit_train_batches=2"])
    data = config.to_dict()
    assert data["optim"]["lr"] == 3e-4 and set(data) == {f.name for f in dataclasses.fields(RunConfig)}
    again = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), data))
    assert again == config


def test_trainer_kwargs_resolve_precision_and_clipping():
    resolved = load_run_config(overrides=["trainer.accelerator=cpu"]).resolved_for("full", 1)
    kwargs = trainer_kwargs(resolved)
    assert kwargs["precision"] == "32-true"  # no AMP on the CPU
    assert kwargs["gradient_clip_val"] == 1.0 and kwargs["gradient_clip_algorithm"] == "norm"
    assert kwargs["max_epochs"] == 200 and "limit_train_batches" not in kwargs
    resolved = load_run_config(overrides=["optim.grad_clip_norm=0", "trainer.precision=16-mixed",
                                          "trainer.limit_train_batches=3"]).resolved_for("full", 1)
    kwargs = trainer_kwargs(resolved)
    assert kwargs["gradient_clip_val"] is None and kwargs["precision"] == "16-mixed"
    assert kwargs["limit_train_batches"] == 3
    assert resolve_precision("auto", "cpu") == "32-true" and resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
