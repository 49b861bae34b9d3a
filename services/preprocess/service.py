"""PreprocessService: decode, segment, frame and check one photo (CPU) behind the synchuman.v1 protocol.

The servicer only speaks the wire format; the work is the backend's (:mod:`services.preprocess.backend`,
which runs :func:`synchuman.preprocess.pipeline.preprocess`, the same code as ``synchuman preprocess``).
Admission (concurrency + queue, RESOURCE_EXHAUSTED with RetryInfo), deadlines, cancellation and shutdown come
from :class:`services.common.stage_runtime.StageRuntime`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from services.common.conversions import input_report_to_proto, preprocess_options_from_proto
from services.common.stage_io import (
    InvalidInput,
    encode_pngs,
    read_start,
    receive_blobs,
    send_blobs,
    upload_chunks,
)
from services.common.stage_runtime import StageRuntime, abort, bad_request, error_info, guard
from services.preprocess.backend import PreprocessBackend
from synchuman.preprocess.errors import PreprocessError, QualityGateError
from synchuman.v1 import common_pb2, preprocess_pb2, preprocess_pb2_grpc

INPUT = "input"
FRAMED = "framed.png"
CONDITIONING = "conditioning.png"
MASK = "mask.png"


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
        start = read_start(requests, "options and the `input` header")
        backend: PreprocessBackend = self._runtime.backend(context)
        options = preprocess_options_from_proto(start.options, backend.defaults)
        if start.image.name != INPUT:
            raise InvalidInput("start.image.name", f"name the photo blob {INPUT!r}, not {start.image.name!r}")
        chunks = upload_chunks(requests)
        blobs = receive_blobs([start.image], chunks, (INPUT,), options.max_bytes, "start.image")
        started = time.monotonic()  # the request's server-side wall time (queue included)
        try:
            result = yield from self._runtime.run_backend(
                context,
                start.request_id,
                backend,
                blobs[INPUT],
                options,
                lambda event: preprocess_pb2.PreprocessResponse(progress=event),
                common_pb2.STAGE_PREPROCESS,
            )
        except PreprocessError as exc:
            details: list[Any] = [bad_request(exc.field, str(exc)), error_info(exc.code)]
            if isinstance(exc, QualityGateError):
                details.append(input_report_to_proto(exc.report))
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"preprocess: {exc}", *details)
        report = input_report_to_proto(result.report)
        yield preprocess_pb2.PreprocessResponse(report=report)
        pngs = encode_pngs([result.framed, result.conditioning, result.mask])
        outputs = zip((FRAMED, CONDITIONING, MASK), pngs, strict=True)
        headers = yield from send_blobs(
            preprocess_pb2.PreprocessResponse, ((name, "image/png", data) for name, data in outputs)
        )
        yield preprocess_pb2.PreprocessResponse(
            result=preprocess_pb2.PreprocessResult(
                report=report, blobs=headers, seconds=time.monotonic() - started
            )
        )
