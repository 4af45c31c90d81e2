"""Fetch a file over HTTP(S), check its MD5, and move it into place atomically."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ..files import atomic_write
from .errors import ChecksumError

log = logging.getLogger(__name__)


def _fetch(url: str, dest: BinaryIO) -> None:
    """Stream `url` into the open binary file `dest` (replaced by tests: they never download)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, dest, length=1 << 20)


def _md5(f: BinaryIO) -> str:
    """Hex MD5 digest of an open binary file, read from its start in 1 MiB chunks."""
    f.seek(0)
    digest = hashlib.md5()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def download_verified(url: str, path: str | Path, md5: str) -> Path:
    """Download `url` to `path`, only if its MD5 is `md5`.

    The bytes go to a temporary file beside `path`, are flushed to disk and checked, then
    renamed onto `path` in one step (:func:`one_fast.files.atomic_write`): `path` is either
    absent or complete, never partial.

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

    def fetch_and_check(f: BinaryIO) -> None:
        log.info("downloading %s to %s", url, path)
        try:
            _fetch(url, f)
        except OSError as e:  # URLError, timeouts, resets: one line with the root cause
            reason = getattr(e, "reason", None) or e.strerror or e
            raise OSError(f"could not download {url} ({reason}); check the network "
                          f"connection, or fetch that file by other means and put it at "
                          f"{path}") from None
        f.flush()
        actual = _md5(f)
        if actual != md5:
            raise ChecksumError(f"MD5 mismatch for {url}: expected {md5}, got {actual}; the "
                                "download was discarded (try again)")

    return atomic_write(path, fetch_and_check)
