"""PreprocessService: decode, segment, frame and check one photo (CPU) behind the synchuman.v1 protocol.

The servicer only speaks the wire format; the work is the backend's (:mod:`services.preprocess.backend`,
which runs :func:`synchuman.preprocess.pipeline.preprocess`, the same code as ``synchuman preprocess``).
Admission (concurrency + queue, RESOURCE_EXHAUSTED with RetryInfo), deadlines, cancellation and shutdown come
from :class:`services.common.stage_runtime.StageRuntime`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from services.common.conversions import (
    input_report_to_proto,
    preprocess_error_details,
    preprocess_options_from_proto,
)
from services.common.rpc_status import abort
from services.common.servicer import StageCall, StageServicer, UploadRpc, upload_rpc
from services.common.stage_io import InvalidInput, encode_pngs, receive_blobs
from services.preprocess.backend import PreprocessBackend
from synchuman.preprocess.errors import PreprocessError
from synchuman.stage_catalog import PREPROCESS
from synchuman.v1 import preprocess_pb2, preprocess_pb2_grpc

(INPUT,) = (file.name for file in PREPROCESS.inputs)


def preprocess_photo(call: StageCall) -> Iterator[preprocess_pb2.PreprocessResponse]:
    """Preprocess: progress per phase, the input report, the three images (PNG blobs), then the result;
    INVALID_ARGUMENT with the report when the photo fails the quality gate."""
    start = call.start
    backend: PreprocessBackend = call.backend
    options = preprocess_options_from_proto(start.options, backend.defaults)
    if start.image.name != INPUT:
        raise InvalidInput("start.image.name", f"name the photo blob {INPUT!r}, not {start.image.name!r}")
    blobs = receive_blobs([start.image], call.chunks(), (INPUT,), options.max_bytes, "start.image")
    started = time.monotonic()  # the request's server-side wall time (queue included)
    try:
        result = yield from call.run(blobs[INPUT], options)
    except PreprocessError as exc:
        details = preprocess_error_details(exc)
        abort(call.context, grpc.StatusCode.INVALID_ARGUMENT, f"{PREPROCESS.name}: {exc}", *details)
    report = input_report_to_proto(result.report)
    yield preprocess_pb2.PreprocessResponse(report=report)
    pngs = encode_pngs([result.framed, result.conditioning, result.mask])
    outputs = zip(PREPROCESS.outputs, pngs, strict=True)
    headers = yield from call.send_blobs((file.name, file.media_type, data) for file, data in outputs)
    seconds = time.monotonic() - started
    yield preprocess_pb2.PreprocessResponse(
        result=preprocess_pb2.PreprocessResult(report=report, blobs=headers, seconds=seconds)
    )


PREPROCESS_RPC = UploadRpc(
    PREPROCESS,
    preprocess_pb2.PreprocessResponse,
    "options and the `input` header",
    "request_id",
    preprocess_photo,
)


class PreprocessServicer(StageServicer, preprocess_pb2_grpc.PreprocessServiceServicer):
    """Receives a photo in chunks; streams progress, the report, the three output images and a result."""

    Preprocess = upload_rpc(PREPROCESS_RPC)
