"""Grounding DINO and OWLv2 through ``run`` and ``sweep``: records and rows, the regimes, bad models refused early.

The models are tiny random ones saved as ``save_pretrained`` folders (``hf_models.py``) and named ``hf:<folder>``,
the way a fine-tuned or downloaded checkpoint is; the presets (``gdino-t``, ``owlv2-b``, ...) resolve the same way
from the Hugging Face cache, which tests never fill from the network.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hf_models import save_tiny_grounding_dino, save_tiny_owlv2

from odinw_bench.cli import main
from odinw_bench.errors import UserError
from odinw_bench.models.catalog import pretraining_includes_odinw, resolve_model
from odinw_bench.models.hf.owl_queries import query_texts
from odinw_bench.results.records import read_record

FRUIT = ["apple", "banana", "cherry", "lemon"]  # the demo task's categories
FAST = ["data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only spins on a loaded 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"data": root / "data",
            "gdino": save_tiny_grounding_dino(root / "gdino", "grounding-dino", 32),
            "mm": save_tiny_grounding_dino(root / "mm", "mm-grounding-dino", 32),
            "owl": save_tiny_owlv2(root / "owl")}


def _run(out: Path, folders: dict, model: str, *extra: str, shots: str = "1") -> int:
    return main(["run", "--task", "demo", "--shots", shots, "--model", model, "--data-root", str(folders["data"]),
                 "--output", str(out), "--no-progress", *extra, "schedule.max_epochs=1", *FAST])


def _records(out: Path) -> list[dict]:
    return [read_record(p) for p in sorted(out.glob("runs/**/*.json")) if not p.stem.endswith("_predictions")]


RUNS = [*(("gdino", regime) for regime in ("zero-shot", "linear-probe", "prompt", "full")),
        ("owl", "zero-shot"), ("owl", "linear-probe")]


@pytest.mark.parametrize(("model", "regime"), RUNS)
def test_a_hugging_face_run_writes_a_record_and_a_row(tmp_path, folders, model, regime):
    shots = "0" if regime == "zero-shot" else "1"
    assert _run(tmp_path, folders, f"hf:{folders[model]}", "--regime", regime, shots=shots) == 0
    (record,) = _records(tmp_path)
    assert record["status"] == "ok" and record["regime"] == regime
    assert record["model"]["checkpoint"] == str(folders[model]) and len(record["model"]["checkpoint_sha256"]) == 64
    # Grounding DINO reads one caption; OWLv2 one query per category and prompt template (the authors' seven).
    captions = ["apple. banana. cherry. lemon."] if model == "gdino" else query_texts(FRUIT)
    assert record["prompt"]["captions"] == captions
    assert record["config"]["model_config"]["backend"] == {"gdino": "grounding-dino", "owl": "owlv2"}[model]
    trainable = record["params"]["trainable"]
    assert (trainable == 0) == (regime == "zero-shot") and trainable < record["params"]["total"]
    assert record["metrics"]["AP"] is not None
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["run_id"] == record["run_id"] and row["regime"] == regime


def test_the_same_weights_elsewhere_are_the_same_run(tmp_path, folders):
    import shutil

    copy = shutil.copytree(folders["mm"], tmp_path / "copy")
    assert _run(tmp_path / "a", folders, f"hf:{folders['mm']}", "--regime", "linear-probe") == 0
    assert _run(tmp_path / "b", folders, f"hf:{copy}", "--regime", "linear-probe") == 0
    (a,), (b,) = _records(tmp_path / "a"), _records(tmp_path / "b")
    # The model name differs (it is the folder), the weights and the config do not: the same numbers.
    assert a["model"]["checkpoint_sha256"] == b["model"]["checkpoint_sha256"]
    assert a["metrics"] == b["metrics"]


def test_a_sweep_runs_glip_and_grounding_dino_side_by_side(tmp_path, folders):
    models = f"glip-micro,hf:{folders['gdino']}"
    assert main(["sweep", "--tasks", "demo", "--shots", "0", "--models", models, "--data-root",
                 str(folders["data"]), "--output", str(tmp_path), "--workers", "1", "--no-progress",
                 "data.num_workers=0"]) == 0
    assert {r["model"]["name"] for r in _records(tmp_path)} == {"glip-micro", f"hf:{folders['gdino']}"}
    assert main(["report", str(tmp_path / "runs"), "--suite", "demo", "--out", f"{tmp_path}/report/",
                 "--formats", "csv"]) == 0
    with open(tmp_path / "report" / "leaderboard.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # one row per model


def test_bad_models_are_one_line_exit_2_and_nothing_written(tmp_path, folders, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = [(f"hf:{bert}", "model_type 'bert'"), (f"hf:{tmp_path / 'nowhere'}", "config.json"),
             ("gdino-tt", "did you mean 'gdino-t'"), ("hf:", "hf: needs")]
    for model, message in cases:
        assert _run(tmp_path / "out", folders, model, "--regime", "linear-probe") == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    # A --checkpoint folder that is not a model the preset's backend runs is refused too, before any download.
    assert _run(tmp_path / "out", folders, "gdino-t", "--checkpoint", str(bert)) == 2
    assert "model_type 'bert'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_names_resolve_without_weights():
    assert resolve_model("gdino-t").source == "IDEA-Research/grounding-dino-tiny"
    assert resolve_model("llmdet-t").backend == "grounding-dino" and resolve_model("GLIP_T").backend == "glip"
    assert resolve_model("owlv2-b").source == "google/owlv2-base-patch16-ensemble"
    assert not pretraining_includes_odinw("owlv2-l")
    assert pretraining_includes_odinw("gdino-b") and not pretraining_includes_odinw("gdino-t")
    with pytest.raises(UserError, match="unknown model"):
        resolve_model("owl")


def test_a_hub_id_runs_offline_from_the_hugging_face_cache(tmp_path, folders, monkeypatch):
    """A hub id resolves through the Hugging Face cache (the layout the hub client writes), with no network."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-gdino"
    shutil.copytree(folders["gdino"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _run(tmp_path / "out", folders, "hf:tiny-org/tiny-gdino", "--regime", "zero-shot", shots="0") == 0
    (record,) = _records(tmp_path / "out")
    assert record["model"]["checkpoint"] == str(repo / "snapshots" / revision)
    # Not in the cache and offline: one line naming the model, exit 2, nothing written.
    assert _run(tmp_path / "none", folders, "hf:tiny-org/absent", "--regime", "zero-shot", shots="0") == 2
    assert not (tmp_path / "none").exists()


def test_a_preset_takes_a_fine_tuned_folder_as_its_checkpoint(tmp_path, folders):
    """--checkpoint replaces a preset's hub weights with a save_pretrained folder; the preset's settings stay."""
    assert _run(tmp_path, folders, "gdino-t", "--checkpoint", str(folders["gdino"]), "--regime", "zero-shot",
                shots="0") == 0
    (record,) = _records(tmp_path)
    assert record["model"]["name"] == "gdino-t" and record["model"]["checkpoint"] == str(folders["gdino"])
    assert record["config"]["model_config"]["preset"]["hub_id"] == "IDEA-Research/grounding-dino-tiny"
    assert record["config"]["model_config"]["preset"]["shortest_edge"] == 800  # the authors' test size
