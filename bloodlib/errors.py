"""Exception types: every bad input ends in one of these, with a message that says
what is wrong and what to do about it."""

from __future__ import annotations


class BloodlibError(Exception):
    """Base class for all errors raised by bloodlib."""


class DatasetNotFoundError(BloodlibError, FileNotFoundError):
    """A dataset (or a file it needs) is not on disk and cannot be fetched."""


class DatasetIntegrityError(BloodlibError):
    """Files on disk do not match the dataset's manifest (missing, truncated, altered)."""


class ImageReadError(BloodlibError, ValueError):
    """An image file is missing, corrupt, truncated or of an unsupported kind."""


class AnnotationError(BloodlibError, ValueError):
    """An annotation is missing, malformed, or inconsistent with its image."""


class UnknownClassError(AnnotationError, KeyError):
    """A class name is not among the dataset's known classes."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MaskError(AnnotationError):
    """A mask is empty, or its size differs from its image."""


class WeightsNotFoundError(BloodlibError, FileNotFoundError):
    """Model weights are not available locally and may not be downloaded."""


class UnknownDatasetError(BloodlibError, KeyError, ValueError):
    """A dataset name is not in the catalogue."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
