"""Atomic file writes: a file is either its old content or its complete new content, never half.

Used for checkpoints, plots, metadata and downloads alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# mkstemp creates files 0600; give written files the mode a plain open() would (0666 & ~umask).
# Read once at import: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(target: str | os.PathLike, write_fn) -> Path:
    """Write a file atomically: temp file in the same directory → fsync → ``os.replace``.

    Args:
        target: final path; its directory is created if needed.
        write_fn: called with a binary read/write file object open on the temp file; it writes
            the content (and may read it back). If it raises, the temp file is removed and
            ``target`` is left untouched.

    Returns:
        The target path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "w+b") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target
