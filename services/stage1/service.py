"""Stage1Service: multiview diffusion behind the synchuman.v1 protocol.

The servicer only speaks the wire format: it decodes the framed photo and conditioning crop into
:class:`~services.stage1.backend.Stage1Inputs`, runs the backend (:mod:`services.stage1.backend`) and sends
its :class:`~synchuman.pipelines.handoff.Stage1Output` back as ten PNG views and a voxel structure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from services.common.conversions import (
    stage1_options_from_proto,
    stage1_options_to_proto,
    stage1_output_to_blobs,
)
from services.common.servicer import StageCall, StageServicer, UploadRpc, info_rpc, upload_rpc
from services.common.stage_io import decode_image, receive_blobs, voxels_to_proto
from services.stage1.backend import Stage1Inputs
from synchuman.stage_catalog import MULTIVIEW, media_type
from synchuman.v1 import stage1_pb2, stage1_pb2_grpc

FRAMED, CONDITIONING = (file.name for file in MULTIVIEW.inputs)
MAX_INPUT_BYTES = 16 << 20


def generate_views(call: StageCall) -> Iterator[stage1_pb2.GenerateViewsResponse]:
    """GenerateViews: progress per sampler step, the ten views (PNG blobs), then the result with the
    voxels."""
    options = stage1_options_from_proto(call.start.options)
    blobs = receive_blobs(call.start.inputs, call.chunks(), (FRAMED, CONDITIONING), MAX_INPUT_BYTES)
    inputs = Stage1Inputs(
        framed=decode_image(FRAMED, blobs[FRAMED], (768, 768), 4),
        conditioning=decode_image(CONDITIONING, blobs[CONDITIONING], (518, 518), 3),
    )
    started = time.monotonic()  # the request's server-side wall time (queue included)
    output = yield from call.run(inputs, options)
    views = stage1_output_to_blobs(output)
    headers = yield from call.send_blobs((name, media_type(name), data) for name, data in views.items())
    yield stage1_pb2.GenerateViewsResponse(
        result=stage1_pb2.GenerateViewsResult(
            structure=voxels_to_proto(output.coords, call.backend.voxel_resolution),
            views=headers,
            effective_options=stage1_options_to_proto(options),
            seconds=time.monotonic() - started,
        )
    )


GENERATE_VIEWS = UploadRpc(
    MULTIVIEW, stage1_pb2.GenerateViewsResponse, "job id, options, input headers", "job_id", generate_views
)


class Stage1Servicer(StageServicer, stage1_pb2_grpc.Stage1ServiceServicer):
    """Receives the framed photo and conditioning crop, streams progress, the 10 views and the voxels."""

    GetInfo = info_rpc(stage1_pb2.Stage1ServiceGetInfoResponse)
    GenerateViews = upload_rpc(GENERATE_VIEWS)
