"""Hostile and malformed input gives one clear line and exit code 2, runs no code and writes nothing it should not.

Covers: a ``last.ckpt`` whose pickle would run code on ``--resume``; a task YAML whose ``download`` name is a path;
empty, truncated and misshapen ``.pth`` checkpoints; argparse refusals (``--shots -1``, ``--seed x``, ...).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from odinw_bench.cli import main
from odinw_bench.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2", "schedule.max_epochs=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _error_line(capsys) -> str:
    """The one line on stderr (fails if there are more, e.g. argparse's usage block or a traceback)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def _written_json(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.json")) if folder.exists() else []


# ----------------------------------------------------------------------------------- item 6: resume unpickles no code


class _CreatesMarker:
    """Unpickling this object calls ``open(marker, "w")``: the file appears only if the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _run_argv(out: Path, data_root: str, *extra: str) -> list[str]:
    return ["run", "--task", "demo", "--shots", "1", "--model", "glip-micro", "--regime", "linear-probe",
            "--data-root", data_root, "--output", str(out), "--no-progress", *extra, *FAST]


def test_resume_never_runs_code_from_last_ckpt(tmp_path, data_root, capsys, monkeypatch):
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.identity import run_identity
    from odinw_bench.runs.request import requests_from_args

    argv = _run_argv(tmp_path / "out", data_root, "--resume")
    (request,) = requests_from_args(parse_run_args(argv[1:]))
    last = tmp_path / "out" / "checkpoints" / run_identity(request).run_id / "last.ckpt"
    last.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _CreatesMarker(marker)}, last)
    # The variable that makes torch.load unpickle anything whose caller leaves weights_only unset.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    assert main(argv) == 2
    line = _error_line(capsys)
    assert not marker.exists(), "resuming ran code from the checkpoint"
    assert str(last) in line and "open, and loading that would run code" in line
    # Refused before the run could write anything: no record, no row.
    assert _written_json(tmp_path / "out" / "runs") == []
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


def test_rng_state_of_a_checkpoint_loads_with_weights_only(tmp_path):
    """The callback state saved in every ``last.ckpt`` must load under weights_only, or no run could resume."""
    import random

    import numpy as np

    from odinw_bench.training.callbacks import RngStateCheckpoint

    callback = RngStateCheckpoint()
    state = callback.state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    torch.save({"callbacks": {"RngStateCheckpoint": state}}, tmp_path / "rng.ckpt")
    loaded = torch.load(tmp_path / "rng.ckpt", weights_only=True)["callbacks"]["RngStateCheckpoint"]
    callback.load_state_dict(loaded)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


# ------------------------------------------------------------------------ item 7: a task's download name is no path


def _task_yaml(folder: Path, download: str) -> Path:
    """A copy of the Aquarium task under another name, with ``download`` replaced."""
    spec = yaml.safe_load((REPO_ROOT / "tasks" / "aquarium.yaml").read_text(encoding="utf-8"))
    spec.update(name="hostile", download=download)
    path = folder / "tasks" / "hostile.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.mark.parametrize("download", ["./../escaped", "../escaped", "/odinw_bench_escaped", "sub/escaped",
                                      "Aquarium.zip", ".."])
def test_download_name_that_is_a_path_is_refused_at_load(tmp_path, capsys, download):
    download = download.replace("escaped", f"escaped_{uuid.uuid4().hex[:8]}")
    task = _task_yaml(tmp_path, download)
    root = tmp_path / "data" / "odinw"
    # A closed local port: a download attempt fails fast and never reaches the network.
    argv = ["download", "--task", str(task), "--data-root", str(root), "--keep-zip", "--base-url", "http://127.0.0.1:9"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert str(task) in line and "field 'download'" in line
    escaped = [p for p in tmp_path.rglob("*escaped*")] + list(Path("/").glob("odinw_bench_escaped*"))
    assert escaped == []
    assert not root.exists() or list(root.iterdir()) == []


def test_real_download_names_are_accepted():
    from odinw_bench.tasks.registry import list_task_names, load_task

    names = {load_task(name).download for name in list_task_names()} - {""}
    assert "Aquarium" in names and len(names) > 20


@pytest.mark.parametrize("download", ["../escaped", "/odinw_bench_escaped", "./../escaped", "a/../../escaped"])
def test_download_never_writes_outside_the_data_root(tmp_path, download):
    """A task built in code skips the YAML check: the downloader itself keeps every file in the data root."""
    from odinw_bench.data.download import download_tasks
    from odinw_bench.tasks.registry import load_task

    download = download.replace("escaped", f"escaped_{uuid.uuid4().hex[:8]}")
    task = dataclasses.replace(load_task("aquarium"), download=download)
    root = tmp_path / "data" / "odinw"
    with pytest.raises(UserError, match="not a file name inside the data root") as info:
        download_tasks([task], root, base_url="http://127.0.0.1:9", keep_zip=True, progress=False)
    assert info.value.field == "download"
    escaped = [p for p in tmp_path.rglob("*escaped*")] + list(Path("/").glob("odinw_bench_escaped*"))
    assert escaped == []


# ----------------------------------------------------------------------------- item 8: unreadable checkpoints


def _micro_state() -> dict[str, torch.Tensor]:
    from odinw_bench.models.glip.backend import GLIPBackend

    torch.manual_seed(0)
    return {k: v.clone() for k, v in GLIPBackend.from_preset("glip-micro").model.state_dict().items()}


def _zero_shot_with(checkpoint: Path, out: Path, data_root: str) -> list[str]:
    return ["run", "--task", "demo", "--shots", "0", "--model", "glip-micro", "--checkpoint", str(checkpoint),
            "--data-root", data_root, "--output", str(out), "--no-progress"]


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated_small_zip(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(100, 100)}}, path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(OSError):  # the case this covers: torch's zip reader fails with an OSError, not RuntimeError
        torch.load(path, weights_only=True, mmap=True)


def _truncated_in_half(path: Path) -> None:
    torch.save({"model": _micro_state()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("make", [_empty, _truncated_small_zip, _truncated_in_half])
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, data_root, capsys, make):
    checkpoint = tmp_path / "weights.pth"
    make(checkpoint)
    out = tmp_path / "out"
    assert main(_zero_shot_with(checkpoint, out, data_root)) == 2
    line = _error_line(capsys)
    assert str(checkpoint) in line and "cannot read checkpoint" in line
    assert _written_json(out) == []  # refused before the run started: no failed record


def test_checkpoint_of_wrong_shapes_names_the_file_the_key_and_both_shapes(tmp_path, data_root, capsys):
    state = _micro_state()
    key = "rpn.head.bbox_pred.weight"
    model_shape = tuple(state[key].shape)
    state[key] = torch.zeros(model_shape[0] + 1, *model_shape[1:])
    checkpoint = tmp_path / "misshapen.pth"
    torch.save({"model": state}, checkpoint)
    out = tmp_path / "out"
    assert main(_zero_shot_with(checkpoint, out, data_root)) == 2
    line = _error_line(capsys)
    assert str(checkpoint) in line
    assert f"{key} checkpoint {tuple(state[key].shape)} vs model {model_shape}" in line
    assert _written_json(out) == []


# ------------------------------------------------------------------------------- item 8: argparse refusals


@pytest.mark.parametrize(("args", "expected"), [
    (["--shots", "-1"], "argument --shots"),
    (["--shots", "abc"], "'abc'"),
    (["--seed", "x"], "argument --seed"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_run_arguments_are_one_line_with_a_pointer_to_help(capsys, args, expected):
    assert main(["run", "--task", "demo", *args]) == 2
    line = _error_line(capsys)
    assert expected in line and line.endswith("(see: python -m odinw_bench run --help)")


def test_every_command_and_the_top_level_refuse_in_one_line(capsys):
    assert main(["download"]) == 2  # neither --suite nor --task
    assert _error_line(capsys).endswith("(see: python -m odinw_bench download --help)")
    assert main(["no-such-command"]) == 2
    assert _error_line(capsys).endswith("(see: python -m odinw_bench --help)")


def test_sweep_cells_refuse_bad_arguments_as_a_user_error():
    """A sweep worker parses its cell with the same rules; a refusal is a UserError it records, not an exit."""
    from odinw_bench.runs.arguments import parse_run_args

    with pytest.raises(UserError, match=r"argument --seed: invalid int value: 'x' \(see: python -m odinw_bench run"):
        parse_run_args(["--task", "demo", "--seed", "x"])


def test_argparse_refusal_as_a_process_is_one_stderr_line():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "odinw_bench", "run", "--task", "demo", "--seed", "x"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: argument --seed: invalid int value: 'x' (see: python -m odinw_bench run --help)"]
