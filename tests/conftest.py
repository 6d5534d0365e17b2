"""Shared pytest fixtures.

Tests are hermetic: ``_hermetic_home`` (autouse, once per session) points ``HOME``, odinw_bench's cache, the
default ODinW data root and every other cache the libraries read at a temporary folder, so nothing a user ran
before (``make demo`` fills ``~/.cache/odinw_bench``) changes a test's outcome, and no test writes into the home.

``glip_reference`` is the one way tests read the golden outputs of the official GLIP code in
``../shared/glip_reference`` (or ``$ODINW_GLIP_REFERENCE``). The folder is read in place, never copied into
the repo; where it is absent the tests that need it skip with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """One intra-op thread per xdist worker: ``-n 2`` on 2 cores with 2 torch threads each oversubscribes the CPU,
    and spinning OpenMP threads then slow every test by an order of magnitude. Subprocesses inherit the setting."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


#: Environment variables pointed into the session's temporary home (beside HOME itself), relative to it.
HERMETIC_ENV = {
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "ODINW_BENCH_CACHE": ".cache/odinw_bench",
    "ODINW_ROOT": "no_odinw_data",  # an absent data root: real-data tests make their own
    "HF_HOME": ".cache/huggingface",
    "TORCH_HOME": ".cache/torch",
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": ".cache/wandb",
    "WANDB_CONFIG_DIR": ".config/wandb",
    "MPLCONFIGDIR": ".config/matplotlib",
}


@pytest.fixture(scope="session", autouse=True)
def _hermetic_home(tmp_path_factory) -> Path:
    """A temporary home for the whole session: HOME, the caches and the default data root all point into it."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        for name, relative in HERMETIC_ENV.items():
            patch.setenv(name, str(home / relative))
        patch.delenv("ODINW_BENCH_TASKS", raising=False)  # the repo's own task YAMLs
        yield home


def _reference_dir() -> Path:
    env = os.environ.get("ODINW_GLIP_REFERENCE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "glip_reference"


@dataclass
class GlipReference:
    """Lazy access to the golden files (tensors are loaded on first use)."""

    root: Path

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.root / "meta.json").read_text())

    @cached_property
    def inputs(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.root / "inputs.safetensors"))

    @cached_property
    def outputs(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.root / "outputs.safetensors"))

    @cached_property
    def state_dict(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.root / "state_dict.safetensors"))

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def json(self, name: str) -> dict:
        return json.loads((self.root / name).read_text())


@pytest.fixture(scope="session")
def glip_reference() -> GlipReference:
    """Golden outputs of the official GLIP code; skips with a clear reason when the folder is absent."""
    root = _reference_dir()
    if not (root / "meta.json").is_file():
        pytest.skip(
            f"GLIP golden reference not found at {root} (set ODINW_GLIP_REFERENCE to the glip_reference folder)"
        )
    return GlipReference(root)
