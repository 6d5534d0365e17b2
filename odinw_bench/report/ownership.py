"""A report overwrites only files that a report wrote: never the run leaderboard, never a file of the user's.

``report --out`` may point anywhere, also beside the ``leaderboard.csv`` that ``run`` and ``sweep`` append a row to
per run. Before anything is written, :func:`check_overwrites` looks at every file the report would replace and
refuses, with one line and no file written, when it is the run leaderboard (recognised by its header) or a file no
report wrote. Each folder a report writes to keeps :data:`MANIFEST_NAME`: file name -> SHA-256 of the content the
report wrote (:func:`remember_outputs`), so a file changed since, by hand or by another tool, counts as foreign.

Example::

    from odinw_bench.report.ownership import check_overwrites, remember_outputs

    check_overwrites(paths)   # UserError naming the first file that is not a report's own
    ...                       # write the files
    remember_outputs(paths)
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from odinw_bench.atomic import atomic_write_text
from odinw_bench.errors import UserError
from odinw_bench.results.leaderboard import LEADERBOARD_COLUMNS

#: Per folder: the report files written there, with the SHA-256 of what was written.
MANIFEST_NAME = ".odinw_report_files.json"


def check_overwrites(paths: Iterable[str | Path]) -> None:
    """Refuse if any existing file among ``paths`` was not written as it is by a report.

    Raises:
        UserError: Naming the file: the run leaderboard, a folder, or a file no report wrote (or changed since).
    """
    manifests: dict[Path, dict[str, str]] = {}
    for path in map(Path, paths):
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir() or not path.is_file():
            raise UserError("is a folder or special file, not a report output; give report another --out",
                            path=path, field="--out")
        if _is_run_leaderboard(path):
            raise UserError("is the run leaderboard that run and sweep append to, not a report output; give report "
                            "another --out (default: results/report/)", path=path, field="--out")
        folder = path.parent
        if folder not in manifests:
            manifests[folder] = _read_manifest(folder)
        if manifests[folder].get(path.name) != _sha256(path):
            raise UserError("exists and was not written by report (or was changed since); move it aside or give "
                            "report another --out", path=path, field="--out")


def remember_outputs(paths: Iterable[str | Path]) -> None:
    """Record ``paths`` (just written) as report outputs in the manifest of their folders."""
    from filelock import FileLock

    by_folder: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, []).append(path)
    for folder, files in by_folder.items():
        manifest = folder / MANIFEST_NAME
        with FileLock(f"{manifest}.lock"):  # two reports into one folder must not drop each other's entries
            known = _read_manifest(folder)
            known.update({p.name: _sha256(p) for p in files})
            atomic_write_text(manifest, json.dumps({"files": dict(sorted(known.items()))}, indent=1) + "\n")


def _is_run_leaderboard(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader([handle.readline()]), [])
    except (OSError, UnicodeDecodeError):
        return False
    return header == list(LEADERBOARD_COLUMNS)


def _read_manifest(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of the reports' files in ``folder``; empty if there is no (readable) manifest."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}  # nothing is known to be a report's: every existing file is refused, nothing is lost
    files = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest needs Python 3.11
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
