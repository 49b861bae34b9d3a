"""Errors of the preprocess stage: each carries a stable code and a message a user can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synchuman.preprocess.quality import QualityReport


class PreprocessError(ValueError):
    """The input cannot be turned into a usable stage-1 input.

    ``code`` is a stable machine-readable reason (e.g. ``"TRUNCATED_IMAGE"``), ``field`` names what was
    wrong (``"image"``, ``"options.segmenter"``) and the message says what to do. Services map it to
    INVALID_ARGUMENT, the CLI to a one-line error.
    """

    def __init__(self, code: str, message: str, field: str = "image") -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class InvalidImageError(PreprocessError):
    """The bytes are not a decodable, single-frame image within the limits."""


class SegmenterError(PreprocessError):
    """The requested segmentation model is unknown, missing or broken."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, field="options.segmenter")


class QualityGateError(PreprocessError):
    """The person mask is unusable (e.g. empty); ``report`` holds the measurements and findings."""

    def __init__(self, code: str, message: str, report: QualityReport) -> None:
        super().__init__(code, message, field="image")
        self.report = report
