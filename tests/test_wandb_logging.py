"""W&B never fails a run: start-up and logging errors become warnings."""

from __future__ import annotations

import pytest

from odinw_bench.training import wandb_logging


def test_off_creates_nothing(tmp_path):
    assert wandb_logging.make_wandb_logger("off", save_dir=tmp_path, group="g", name="n", tags=[], config={}) is None
    assert not any(tmp_path.iterdir())


def test_unknown_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="offline"):
        wandb_logging.make_wandb_logger("maybe", save_dir=tmp_path, group="g", name="n", tags=[], config={})


def test_start_failure_is_a_warning(tmp_path, monkeypatch):
    import pytorch_lightning.loggers as loggers

    class Broken:
        def __init__(self, *args, **kwargs):
            raise ConnectionError("no network")

    monkeypatch.setattr(loggers, "WandbLogger", Broken)
    with pytest.warns(RuntimeWarning, match="no network"):
        assert wandb_logging.make_wandb_logger("online", save_dir=tmp_path, group="g", name="n", tags=[],
                                               config={}) is None


def test_final_logging_failure_is_a_warning():
    class BrokenLogger:
        @property
        def experiment(self):
            raise RuntimeError("server said no")

    with pytest.warns(RuntimeWarning, match="server said no"):
        wandb_logging.log_final(BrokenLogger(), {"test/AP": 0.5}, {"fish": 0.5})
    wandb_logging.log_final(None, {"test/AP": 0.5}, {})  # no logger: nothing happens
