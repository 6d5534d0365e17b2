"""Download and unpack the ODinW dataset zips that GLIP's ``odinw/download.py`` fetches, safely and resumably.

Each task YAML names its zip (``download: Aquarium``); the zip is ``{base}/{Name}.zip`` with base
:data:`DEFAULT_BASE_URL` (GLIP's script points at the HF *browsing* URL ``/tree/main/``, which serves HTML; raw
files live under ``/resolve/main/``). Override the base with ``--base-url`` or ``$ODINW_BENCH_DOWNLOAD_URL``.

Steps per zip: download into ``<Name>.zip.part`` (resuming with an HTTP ``Range`` request), check the size against
``Content-Length``/``Content-Range`` and, where :data:`KNOWN_CHECKSUMS` has it, the sha256; test the archive;
refuse unsafe members (absolute paths, ``..``, symlinks); extract through a staging folder so that a failure leaves
nothing half-extracted; then check that every split's annotation file and image folder of the tasks exist.

Example::

    from odinw_bench.data.download import download_tasks, raise_for_layout
    from odinw_bench.tasks.registry import resolve_tasks

    results = download_tasks([t for t, _ in resolve_tasks("odinw13")], "DATASET/odinw")
    raise_for_layout(results)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

from odinw_bench import __version__
from odinw_bench.errors import UserError

if TYPE_CHECKING:
    from odinw_bench.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co/GLIPModel/GLIP/resolve/main/odinw_35"
URL_ENV = "ODINW_BENCH_DOWNLOAD_URL"
#: Zip name -> sha256 hex digest. Checked when present; zips without an entry are checked by size and CRCs only.
KNOWN_CHECKSUMS: dict[str, str] = {}
# GLIP's released few-shot files: shots 1/3/5/10 x seeds 3/30/300 (glip_protocol.md §1.2).
FEWSHOT_SHOTS = (1, 3, 5, 10)
FEWSHOT_SEEDS = (3, 30, 300)
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
_NETWORK_HINT = "check the network (or proxy), or point --base-url / $ODINW_BENCH_DOWNLOAD_URL at a mirror"


@dataclass
class LayoutReport:
    """What of a task's expected files exists under the data root.

    Attributes:
        task: Task name.
        missing: Missing annotation files and image folders, as ``split 'x': <path>``.
        fewshot_present: How many of GLIP's prepared few-shot files exist.
        fewshot_expected: How many the task's ``fewshot`` patterns name.
    """

    task: str
    missing: list[str] = field(default_factory=list)
    fewshot_present: int = 0
    fewshot_expected: int = 0

    @property
    def ok(self) -> bool:
        """True when every split's annotation file and image folder exist."""
        return not self.missing


@dataclass
class DownloadResult:
    """Outcome for one zip: ``action`` is ``downloaded``, ``reused zip`` or ``present`` (nothing to do)."""

    zip_name: str
    url: str
    action: str
    layouts: list[LayoutReport]


def resolve_base_url(base_url: str | None = None) -> str:
    """The flag's value, else ``$ODINW_BENCH_DOWNLOAD_URL``, else :data:`DEFAULT_BASE_URL`."""
    return (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def zip_url(zip_name: str, base_url: str | None = None) -> str:
    """URL of ``<zip_name>.zip`` under the resolved base URL."""
    return f"{resolve_base_url(base_url)}/{quote(zip_name)}.zip"


def download_tasks(
    tasks: Iterable[TaskSpec],
    data_root: str | Path,
    *,
    base_url: str | None = None,
    keep_zip: bool = False,
    force: bool = False,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
) -> list[DownloadResult]:
    """Download, verify and extract the zips of ``tasks`` into ``data_root``; each zip once, however many tasks.

    Zips whose tasks already pass the layout check are skipped unless ``force``. Synthetic tasks are skipped.

    Returns:
        One result per zip, with the layout check of its tasks (see :func:`raise_for_layout`).

    Raises:
        UserError: A task without a zip name; a network error (with URL and hint); a size, checksum or archive
            failure; an unsafe archive.
    """
    data_root = Path(data_root)
    checksums = KNOWN_CHECKSUMS if checksums is None else checksums
    by_zip: dict[str, list[TaskSpec]] = {}
    for task in {t.name: t for t in tasks}.values():  # a task named twice is fetched once
        if task.synthetic:
            logger.info("%s: generated locally, nothing to download", task.name)
            continue
        if not task.download:
            raise UserError(f"task '{task.name}' names no zip to download (custom task?)", field="download")
        by_zip.setdefault(task.download, []).append(task)
    data_root.mkdir(parents=True, exist_ok=True)
    return [
        _download_zip(name, group, data_root, zip_url(name, base_url), keep_zip, force, checksums.get(name), progress)
        for name, group in by_zip.items()
    ]


def _download_zip(name, tasks, data_root: Path, url, keep_zip, force, sha256, progress) -> DownloadResult:
    layouts = [check_layout(t, data_root) for t in tasks]
    if not force and all(layout.ok for layout in layouts):
        logger.info("%s: already present in %s", name, data_root)
        return DownloadResult(name, url, "present", layouts)
    zip_path = under_root(data_root, f"{name}.zip")
    from filelock import FileLock

    with FileLock(under_root(data_root, f".{name}.zip.lock")):  # two processes fetching one zip would corrupt the .part
        if force or not zip_path.exists():
            fetch(url, zip_path, expected_sha256=sha256, force=force, progress=progress)
            action = "downloaded"
        else:
            action = "reused zip"
            if sha256:
                _check_sha256(zip_path, sha256, url)
        try:
            verify_zip(zip_path)
        except UserError:
            zip_path.unlink(missing_ok=True)  # a corrupt zip must not be reused by the next attempt
            raise
        safe_extract(zip_path, data_root)
        if not keep_zip:
            zip_path.unlink()
    return DownloadResult(name, url, action, [check_layout(t, data_root) for t in tasks])


def under_root(data_root: str | Path, name: str) -> Path:
    """``<data_root>/<name>`` for a file the download writes, refused unless it lies directly in the data root.

    Task loading already refuses zip names that are paths; this keeps a task built in code (or a future field)
    from writing a zip, its ``.part`` or its lock anywhere else (``../x``, ``/x``).

    Raises:
        UserError: If the path leaves the data root.
    """
    root = Path(data_root).resolve()
    path = Path(os.path.normpath(root / name))  # lexical: '..' and absolute names are caught, symlinks kept
    if path.parent != root:
        raise UserError(f"refusing to write {name!r}: it is not a file name inside the data root {root}",
                        field="download")
    return path


def fetch(
    url: str, dest: str | Path, *, expected_sha256: str | None = None, force: bool = False, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial ``.part`` with an HTTP Range request.

    A 206 reply appends to the partial file; a 200 reply (the server ignored the range) restarts it. The final
    size must equal the size the server announced, and the sha256 ``expected_sha256`` if given.

    Raises:
        UserError: Network errors (the ``.part`` is kept for resuming), size or checksum mismatch.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    total: int | None | bool = False
    for _attempt in range(2):  # the second attempt only follows a range the server could not serve
        offset = part.stat().st_size if part.exists() else 0
        total = _download_into(url, part, offset, progress)
        if total is not False:
            break
        part.unlink(missing_ok=True)
    if total is False:
        raise UserError(f"the server cannot serve a consistent file (range requests fail); {_NETWORK_HINT}", path=url)
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise UserError(f"download incomplete: {size} of {total} bytes; run the command again to resume", path=url)
    if expected_sha256:
        _check_sha256(part, expected_sha256, url)
    os.replace(part, dest)
    return dest


def _download_into(url: str, part: Path, offset: int, progress: bool) -> int | None | bool:
    """One HTTP request; returns the expected final size (None if unknown) or False to restart from zero."""
    from urllib.request import Request, urlopen

    headers = {"User-Agent": f"odinw_bench/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except Exception as err:  # urllib raises HTTPError, URLError, socket and SSL errors
        if getattr(err, "code", None) == 416 and offset:
            # The .part is at least as long as the file: complete if the sizes agree, else start over.
            total = _parse_content_range(err.headers.get("Content-Range", ""))[1]
            return total if total == offset else False
        raise _network_error(url, err) from None
    with response:
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                logger.warning("%s: server resumed at byte %s instead of %s; restarting", url, start, offset)
                return False
        else:
            if offset:
                logger.info("%s: server ignored the range request; restarting the download", url)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        _copy_body(url, response, part, offset, total, progress)
    return total


def _copy_body(url, response, part: Path, offset: int, total: int | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=part.name.removesuffix(".part"), disable=None if progress else True)  # fmt: skip
    try:
        with open(part, "ab" if offset else "wb") as fh:
            while chunk := response.read(CHUNK_BYTES):
                fh.write(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    except Exception as err:  # http.client.IncompleteRead, timeouts, resets
        raise UserError(
            f"download interrupted after {part.stat().st_size} bytes ({err!r:.100}); run the command again to "
            f"resume; {_NETWORK_HINT}",
            path=url,
        ) from None
    finally:
        bar.close()


def _parse_content_range(value: str) -> tuple[int | None, int | None]:
    """``bytes 100-999/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); unknown parts are None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _network_error(url: str, err: Exception) -> UserError:
    code = getattr(err, "code", None)
    if code == 404:
        return UserError(f"not found (HTTP 404); check the zip name and the base URL; {_NETWORK_HINT}", path=url)
    if code in (401, 403):
        return UserError(f"access denied (HTTP {code}); the file may need a login; {_NETWORK_HINT}", path=url)
    reason = getattr(err, "reason", None) or err
    return UserError(f"cannot download ({reason}); {_NETWORK_HINT}", path=url)


def _check_sha256(path: Path, expected: str, url: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        path.unlink()
        raise UserError(
            f"sha256 mismatch: expected {expected}, got {digest.hexdigest()}; the file was removed, run again",
            path=url,
        )


def verify_zip(path: str | Path) -> None:
    """Open the archive and check every member's CRC.

    Raises:
        UserError: If the file is not a zip archive or a member is corrupt.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as err:
        raise UserError(f"not a valid zip archive ({err}); run the command again to download it afresh", path=path)
    if bad is not None:
        raise UserError(f"corrupt archive member {bad!r}; run the command again to download it afresh", path=path)


def _unsafe_member(info: zipfile.ZipInfo) -> bool:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    if ".." in PurePosixPath(name).parts:
        return True
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract(zip_path: str | Path, target: str | Path) -> list[str]:
    """Extract an archive into ``target``, refusing it whole if any member is absolute, escapes via ``..``, or
    is a symlink. Members go to a staging folder first and are moved in only after all of them extracted.

    Returns:
        The member names extracted (macOS ``__MACOSX/`` metadata is skipped).

    Raises:
        UserError: Listing the unsafe members; nothing is written then.
    """
    zip_path, target = Path(zip_path), Path(target)
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        unsafe = [m.filename for m in members if _unsafe_member(m)]
        if unsafe:
            raise UserError(
                f"refusing to extract: {len(unsafe)} unsafe members (absolute path, '..' or symlink), e.g. "
                f"{unsafe[:5]}",
                path=zip_path,
            )
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{zip_path.stem}.extract-", dir=target))
        try:
            names = [m.filename for m in members if _extract_member(zf, m, staging)]
            _move_tree(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return names


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path) -> bool:
    parts = [p for p in PurePosixPath(info.filename.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or parts[0] == "__MACOSX":
        return False
    dest = staging.joinpath(*parts)
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)
    return True


def _move_tree(src: Path, dst: Path) -> None:
    """Move everything under ``src`` into ``dst``, merging folders and replacing files of the same name."""
    for path in sorted(src.rglob("*")):
        out = dst / path.relative_to(src)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, out)


def check_layout(task: TaskSpec, data_root: str | Path) -> LayoutReport:
    """Check that each split's annotation file and image folder of ``task`` exist, and count few-shot files."""
    report = LayoutReport(task.name)
    for split in task.splits:
        ann_file, img_dir = task.split_files(split, data_root)
        if not ann_file.is_file():
            report.missing.append(f"split '{split}': annotation file {ann_file}")
        if not img_dir.is_dir():
            report.missing.append(f"split '{split}': image folder {img_dir}")
    for split in task.fewshot:
        for shots in FEWSHOT_SHOTS:
            for seed in FEWSHOT_SEEDS:
                report.fewshot_expected += 1
                report.fewshot_present += task.fewshot_file(split, shots, seed, data_root).is_file()
    return report


def raise_for_layout(results: Iterable[DownloadResult]) -> None:
    """Raise a UserError listing every missing file of every task, if any."""
    missing = [f"{layout.task}: {m}" for r in results for layout in r.layouts for m in layout.missing]
    if missing:
        listing = "\n  ".join(missing)
        raise UserError(
            f"the extracted data does not match the task YAMLs ({len(missing)} missing):\n  {listing}",
            field="splits",
        )
