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

import grpc

from services.common.conversions import (
    output_report_to_proto,
    stage1_output_from_wire,
    stage2_options_from_proto,
    stage2_options_to_proto,
)
from services.common.stage_io import decode_image, read_start, receive_blobs, send_blobs, upload_chunks
from services.common.stage_runtime import OutputRejected, StageRuntime, guard
from synchuman.pipelines.handoff import VIEW_FILES, stage2_inputs_from
from synchuman.pipelines.stage2_types import Stage2OutputRejected
from synchuman.v1 import common_pb2, stage2_pb2, stage2_pb2_grpc

log = logging.getLogger(__name__)

CONDITIONING = "conditioning.png"
MAX_INPUT_BYTES = 16 << 20
GLB = "person.glb"
_MEDIA_TYPES = {
    GLB: "model/gltf-binary",
    "gaussians.ply": "application/x-ply",
    "mesh_obj.zip": "application/zip",
}


class Stage2Servicer(stage2_pb2_grpc.Stage2ServiceServicer):
    """Receives voxels, views and the conditioning crop; streams progress, the GLB (+ extras) and the
    report.
    """

    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime

    def GetInfo(
        self, request: stage2_pb2.Stage2ServiceGetInfoRequest, context: grpc.ServicerContext
    ) -> stage2_pb2.Stage2ServiceGetInfoResponse:
        return stage2_pb2.Stage2ServiceGetInfoResponse(info=self._runtime.model_info(context))

    def Reconstruct(
        self, request_iterator: Iterator[stage2_pb2.ReconstructRequest], context: grpc.ServicerContext
    ) -> Iterator[stage2_pb2.ReconstructResponse]:
        return guard("stage2", context, self._reconstruct(request_iterator, context))

    def _reconstruct(
        self, requests: Iterator[stage2_pb2.ReconstructRequest], context: grpc.ServicerContext
    ) -> Iterator[stage2_pb2.ReconstructResponse]:
        start = read_start(requests, "job id, options, voxels, input headers")
        backend = self._runtime.backend(context)
        options = stage2_options_from_proto(start.options)
        blobs = receive_blobs(
            start.inputs, upload_chunks(requests), (CONDITIONING, *VIEW_FILES), MAX_INPUT_BYTES
        )
        stage1_output = stage1_output_from_wire(blobs, start.structure, backend.voxel_resolution)
        conditioning = decode_image(CONDITIONING, blobs[CONDITIONING], (518, 518), 3)
        inputs = stage2_inputs_from(stage1_output, conditioning)
        started = time.monotonic()  # the request's server-side wall time (queue included)
        try:
            result = yield from self._runtime.run_backend(
                context,
                start.job_id,
                backend,
                inputs,
                options,
                lambda event: stage2_pb2.ReconstructResponse(progress=event),
                common_pb2.STAGE_RECONSTRUCTION,
            )
        except Stage2OutputRejected as exc:
            raise OutputRejected(exc.code, f"the reconstruction is unusable: {exc}") from exc
        phases = {name: round(seconds, 3) for name, seconds in result.phase_seconds.items()}
        peaks = {name: round(gib, 2) for name, gib in result.phase_peak_gib.items()}
        log.info(
            "reconstruction phases",  # bench/bench_stage_service.py waits for this message
            extra={"job_id": start.job_id, "phases": phases, "peak_gpu_gib": peaks},
        )
        errors = result.report.errors
        if errors:
            raise OutputRejected(
                errors[0].code,
                "the reconstruction is unusable: "
                + "; ".join(f"{e.code}: {e.message}" for e in errors)
                + f" (vertices {result.report.vertex_count}, faces {result.report.face_count})",
            )
        files = ((GLB, result.glb), *sorted(result.extra_files.items()))
        headers = yield from send_blobs(
            stage2_pb2.ReconstructResponse,
            ((name, _MEDIA_TYPES.get(name, "application/octet-stream"), data) for name, data in files),
        )
        yield stage2_pb2.ReconstructResponse(
            result=stage2_pb2.ReconstructResult(
                report=output_report_to_proto(result.report),
                outputs=headers,
                effective_options=stage2_options_to_proto(options),
                seconds=time.monotonic() - started,
                phase_seconds=result.phase_seconds,
            )
        )
