"""Checks of a job's options before it is accepted, so a bad option fails the submission, not a stage.

The stage options are converted to the core option classes exactly as the stage services convert them
(:mod:`services.common.conversions`), which runs the classes' own ``validate()``: the allowed ranges are
defined once, in :class:`~synchuman.options.Stage1Options` and
:class:`~synchuman.options.Stage2Options`; the preprocess options' segmenter name must be well
formed (:class:`~synchuman.options.PreprocessOptions`; whether the preprocess service has that
model is known only there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from gateway.errors import JobError
from services.common.conversions import (
    preprocess_options_from_proto,
    stage1_options_from_proto,
    stage2_options_from_proto,
)
from services.common.rpc_status import bad_request
from services.common.stage_io import InvalidInput
from synchuman.options import TARGET_FACES, PreprocessOptions, Range, Stage1Options, Stage2Options
from synchuman.stage_catalog import MULTIVIEW, PREPROCESS, RECONSTRUCTION, StageEntry
from synchuman.v1 import common_pb2

#: The preprocess options a request's choices are laid over (only their validity matters here).
DEFAULTS = PreprocessOptions()
#: ``(stage, conversion (message, field prefix) -> validated core options, the core ranges)``; a stage's
#: options are the ``JobOptions`` field of its name.
_STAGE_OPTIONS: tuple[tuple[StageEntry, Callable[[Any, str], object], tuple[Range, ...]], ...] = (
    (PREPROCESS, lambda message, field: preprocess_options_from_proto(message, DEFAULTS, field), ()),
    (MULTIVIEW, stage1_options_from_proto, Stage1Options.RANGES),
    (RECONSTRUCTION, stage2_options_from_proto, (*Stage2Options.RANGES, TARGET_FACES)),
)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _refusal(error: InvalidInput, message: Any, ranges: tuple[Range, ...]) -> JobError:
    """INVALID_ARGUMENT naming ``error.field``; for an out-of-range number, its value and allowed range."""
    name = error.field.rsplit(".", 1)[-1]
    bounds = next(((low, high) for option, low, high, _ in ranges if option == name), None)
    if bounds is None or bounds[0] <= getattr(message, name) <= bounds[1]:  # in range: wrong otherwise
        return JobError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error}", bad_request(error.field, str(error))
        )
    low, high = _number(bounds[0]), _number(bounds[1])
    return JobError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{error.field} is {_number(getattr(message, name))}; use a value from {low} to {high}",
        bad_request(error.field, f"must be in [{low}, {high}]"),
    )


def validate_options(options: common_pb2.JobOptions) -> None:
    """INVALID_ARGUMENT naming the field (``options.multiview.steps``) and what is allowed for a bad
    option."""
    for stage, convert, ranges in _STAGE_OPTIONS:
        message = getattr(options, stage.name)
        try:
            convert(message, f"options.{stage.name}")
        except InvalidInput as error:
            raise _refusal(error, message, ranges) from error
