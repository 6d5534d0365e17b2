"""Where odinw_bench's own files and its cache are: one definition for every package.

- :data:`REPO_DIR`: the checkout, which holds ``tasks/`` (task YAMLs) and ``configs/`` (recipes); the Makefile
  installs the package in editable mode, so they are found beside it.
- :data:`RESOURCES_DIR`: data files shipped inside the package (published numbers).
- :func:`cache_dir`: ``$ODINW_BENCH_CACHE`` or ``~/.cache/odinw_bench`` (generated demo data, converted checkpoints).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
CACHE_ENV = "ODINW_BENCH_CACHE"


def cache_dir() -> Path:
    """odinw_bench's cache: ``$ODINW_BENCH_CACHE`` or ``~/.cache/odinw_bench``, read at each call."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "odinw_bench"
