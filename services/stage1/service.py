"""Stage1Service: multiview diffusion behind the synchuman.v1 protocol.

The servicer only speaks the wire format: it decodes the framed photo and conditioning crop into
:class:`~services.stage1.backend.Stage1Inputs`, runs the backend (:mod:`services.stage1.backend`) and sends
its :class:`~synchuman.pipelines.handoff.Stage1Output` back as ten PNG views and a voxel structure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from services.common.conversions import (
    stage1_options_from_proto,
    stage1_options_to_proto,
    stage1_output_to_blobs,
)
from services.common.stage_io import (
    decode_image,
    read_start,
    receive_blobs,
    send_blobs,
    upload_chunks,
    voxels_to_proto,
)
from services.common.stage_runtime import StageRuntime, guard
from services.stage1.backend import Stage1Inputs
from synchuman.v1 import common_pb2, stage1_pb2, stage1_pb2_grpc

FRAMED = "framed.png"
CONDITIONING = "conditioning.png"
MAX_INPUT_BYTES = 16 << 20


class Stage1Servicer(stage1_pb2_grpc.Stage1ServiceServicer):
    """Receives the framed photo and conditioning crop, streams progress, the 10 views and the voxels."""

    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime

    def GetInfo(
        self, request: stage1_pb2.Stage1ServiceGetInfoRequest, context: grpc.ServicerContext
    ) -> stage1_pb2.Stage1ServiceGetInfoResponse:
        return stage1_pb2.Stage1ServiceGetInfoResponse(info=self._runtime.model_info(context))

    def GenerateViews(
        self, request_iterator: Iterator[stage1_pb2.GenerateViewsRequest], context: grpc.ServicerContext
    ) -> Iterator[stage1_pb2.GenerateViewsResponse]:
        return guard("stage1", context, self._generate(request_iterator, context))

    def _generate(
        self, requests: Iterator[stage1_pb2.GenerateViewsRequest], context: grpc.ServicerContext
    ) -> Iterator[stage1_pb2.GenerateViewsResponse]:
        start = read_start(requests, "job id, options, input headers")
        backend = self._runtime.backend(context)
        options = stage1_options_from_proto(start.options)
        blobs = receive_blobs(start.inputs, upload_chunks(requests), (FRAMED, CONDITIONING), MAX_INPUT_BYTES)
        inputs = Stage1Inputs(
            framed=decode_image(FRAMED, blobs[FRAMED], (768, 768), 4),
            conditioning=decode_image(CONDITIONING, blobs[CONDITIONING], (518, 518), 3),
        )
        started = time.monotonic()  # the request's server-side wall time (queue included)
        output = yield from self._runtime.run_backend(
            context,
            start.job_id,
            backend,
            inputs,
            options,
            lambda event: stage1_pb2.GenerateViewsResponse(progress=event),
            common_pb2.STAGE_MULTIVIEW,
        )
        views = stage1_output_to_blobs(output)
        headers = yield from send_blobs(
            stage1_pb2.GenerateViewsResponse, ((name, "image/png", data) for name, data in views.items())
        )
        yield stage1_pb2.GenerateViewsResponse(
            result=stage1_pb2.GenerateViewsResult(
                structure=voxels_to_proto(output.coords, backend.voxel_resolution),
                views=headers,
                effective_options=stage1_options_to_proto(options),
                seconds=time.monotonic() - started,
            )
        )
