"""Stage2Service: structured latent, decoders, post-processing and GLB export (synchuman.v1 protocol).

The servicer only speaks the wire format: it decodes stage 1's views and voxels into a
:class:`~synchuman.pipelines.handoff.Stage1Output`, builds the core
:class:`~synchuman.pipelines.handoff.Stage2Inputs` with
:func:`~synchuman.pipelines.handoff.stage2_inputs_from`, runs the backend (:mod:`services.stage2.backend`)
and streams the GLB, extras and report back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from services.common.conversions import (
    output_report_to_proto,
    stage1_output_from_wire,
    stage2_options_from_proto,
    stage2_options_to_proto,
)
from services.common.servicer import StageCall, StageServicer, UploadRpc, info_rpc, upload_rpc
from services.common.stage_io import decode_image, receive_blobs
from services.common.stage_runtime import OutputRejected
from synchuman.pipelines.handoff import stage2_inputs_from
from synchuman.pipelines.stage2_types import Stage2OutputRejected
from synchuman.stage_catalog import MULTIVIEW, RECONSTRUCTION, media_type
from synchuman.v1 import stage2_pb2, stage2_pb2_grpc

log = logging.getLogger(__name__)

MAX_INPUT_BYTES = 16 << 20
#: The uploaded files: the conditioning crop, then the views (stage 1's voxel structure comes in ``start``).
UPLOADS = tuple(file.name for file in RECONSTRUCTION.inputs if file != MULTIVIEW.result_file)
CONDITIONING = UPLOADS[0]
#: The GLB, always sent, first; the extras asked for follow.
GLB = RECONSTRUCTION.outputs[0].name


def reconstruct(call: StageCall) -> Iterator[stage2_pb2.ReconstructResponse]:
    """Reconstruct: progress per sampler step and phase, the GLB (+ requested extras), then the result with
    the output report; FAILED_PRECONDITION when the output is unusable."""
    options = stage2_options_from_proto(call.start.options, defaults=call.backend.defaults)
    blobs = receive_blobs(call.start.inputs, call.chunks(), UPLOADS, MAX_INPUT_BYTES)
    stage1_output = stage1_output_from_wire(blobs, call.start.structure, call.backend.voxel_resolution)
    conditioning = decode_image(CONDITIONING, blobs[CONDITIONING], (518, 518), 3)
    inputs = stage2_inputs_from(stage1_output, conditioning)
    started = time.monotonic()  # the request's server-side wall time (queue included)
    try:
        result = yield from call.run(inputs, options)
    except Stage2OutputRejected as exc:
        raise OutputRejected(exc.code, f"the stage-2 result is unusable: {exc}") from exc
    phases = {name: round(seconds, 3) for name, seconds in result.phase_seconds.items()}
    peaks = {name: round(gib, 2) for name, gib in result.phase_peak_gib.items()}
    log.info(
        "stage 2 phases",  # bench/bench_stage_service.py waits for this message
        extra={"job_id": call.job_id, "phases": phases, "peak_gpu_gib": peaks},
    )
    errors = result.report.errors
    if errors:
        raise OutputRejected(
            errors[0].code,
            "the stage-2 result is unusable: "
            + "; ".join(f"{e.code}: {e.message}" for e in errors)
            + f" (vertices {result.report.vertex_count}, faces {result.report.face_count})",
        )
    files = ((GLB, result.glb), *sorted(result.extra_files.items()))
    headers = yield from call.send_blobs((name, media_type(name), data) for name, data in files)
    yield stage2_pb2.ReconstructResponse(
        result=stage2_pb2.ReconstructResult(
            report=output_report_to_proto(result.report),
            outputs=headers,
            effective_options=stage2_options_to_proto(options),
            seconds=time.monotonic() - started,
            phase_seconds=result.phase_seconds,
        )
    )


RECONSTRUCT = UploadRpc(
    RECONSTRUCTION,
    stage2_pb2.ReconstructResponse,
    "job id, options, voxels, input headers",
    "job_id",
    reconstruct,
)


class Stage2Servicer(StageServicer, stage2_pb2_grpc.Stage2ServiceServicer):
    """Receives voxels, views and the conditioning crop; streams progress, the GLB (+ extras) and the
    report.
    """

    GetInfo = info_rpc(stage2_pb2.Stage2ServiceGetInfoResponse)
    Reconstruct = upload_rpc(RECONSTRUCT)
