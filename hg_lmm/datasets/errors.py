"""Errors raised by the dataset readers.

Every error names the file (and the sample inside it) and says how to fix it. All derive from
`DatasetError`, so a training run can choose to skip bad samples with `SkipBadSamples` (which logs
each skip) instead of stopping.
"""

from __future__ import annotations


class DatasetError(Exception):
    """Base class of every data problem that the readers detect."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file the annotations point to (image, panoptic PNG, json, pickle) does not exist."""


class CorruptImageError(DatasetError):
    """An image (or panoptic PNG) exists but cannot be decoded."""


class AnnotationError(DatasetError):
    """An annotation is malformed or inconsistent with its image."""


class DanglingAnnotationError(AnnotationError):
    """An annotation points to something that does not exist (segment id, ann_id, image id)."""


class EmptyPieceError(DatasetError):
    """A caption piece that owns a mask encodes to no tokens, so its phrase cannot be grounded."""
