"""Run records: schema validation, run ids and atomic writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from odinw_bench.errors import UserError
from odinw_bench.results import records, schema

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_test_record(task="aquarium", seed=3, ap=0.42, run_id=None, **changes) -> dict:
    """A valid schema-1 record built by hand (no git/env probing, so it is cheap to make many)."""
    record = {
        "schema_version": 1,
        "run_id": run_id or records.make_run_id(task, 1, "glip_tiny", "ab" * 32, "prompt", 1, seed, {}),
        "created_at": "2025-01-31T12:00:00+00:00",
        "duration_s": 12.5,
        "status": "ok",
        "error": None,
        "task": {"name": task, "version": 1, "sha256": "cd" * 32, "display_name": task.title()},
        "split": "test",
        "prompt": {"variant": "default", "captions": ["fish. jellyfish. penguin"]},
        "shots": 1,
        "seed": seed,
        "regime": "prompt",
        "sample": {
            "sampler": "glip",
            "train_ids": [3, 7, 11, 12],
            "train_ids_hash": "0123456789abcdef",
            "train_count": 4,
            "val_ids": None,
            "val_ids_hash": None,
            "val_count": None,
            "shortfall": {"penguin": 0},
        },
        "model": {"name": "glip_tiny", "checkpoint": "/ckpt/glip_tiny.pth", "checkpoint_sha256": "ab" * 32},
        "config": {"optim": {"lr": 0.05}, "max_epochs": 200},
        "metrics": {"AP": ap, "AP50": 0.6, "APs": None, "AP-fish": 0.5, schema.SELECT_VAL_AP: 0.4},
        "params": {"trainable": 1024, "total": 231_000_000},
        "git": {"commit": "f" * 40, "dirty": False},
        "env": {"python": "3.11.7", "torch": "2.14.1"},
        "timings": {"fit_s": 10.0, "eval_s": 2.5},
    }
    record.update(changes)
    return record


def _make_kwargs() -> dict:
    rec = make_test_record()
    keys = ("run_id", "task", "split", "prompt", "shots", "seed", "regime", "sample", "model", "config", "params")
    return {k: rec[k] for k in keys}


# ---- round trip ----


def test_make_write_read_round_trip(tmp_path):
    record = records.make_record(
        **_make_kwargs(), metrics={"AP": 0.5, "APl": float("nan")}, duration_s=3.0, timings={"fit_s": 2.0}
    )
    assert record["schema_version"] == schema.SCHEMA_VERSION
    assert record["status"] == "ok" and record["error"] is None
    assert record["metrics"]["APl"] is None  # NaN is stored as null: strict JSON
    assert record["env"]["torch"] == metadata.version("torch")
    assert set(record["env"]) >= {"python", "torch", "torchvision", "transformers", "lightning", "pycocotools",
                                  "odinw_bench", "cuda", "gpu_name"}  # fmt: skip
    if (REPO_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"])
        assert isinstance(record["git"]["dirty"], bool)

    path = records.record_path(tmp_path, record)
    run_id = record["run_id"]
    assert path == tmp_path / "runs" / "aquarium" / "glip_tiny" / "prompt" / f"k1_s3_{run_id}.json"
    records.write_record(path, record)
    json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert "NaN" not in path.read_text()
    assert records.read_record(path) == json.loads(json.dumps(record))


def test_failed_record_requires_error_and_keeps_it(tmp_path):
    record = records.make_record(**_make_kwargs(), error="CUDA out of memory")
    assert record["status"] == "failed"
    path = records.write_record(tmp_path / "r.json", record)
    assert records.read_record(path)["error"] == "CUDA out of memory"
    with pytest.raises(UserError, match="error"):
        schema.validate_record({**record, "error": None})


def test_record_path_sanitises_hub_style_model_names(tmp_path):
    record = make_test_record(model={"name": "org/glip-t (a)", "checkpoint": None, "checkpoint_sha256": None},
                              shots="all")  # fmt: skip
    path = records.record_path(tmp_path, record)
    assert path.parent.parent.name == "org_glip-t_a_"
    assert path.name.startswith("kall_s3_")


# ---- validation names the field ----


_DELETE = object()


def _set(record: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        record = record[key]
    if value is _DELETE:
        del record[last]
    else:
        record[last] = value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", "3", "expected integer"),
        ("seed", True, "expected integer"),
        ("shots", -1, ">= 0"),
        ("shots", "five", "expected integer or 'all'"),
        ("status", "done", "'ok' or 'failed'"),
        ("task.version", _DELETE, "missing field"),
        ("task.name", 7, "expected string"),
        ("model", None, "expected an object"),
        ("prompt.captions", "fish", "expected a list, got str 'fish'"),
        ("sample.train_count", 1.5, "expected integer"),
        ("sample.train_ids", [3, "7"], "expected integer, got str '7'"),
        ("metrics.AP", 42.0, "fractions, not percentages"),
        ("metrics.AP50", "high", "expected number"),
        ("metrics.AP", None, "numeric AP"),
        ("git.dirty", "no", "expected boolean"),
        ("timings.fit_s", None, "expected number"),
        ("duration_s", float("nan"), "expected finite number"),
        ("config", [], "expected an object"),
        ("schema_version", 0, "unsupported schema_version"),
    ],
)
def test_validation_errors_name_the_field(field, value, message):
    record = make_test_record()
    _set(record, field, value)
    with pytest.raises(UserError) as info:
        schema.validate_record(record, path="runs/x.json")
    # A list item is named with its index: sample.train_ids[1].
    assert info.value.field == (field + "[1]" if isinstance(value, list) and value else field)
    assert info.value.path == "runs/x.json"
    assert message in str(info.value)


def test_git_may_be_null_and_unknown_keys_are_allowed():
    record = make_test_record(git=None)
    record["extra_optional_field"] = {"anything": 1}
    assert schema.validate_record(record) is record


def test_read_record_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,\n "run_id": }')
    with pytest.raises(UserError, match=r"bad\.json.*line 2, column 12"):
        records.read_record(bad)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(make_test_record(schema_version=99)))
    with pytest.raises(UserError, match="newer") as info:
        records.read_record(newer)
    assert info.value.field == "schema_version" and info.value.path == str(newer)
    with pytest.raises(UserError, match="not found"):
        records.read_record(tmp_path / "absent.json")


def test_iter_records_walks_folders_and_skips_prediction_files(tmp_path):
    a = records.write_record(tmp_path / "runs" / "a" / "k1_s3_x.json", make_test_record(seed=3))
    b = records.write_record(tmp_path / "runs" / "b" / "k1_s30_y.json", make_test_record(seed=30))
    (tmp_path / "runs" / "a" / "k1_s3_x_predictions.json").write_text("[]")
    found = list(records.iter_records([tmp_path / "runs"]))
    assert [p for p, _ in found] == [a, b]
    assert [r["seed"] for _, r in found] == [3, 30]
    assert [p for p, _ in records.iter_records([b])] == [b]
    with pytest.raises(UserError, match="no such results"):
        list(records.iter_records([tmp_path / "nope"]))


# ---- run ids ----

_ID_ARGS = ("aquarium", 1, "glip_tiny", "ab" * 32, "prompt", 1, 3, {"lr": 0.05, "epochs": 200})


def test_run_id_is_stable_short_and_ignores_dict_order():
    run_id = records.make_run_id(*_ID_ARGS)
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)
    assert records.make_run_id(*_ID_ARGS) == run_id
    reordered = (*_ID_ARGS[:-1], {"epochs": 200, "lr": 0.05})
    assert records.make_run_id(*reordered) == run_id


def test_run_id_is_the_same_in_another_process():
    code = (
        "from odinw_bench.results.records import make_run_id;"
        f"print(make_run_id(*{_ID_ARGS!r}))"
    )  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different str-hash seed must not matter
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == records.make_run_id(*_ID_ARGS)


@pytest.mark.parametrize(
    ("index", "other"),
    [(0, "pothole"), (1, 2), (2, "glip_large"), (3, None), (4, "full"), (5, 3), (6, 30),
     (7, {"lr": 0.01, "epochs": 200})],  # fmt: skip
)
def test_run_id_changes_with_each_input(index, other):
    args = list(_ID_ARGS)
    args[index] = other
    assert records.make_run_id(*args) != records.make_run_id(*_ID_ARGS)


# ---- atomic writes ----


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def exploding_default(value):
        raise RuntimeError("serialiser failed midway")

    monkeypatch.setattr(records, "_json_default", exploding_default)
    record = make_test_record(config={"lr": 0.05, "out_dir": Path("/somewhere")})  # the Path reaches the default
    path = tmp_path / "runs" / "k1_s3_x.json"
    with pytest.raises(RuntimeError, match="midway"):
        records.write_record(path, record)
    assert list(path.parent.iterdir()) == []  # neither the record nor a temp file


def test_failed_overwrite_keeps_the_previous_file(tmp_path, monkeypatch):
    path = records.write_record(tmp_path / "r.json", make_test_record(ap=0.1))
    before = path.read_bytes()
    monkeypatch.setattr(records, "_json_default", lambda v: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        records.write_record(path, make_test_record(ap=0.9, config={"p": Path("/x")}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_invalid_record_is_not_written(tmp_path):
    with pytest.raises(UserError, match="seed"):
        records.write_record(tmp_path / "r.json", make_test_record(seed="x", run_id="r1"))
    assert not (tmp_path / "r.json").exists()
