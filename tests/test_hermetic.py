"""Tests do not read or write the user's home: data a user generated before cannot change their outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import HERMETIC_ENV, REPO_ROOT

from odinw_bench import paths
from odinw_bench.data.synthetic import ensure_demo_data
from odinw_bench.tasks import registry
from odinw_bench.tasks.registry import load_task, resolve_data_root


def test_home_caches_and_data_root_point_into_the_session_folder(_hermetic_home):
    assert Path.home() == _hermetic_home
    assert paths.cache_dir().is_relative_to(_hermetic_home)
    assert resolve_data_root(load_task("demo")).is_relative_to(_hermetic_home)
    assert resolve_data_root(load_task("aquarium")).is_relative_to(_hermetic_home)
    assert not resolve_data_root(load_task("aquarium")).exists()


def test_a_filled_user_cache_changes_no_test_outcome(tmp_path):
    """What ``make demo`` leaves behind (demo data in ``~/.cache/odinw_bench``) and an ODinW folder in the working
    directory: the suite that lists data must pass unchanged with both present."""
    user_home = tmp_path / "user"
    ensure_demo_data(user_home / ".cache" / "odinw_bench" / "data")
    env = {k: v for k, v in os.environ.items() if k not in HERMETIC_ENV and k != registry.DATA_ROOT_ENV}
    env.update(HOME=str(user_home), PYTEST_ADDOPTS="")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "tests/test_cli_tasks.py"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in result.stdout
    # The run did not write into the user's home either.
    assert sorted(p.name for p in user_home.iterdir()) == [".cache"]
    assert sorted(p.name for p in (user_home / ".cache").iterdir()) == ["odinw_bench"]
