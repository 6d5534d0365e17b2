"""Hostile and malformed input gives one clear line and exit code 2, runs no code and writes nothing it should not.

Covers: a ``last.ckpt`` whose pickle would run code on ``--resume``; a task YAML whose ``download`` name is a path;
empty, truncated and misshapen ``.pth`` checkpoints; argparse refusals (``--shots -1``, ``--seed x``, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
