"""Fetch a file over HTTP(S), check its MD5, and move it into place atomically."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO

from .errors import ChecksumError

log = logging.getLogger(__name__)


def _fetch(url: str, dest: BinaryIO) -> None:
    """Stream `url` into the open binary file `dest` (replaced by tests: they never download)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, dest, length=1 << 20)


def file_md5(path: str | Path) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_verified(url: str, path: str | Path, md5: str) -> Path:
    """Download `url` to `path`, only if its MD5 is `md5`.

    The bytes go to a temporary file beside `path`, are flushed to disk and checked, then
    renamed onto `path` in one step: `path` is either absent or complete, never partial.

    Args:
        url: where to fetch from.
        path: final location; its parent folder is created.
        md5: expected hex digest.

    Returns:
        `path`.

    Raises:
        ChecksumError: the digest differs (the temporary file is deleted).
        OSError: the transfer failed (the temporary file is deleted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s to %s", url, path)
        with os.fdopen(fd, "wb") as f:
            try:
                _fetch(url, f)
            except OSError as e:
                raise OSError(f"could not download {url}: {e}") from e
            f.flush()
            os.fsync(f.fileno())
        actual = file_md5(tmp)
        if actual != md5:
            raise ChecksumError(f"MD5 mismatch for {url}: expected {md5}, got {actual}; the "
                                "download was discarded (try again)")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
