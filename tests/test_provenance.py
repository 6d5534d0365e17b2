"""Provenance of a run: git state of a checkout, library versions without heavy imports, UTC timestamps."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from importlib import metadata

import pytest

from odinw_bench.results import provenance


def test_collect_git_none_outside_a_repository(tmp_path):
    assert provenance.collect_git(tmp_path) is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_collect_git_reports_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "init")
    clean = provenance.collect_git(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean["commit"]) and clean["dirty"] is False
    (tmp_path / "a.txt").write_text("changed")
    assert provenance.collect_git(tmp_path) == {"commit": clean["commit"], "dirty": True}


def test_collect_env_reads_versions_from_package_metadata():
    env = provenance.collect_env()
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["torch"] == metadata.version("torch")
    assert env["lightning"] == metadata.version("pytorch-lightning")
    assert set(env) == {"python", "torch", "torchvision", "transformers", "lightning", "pycocotools",
                        "odinw_bench", "cuda", "gpu_name"}  # fmt: skip


def test_collect_env_imports_no_heavy_package():
    # Recording a run that never touched torch must not pay for importing it (nor report CUDA it did not use).
    code = (
        "import sys; from odinw_bench.results import provenance, records; env = provenance.collect_env();"
        "heavy = [m for m in ('torch', 'transformers', 'pycocotools', 'pandas') if m in sys.modules];"
        "print(heavy, env['cuda'], env['gpu_name'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] None None"


def test_utc_now_is_iso_utc_with_whole_seconds():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = provenance.utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", stamp)
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= datetime.now(timezone.utc)
