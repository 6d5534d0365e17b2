"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written file.

Every result the harness writes (run records, predictions, leaderboards, reports, generated data, converted
checkpoints) goes through :func:`atomic_write`: the content is written to a temporary file in the target's folder,
flushed to disk, then renamed over the target. Example::

    from odinw_bench.atomic import atomic_write_text

    atomic_write_text("results/leaderboard.md", table)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success rename it over ``path``.

    For writers that want a file name (``savefig``, ``safetensors.torch.save_file``). If the block raises (or the
    process is interrupted), the temporary file is removed and ``path`` is unchanged. The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        # Whatever failed, the half-written temp file must not survive: readers only ever see whole files.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], *, binary: bool = False) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Args:
        path: The target file; its folder is created if needed.
        write: Writes the whole content to the open file it is given.
        binary: Open the temporary file in binary mode instead of UTF-8 text.

    Returns:
        ``path``.
    """
    with atomic_target(path) as tmp:
        with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8",
                  newline=None if binary else "") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data), binary=True)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/file system allows fsync on a directory.
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
