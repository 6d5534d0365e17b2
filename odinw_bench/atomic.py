"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written file.

Every result the harness writes (run records, predictions, leaderboards, reports, generated data, converted
checkpoints) goes through :func:`atomic_write`: the content is written to a temporary file in the target's folder,
flushed to disk, then renamed over the target. Example::

    from odinw_bench.atomic import atomic_write_text

    atomic_write_text("results/leaderboard.md", table)

Temporary files are named ``.<target>.<host>.<pid>.<thread>.tmp``: one per writer of a target, so two processes
writing the same file at once never share one. A writer killed mid-write (SIGKILL, power loss) cannot remove its
own, so every write first sweeps the orphans of its folder: those of dead processes on this host, and any left
unchanged for :data:`STALE_AFTER_S` (writers on other hosts of a shared file system).

Files get the permissions ``open()`` would give them: those of the file they replace, or ``0o666`` less the
umask for a new one, so a group on a shared cluster can read results when the umask allows it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: A temporary file unchanged for this long is an orphan whatever its name says (a writer on another host).
STALE_AFTER_S = 24 * 3600

_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<thread>\d+)\.tmp")


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """This machine's name in temp names; with its pid namespace where there is one (containers)."""
    try:  # two containers may share a host name but not pids: a pid is only judged in its own namespace
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        namespace = ""
    host = socket.gethostname().split(".")[0] + (f"-ns{namespace}" if namespace else "")
    # Dots would make the name ambiguous to parse; other characters are not safe in every file system.
    return re.sub(r"[^A-Za-z0-9-]", "-", host) or "host"


def temp_path(path: str | Path) -> Path:
    """The temporary file through which this process (and thread) writes ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{threading.get_native_id()}.tmp")


def sweep_orphan_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files in ``folder`` whose writers are gone; return the ones removed.

    An orphan is a temporary file of a process of this host (and pid namespace) that no longer runs, or one
    unchanged for :data:`STALE_AFTER_S`. Files not named like this module's temporary files are never touched.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or not _is_orphan(match, entry):
            continue
        # Best effort: another writer may sweep the same orphan at once, or a sticky folder may forbid it.
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _is_orphan(match: re.Match, entry: os.DirEntry) -> bool:
    try:
        if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
            return True
    except FileNotFoundError:
        return False
    pid = int(match["pid"])
    return match["host"] == _host() and pid != os.getpid() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no harmless probe there (os.kill terminates on Windows): rely on the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: the process exists but belongs to another user
        return True
    return True


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success rename it over ``path``.

    For writers that want a file name (``savefig``, ``safetensors.torch.save_file``). If the block raises (or the
    process is interrupted), the temporary file is removed and ``path`` is unchanged. The folder is created if
    needed, and orphaned temporary files in it are removed (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphan_temps(path.parent)
    tmp = temp_path(path)
    _create(tmp)
    created_mode = _mode_of(tmp)
    try:
        yield tmp
        # After writing (a read-only target must not make the temp file unwritable): the mode of the file it
        # replaces, else the one open() gives; writers that recreate the file (safetensors) would leave 0600.
        mode = _mode_of(path) or created_mode
        if mode is not None and _mode_of(tmp) != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Whatever failed, the half-written temp file must not survive: readers only ever see whole files.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _mode_of(path: Path) -> int | None:
    """Permission bits of an existing ``path`` (kept by a rewrite, as ``open(path, "w")`` keeps them), else None."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def _create(tmp: Path) -> None:
    """Create ``tmp`` empty with ``0o666`` less the umask, as ``open()`` would; writers opening it keep that mode."""
    tmp.unlink(missing_ok=True)  # a leftover of an earlier process that had this pid: its content is garbage
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


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
