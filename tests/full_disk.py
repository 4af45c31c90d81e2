"""Simulate a disk that fills up while one_fast writes a file (through one_fast.files)."""

from __future__ import annotations

import errno
import os

from one_fast import files


class _FullDiskFile:
    """A file whose writes fail with ENOSPC once it would exceed ``limit`` bytes."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.limit = f, limit

    def write(self, data):
        if self.f.tell() + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_after(monkeypatch, limit: int, name_part: str) -> None:
    """Make atomic writes of files whose temp name contains ``name_part`` hit a full disk after
    ``limit`` bytes (torch.save then fails the way it does on a real full disk)."""
    real_fdopen = files.os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return _FullDiskFile(f, limit) if name_part in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(files.os, "fdopen", fdopen)
