"""Stage2Service: structured latent, decoders, post-processing and GLB export (synchuman.v1 protocol).

The servicer only speaks the wire format; the work is done by a :class:`Stage2Backend`, normally
:class:`synchuman.pipelines.stage2.Stage2Pipeline`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from services.common.stage_io import (
    InvalidInput,
    blob_chunks,
    blob_header,
    decode_image,
    decode_images,
    receive_blobs,
    upload_chunks,
    voxels_from_proto,
)
from services.common.stage_runtime import BackendInfo, OutputRejected, StageRuntime, guard
from synchuman.options import OptionError
from synchuman.pipelines.handoff import Stage2Inputs
from synchuman.pipelines.stage2_types import (
    OutputReport,
    Severity,
    Stage2Options,
    Stage2OutputRejected,
    Stage2Progress,
    Stage2Result,
)
from synchuman.v1 import common_pb2, stage2_pb2, stage2_pb2_grpc

log = logging.getLogger(__name__)

CONDITIONING = "conditioning.png"
VIEWS = tuple(f"{kind}_{i}.png" for kind in ("color", "normal") for i in range(5))
MAX_INPUT_BYTES = 16 << 20
GLB = "person.glb"

#: Extra outputs the stage produces, by wire enum; the GLB is always made and the multiview PNGs are stage-1
#: outputs that the caller already holds.
_EXTRA_BY_FORMAT = {
    common_pb2.OUTPUT_FORMAT_GAUSSIAN_PLY: "gaussians.ply",
    common_pb2.OUTPUT_FORMAT_OBJ: "mesh_obj.zip",
}
_PASSIVE_FORMATS = (common_pb2.OUTPUT_FORMAT_GLB, common_pb2.OUTPUT_FORMAT_MULTIVIEW_PNG)
#: wire bake mode -> pipeline bake mode ("" = unset: the pipeline default)
_BAKE_MODES = {
    common_pb2.BAKE_MODE_UNSPECIFIED: "",
    common_pb2.BAKE_MODE_FAST: "fast",
    common_pb2.BAKE_MODE_OPTIMIZE: "opt",
}
_FORMAT_BY_EXTRA = {name: fmt for fmt, name in _EXTRA_BY_FORMAT.items()}
_MEDIA_TYPES = {
    GLB: "model/gltf-binary",
    "gaussians.ply": "application/x-ply",
    "mesh_obj.zip": "application/zip",
}
_SEVERITY = {
    Severity.INFO: common_pb2.SEVERITY_INFO,
    Severity.WARNING: common_pb2.SEVERITY_WARNING,
    Severity.ERROR: common_pb2.SEVERITY_ERROR,
}


class Stage2Backend(Protocol):
    """The loaded stage-2 pipeline as the service uses it."""

    info: BackendInfo
    voxel_resolution: int

    def reconstruct(
        self,
        inputs: Stage2Inputs,
        options: Stage2Options,
        progress: Stage2Progress,
        should_stop: Callable[[], bool],
    ) -> Stage2Result:
        """Run stage 2; call ``progress(phase, step, total)``; stop (raising) when ``should_stop()``."""
        ...


def options_from_proto(options: common_pb2.ReconstructionOptions) -> Stage2Options:
    """Fill defaults for unset fields and check ranges (raises :class:`InvalidInput` naming the field)."""
    defaults = Stage2Options()
    values: dict[str, Any] = {}
    for name in (
        "seed",
        "steps",
        "guidance_scale",
        "texture_size",
        "simplify_ratio",
        "bake_steps",
        "visibility_views",
    ):
        values[name] = getattr(options, name) if options.HasField(name) else getattr(defaults, name)
    if options.bake_mode not in _BAKE_MODES:
        raise InvalidInput("start.options.bake_mode", f"unknown bake mode {options.bake_mode}")
    values["bake_mode"] = _BAKE_MODES[options.bake_mode] or defaults.bake_mode
    unknown = [f for f in options.outputs if f not in _EXTRA_BY_FORMAT and f not in _PASSIVE_FORMATS]
    if unknown:
        raise InvalidInput("start.options.outputs", f"unknown output formats {unknown}")
    values["outputs"] = tuple(sorted({_EXTRA_BY_FORMAT[f] for f in options.outputs if f in _EXTRA_BY_FORMAT}))
    try:
        return Stage2Options(**values).validate()
    except OptionError as exc:
        raise InvalidInput(f"start.options.{exc.field}", exc.message) from exc


def options_to_proto(options: Stage2Options) -> common_pb2.ReconstructionOptions:
    """The effective options as sent back in the result."""
    return common_pb2.ReconstructionOptions(
        seed=options.seed,
        steps=options.steps,
        guidance_scale=options.guidance_scale,
        texture_size=options.texture_size,
        simplify_ratio=options.simplify_ratio,
        bake_steps=options.bake_steps,
        bake_mode=next(k for k, v in _BAKE_MODES.items() if v == options.bake_mode),
        visibility_views=options.visibility_views,
        outputs=[common_pb2.OUTPUT_FORMAT_GLB] + [_FORMAT_BY_EXTRA[name] for name in options.outputs],
    )


def report_to_proto(report: OutputReport) -> common_pb2.OutputQualityReport:
    """The output quality report on the wire."""
    return common_pb2.OutputQualityReport(
        vertex_count=report.vertex_count,
        face_count=report.face_count,
        texture_coverage=report.texture_coverage,
        non_manifold_edge_fraction=report.non_manifold_edge_fraction,
        glb_size_bytes=report.glb_size_bytes,
        issues=[
            common_pb2.QualityIssue(severity=_SEVERITY[f.severity], code=f.code, message=f.message)
            for f in report.findings
        ],
    )


class Stage2Servicer(stage2_pb2_grpc.Stage2ServiceServicer):
    """Receives voxels, views and the conditioning crop; streams progress, the GLB (+ extras) and the
    report.
    """

    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime

    def GetInfo(
        self, request: stage2_pb2.Stage2ServiceGetInfoRequest, context: grpc.ServicerContext
    ) -> stage2_pb2.Stage2ServiceGetInfoResponse:
        return stage2_pb2.Stage2ServiceGetInfoResponse(
            info=self._runtime.model_info(self._runtime.backend(context).info)
        )

    def Reconstruct(
        self, request_iterator: Iterator[stage2_pb2.ReconstructRequest], context: grpc.ServicerContext
    ) -> Iterator[stage2_pb2.ReconstructResponse]:
        return guard("stage2", context, self._reconstruct(request_iterator, context))

    def _reconstruct(
        self, requests: Iterator[stage2_pb2.ReconstructRequest], context: grpc.ServicerContext
    ) -> Iterator[stage2_pb2.ReconstructResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "start":
            raise InvalidInput(
                "start", "the first message must be `start` (job id, options, voxels, input headers)"
            )
        start = first.start
        backend: Stage2Backend = self._runtime.backend(context)
        options = options_from_proto(start.options)
        coords = voxels_from_proto(start.structure, backend.voxel_resolution)
        blobs = receive_blobs(start.inputs, upload_chunks(requests), (CONDITIONING, *VIEWS), MAX_INPUT_BYTES)
        views = decode_images({name: blobs[name] for name in VIEWS}, (768, 768), 3)
        inputs = Stage2Inputs(
            coords=coords,
            colors=tuple(views[f"color_{i}.png"] for i in range(5)),
            normals=tuple(views[f"normal_{i}.png"] for i in range(5)),
            conditioning=decode_image(CONDITIONING, blobs[CONDITIONING], (518, 518), 3),
        )
        started = time.monotonic()  # the request's server-side wall time (queue included)

        def work(report: Callable[[Any], None], should_stop: Callable[[], bool]) -> Stage2Result:
            return backend.reconstruct(
                inputs, options, lambda phase, step, total: report((phase, step, total)), should_stop
            )

        def progress(item: tuple[str, int, int], elapsed_s: float) -> stage2_pb2.ReconstructResponse:
            phase, step, total = item
            return stage2_pb2.ReconstructResponse(
                progress=common_pb2.ProgressEvent(
                    stage=common_pb2.STAGE_RECONSTRUCTION,
                    phase=phase,
                    step=step,
                    total_steps=total,
                    elapsed_seconds=elapsed_s,
                )
            )

        try:
            result = yield from self._runtime.run_job(context, start.job_id, work, progress)
        except Stage2OutputRejected as exc:
            raise OutputRejected(exc.code, f"the reconstruction is unusable: {exc}") from exc
        phases = {name: round(seconds, 3) for name, seconds in result.phase_seconds.items()}
        peaks = {name: round(gib, 2) for name, gib in result.phase_peak_gib.items()}
        log.info(
            "reconstruction phases",
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
        headers = []
        for name, data in ((GLB, result.glb), *sorted(result.extra_files.items())):
            header = blob_header(name, _MEDIA_TYPES.get(name, "application/octet-stream"), data)
            headers.append(header)
            yield stage2_pb2.ReconstructResponse(blob=header)
            for chunk in blob_chunks(name, data):
                yield stage2_pb2.ReconstructResponse(chunk=chunk)
        yield stage2_pb2.ReconstructResponse(
            result=stage2_pb2.ReconstructResult(
                report=report_to_proto(result.report),
                outputs=headers,
                effective_options=options_to_proto(options),
                seconds=time.monotonic() - started,
                phase_seconds=result.phase_seconds,
            )
        )
