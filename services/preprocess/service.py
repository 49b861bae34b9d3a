"""PreprocessService: decode, segment, frame and check one photo (CPU) behind the synchuman.v1 protocol.

The servicer only speaks the wire format; the work is :func:`synchuman.preprocess.pipeline.preprocess`, the
same code the ``synchuman preprocess`` command runs. Admission (concurrency + queue, RESOURCE_EXHAUSTED
with RetryInfo), deadlines, cancellation and shutdown come from
:class:`services.common.stage_runtime.StageRuntime`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np

from services.common.stage_io import (
    InvalidInput,
    blob_chunks,
    blob_header,
    encode_png,
    receive_blobs,
    upload_chunks,
)
from services.common.stage_runtime import BackendInfo, StageRuntime, abort, bad_request, error_info, guard
from synchuman.preprocess.errors import PreprocessError, QualityGateError
from synchuman.preprocess.pipeline import PreprocessOptions, PreprocessResult, preprocess
from synchuman.preprocess.quality import QualityReport
from synchuman.preprocess.segment import DEFAULT_SEGMENTER, load_segmenter, segmentation_dir
from synchuman.v1 import common_pb2, preprocess_pb2, preprocess_pb2_grpc

INPUT = "input"
FRAMED = "framed.png"
CONDITIONING = "conditioning.png"
MASK = "mask.png"
_SEVERITY = {
    "info": common_pb2.SEVERITY_INFO,
    "warning": common_pb2.SEVERITY_WARNING,
    "error": common_pb2.SEVERITY_ERROR,
}


class StoppedBetweenPhases(Exception):
    """The request was stopped before ``phase`` began (the runtime turns this into the matching status)."""


def report_to_proto(report: QualityReport) -> common_pb2.InputQualityReport:
    """The wire form of a :class:`QualityReport`."""
    return common_pb2.InputQualityReport(
        width=report.width,
        height=report.height,
        mask_source=report.mask_source,
        mask_coverage=report.mask_coverage,
        bbox_fraction=report.bbox_fraction,
        touched_edges=report.touched_edges,
        person_components=report.person_components,
        mask_confidence=report.mask_confidence,
        issues=[
            common_pb2.QualityIssue(severity=_SEVERITY[i.severity], code=i.code, message=i.message)
            for i in report.issues
        ],
    )


@dataclass
class PreprocessBackend:
    """The server's defaults (segmenter, model folder, input limits) with the default segmenter loaded."""

    defaults: PreprocessOptions
    info: BackendInfo

    @classmethod
    def load(cls, defaults: PreprocessOptions) -> PreprocessBackend:
        """Load the default segmenter; raises SegmenterError (with what to do) when its file is missing."""
        folder = defaults.segmentation_dir or segmentation_dir()
        name = defaults.segmenter or DEFAULT_SEGMENTER
        segmenter = load_segmenter(name, folder)
        info = BackendInfo(
            checkpoint_dir=str(folder), weights=f"segmenter {segmenter.name} ({segmenter.path.name})",
            device="cpu", dtype="float32",
        )
        return cls(defaults=replace(defaults, segmentation_dir=folder, segmenter=name), info=info)

    def warm_up(self) -> None:
        """One inference, so the first request does not pay for onnxruntime's lazy initialisation."""
        load_segmenter(self.defaults.segmenter, self.defaults.segmentation_dir).predict(
            np.full((64, 48, 3), 128, np.uint8)
        )

    def options(self, request: common_pb2.PreprocessOptions) -> PreprocessOptions:
        """The effective options of one request: its choices over the server's defaults."""
        return replace(
            self.defaults,
            segmenter=request.segmenter or self.defaults.segmenter,
            ignore_alpha=request.ignore_alpha,
            alpha_matting=request.alpha_matting,
        )


def _blob_messages(name: str, media_type: str, data: bytes) -> tuple[common_pb2.BlobHeader, list[Any]]:
    header = blob_header(name, media_type, data)
    messages = [preprocess_pb2.PreprocessResponse(blob=header)]
    messages += [preprocess_pb2.PreprocessResponse(chunk=chunk) for chunk in blob_chunks(name, data)]
    return header, messages


class PreprocessServicer(preprocess_pb2_grpc.PreprocessServiceServicer):
    """Receives a photo in chunks; streams progress, the report, the three output images and a result."""

    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime

    def Preprocess(
        self, request_iterator: Iterator[preprocess_pb2.PreprocessRequest], context: grpc.ServicerContext
    ) -> Iterator[preprocess_pb2.PreprocessResponse]:
        return guard("preprocess", context, self._preprocess(request_iterator, context))

    def _preprocess(
        self, requests: Iterator[preprocess_pb2.PreprocessRequest], context: grpc.ServicerContext
    ) -> Iterator[preprocess_pb2.PreprocessResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "start":
            raise InvalidInput("start", "the first message must be `start` (options and the `input` header)")
        start = first.start
        backend: PreprocessBackend = self._runtime.backend(context)
        options = backend.options(start.options)
        if start.image.name != INPUT:
            raise InvalidInput("start.image.name", f"name the photo blob {INPUT!r}, not {start.image.name!r}")
        chunks = upload_chunks(requests)
        blobs = receive_blobs([start.image], chunks, (INPUT,), options.max_bytes, "start.image")
        data = blobs[INPUT]
        started = time.monotonic()  # the request's server-side wall time (queue included)

        def work(report: Callable[[Any], None], should_stop: Callable[[], bool]) -> PreprocessResult:
            def phase_started(phase: str) -> None:
                if should_stop():  # cancelled, past the deadline or shutting down: skip the remaining phases
                    raise StoppedBetweenPhases(phase)
                report(phase)

            return preprocess(data, options, progress=phase_started)

        def progress(phase: str, elapsed_s: float) -> preprocess_pb2.PreprocessResponse:
            return preprocess_pb2.PreprocessResponse(
                progress=common_pb2.ProgressEvent(
                    stage=common_pb2.STAGE_PREPROCESS, phase=phase, elapsed_seconds=elapsed_s
                )
            )

        try:
            result = yield from self._runtime.run_job(context, start.request_id, work, progress)
        except PreprocessError as exc:
            details: list[Any] = [bad_request(exc.field, str(exc)), error_info(exc.code)]
            if isinstance(exc, QualityGateError):
                details.append(report_to_proto(exc.report))
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"preprocess: {exc}", *details)
        report = report_to_proto(result.report)
        yield preprocess_pb2.PreprocessResponse(report=report)
        headers = []
        outputs = ((FRAMED, result.framed), (CONDITIONING, result.conditioning), (MASK, result.mask))
        for name, image in outputs:
            header, messages = _blob_messages(name, "image/png", encode_png(image))
            headers.append(header)
            yield from messages
        yield preprocess_pb2.PreprocessResponse(
            result=preprocess_pb2.PreprocessResult(
                report=report, blobs=headers, seconds=time.monotonic() - started
            )
        )

