"""Owner-only files: personal data (rows, per-row scores, calibration points) and secrets.

A file that holds rows of a bank's customers, or anything computed per row, is
written 0600 in folders created 0700, whatever the process umask, and atomically
(a temporary file beside it, fsynced, then renamed over it), so it is never
readable by other local users, not even half-written. Plain OS file modes: this
module knows nothing of what the data means, so every layer may use it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700; leave existing directories as is.

    Unlike ``Path.mkdir(parents=True, mode=...)``, every directory created here
    (not only the leaf) gets 0700, so a fresh folder never exposes its contents to
    other local users. An existing directory (for example the user's own output
    folder) keeps its mode.
    """
    missing: list[Path] = []
    current = Path(path)
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, PRIVATE_DIR_MODE)  # umask may have removed owner bits


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk so a newly created or renamed file survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_with_mode(path: Path, data: bytes, mode: int, *, exclusive: bool) -> None:
    """Write and fsync ``data`` to ``path``, created with ``mode`` (never briefly readable).

    ``exclusive`` refuses an existing file (``FileExistsError``); otherwise it is truncated.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # umask may have removed bits of a new file's mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def private_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that takes a path; it then replaces ``path``.

    The temporary file is created 0600 beside ``path`` (missing folders 0700) before
    the writer opens it, so the writer (pandas, safetensors, ...) truncates a private
    file rather than creating one under the umask. When the block ends without an
    error, the file is fsynced and renamed over ``path`` (atomic: readers see the old
    file or the new one); on an error it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # umask may have removed owner bits
    finally:
        os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, PRIVATE_FILE_MODE)  # in case the writer replaced the file
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` as an owner-only file (see :func:`private_file`)."""
    with private_file(path) as tmp:
        tmp.write_bytes(data)  # truncates the private file private_file made: its mode stays


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
