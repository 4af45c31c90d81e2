"""Errors raised while locating, downloading or parsing a dataset."""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not in the data directory (and no download was requested)."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be read as the expected format (truncated, damaged,
    wrong shapes or labels). Nothing is returned when this is raised."""


class ChecksumError(CorruptDatasetError):
    """A downloaded archive's MD5 differs from the official one; the download was discarded."""
