"""Exceptions raised by sktransfer.

Every exception subclasses :class:`SktransferError` *and* the built-in exception
that describes it best, so ``except ValueError`` keeps working for callers that
do not know about sktransfer.
"""

from __future__ import annotations


class SktransferError(Exception):
    """Base class of every error raised by sktransfer."""


class UnknownBackboneError(SktransferError, ValueError):
    """The ``model`` name is not a known backbone."""


class UnknownLayerError(SktransferError, ValueError):
    """The ``layer`` name is not a module of the backbone."""


class WeightsError(SktransferError, ValueError):
    """Weights that do not fit the backbone, or a file that is unsafe to load."""


class WeightsNotAvailableError(SktransferError, FileNotFoundError):
    """Pretrained weights are neither cached locally nor downloadable."""


class InvalidImageError(SktransferError, ValueError):
    """Image input of the wrong shape, dtype or value range."""


class ImageDecodeError(SktransferError, ValueError):
    """An image file that exists but cannot be decoded; ``path`` names it
    (``None`` for an in-memory image)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path
