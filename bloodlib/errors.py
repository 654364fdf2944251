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


class InvalidImageError(BloodlibError, ValueError):
    """An in-memory image is not an RGB uint8 array (H, W, 3) of a usable size
    (grayscale, RGBA, float, empty, tiny or huge)."""


class StainError(BloodlibError, ValueError):
    """An image holds too little stain to estimate or normalise it (blank, all white)."""


class AnnotationError(BloodlibError, ValueError):
    """An annotation is missing, malformed, or inconsistent with its image."""


class UnknownClassError(AnnotationError, KeyError):
    """A class name is not among the dataset's known classes."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MaskError(AnnotationError):
    """A mask is empty, or its size differs from its image."""


class AutolabelError(MaskError):
    """Classical segmentation found no plausible cell (listed by the batch functions)."""


class WeightsNotFoundError(BloodlibError, FileNotFoundError):
    """Model weights are not available locally and may not be downloaded."""


class ModelNotFoundError(WeightsNotFoundError):
    """No model of that name or path in the model store."""


class ModelFormatError(BloodlibError, ValueError):
    """A file is not a bloodlib model checkpoint, or its metadata is incomplete."""


class UnknownDatasetError(BloodlibError, KeyError, ValueError):
    """A dataset name is not in the catalogue."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ResultsError(BloodlibError, ValueError):
    """A result is malformed, or a results file has an unsupported schema."""


class ReferenceTableError(BloodlibError, KeyError):
    """An unknown paper, table, row or metric was asked of the reference tables."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class SettingError(BloodlibError, KeyError, ValueError):
    """An unknown experiment, model, profile or setting name (the message lists the known
    ones)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
