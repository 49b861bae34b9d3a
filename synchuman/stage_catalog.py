"""The stages of a job as plain data: one :class:`StageEntry` per stage, in the order a job runs them.

Everything the code needs to know about a stage is said once here: the one name it goes by in code, logs,
metrics and errors (also its ``JobOptions`` field and ``Job.attempts`` key on the wire), its
``synchuman.v1.Stage`` value, the service that runs it and where that listens by default, the files it takes
and produces with their media types, its closed list of progress phases, its options message and the
checkpoint sections it loads. The gateway, the stage services, the endpoints and the progress phases read
it; ``tests/test_stage_catalog.py`` checks it against the generated protos and against what the stage
services really send.

The stage's *name* (``preprocess``, ``multiview``, ``reconstruction``) is the step of the job; its
*service* (``preprocess``, ``stage1``, ``stage2``) is the process that runs it (``synchuman serve stage1``,
the compose and Kubernetes service, the ``server`` label of its RPC metrics).

Plain data only: no gRPC, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from synchuman.pipelines.handoff import VIEW_FILES

PNG = "image/png"
JSON = "application/json"
#: Media type of files without a more specific one (the photo as uploaded, the voxel structure).
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class StageFile:
    """A file a stage takes or produces: its name in the job's artifact store and its media type."""

    name: str
    media_type: str


@dataclass(frozen=True)
class StageEntry:
    """One stage of a job.

    ``name``: the stage's one name (code, logs, metrics, errors; the ``JobOptions`` field of its options and
    its ``Job.attempts`` key); ``stage``: its ``synchuman.v1.Stage`` value; ``service``: the service that runs
    it; ``proto_service``: that service's name in the protos (:attr:`grpc_service` is its full name);
    ``default_port``: where the service listens by default; ``inputs``: the stored files a call needs, in
    upload order; ``outputs``: the files the service sends, in the order it sends them
    (``optional_outputs`` among them only when asked for); ``result_file``: the file the gateway writes
    last from the stage's result message (its presence marks the stage as done); ``phases``: the closed list
    of its progress phases, in the order they run; ``options_message``: the proto message of its options;
    ``checkpoint_sections``: the sections of the checkpoint tree it loads
    (:mod:`synchuman.checkpoints.verify`).
    """

    name: str
    stage: int
    service: str
    proto_service: str
    default_port: int
    inputs: tuple[StageFile, ...]
    outputs: tuple[StageFile, ...]
    result_file: StageFile
    phases: tuple[str, ...]
    options_message: str
    checkpoint_sections: tuple[str, ...]
    optional_outputs: frozenset[str] = frozenset()

    @property
    def grpc_service(self) -> str:
        """The full name of the stage's gRPC service (what its health check and server reflection report)."""
        return f"synchuman.v1.{self.proto_service}"

    @property
    def stored_files(self) -> tuple[StageFile, ...]:
        """Every file the stage leaves in the job's store: its outputs, then its result file."""
        return (*self.outputs, self.result_file)


def _pngs(*names: str) -> tuple[StageFile, ...]:
    return tuple(StageFile(name, PNG) for name in names)


PREPROCESS = StageEntry(
    name="preprocess",
    stage=1,
    service="preprocess",
    proto_service="PreprocessService",
    default_port=50052,
    inputs=(StageFile("input", BINARY),),
    outputs=_pngs("framed.png", "conditioning.png", "mask.png"),
    result_file=StageFile("input_report.json", JSON),
    phases=("decode", "segment", "frame"),
    options_message="PreprocessOptions",
    checkpoint_sections=("segmentation",),
)

MULTIVIEW = StageEntry(
    name="multiview",
    stage=2,
    service="stage1",
    proto_service="Stage1Service",
    default_port=50053,
    inputs=_pngs("framed.png", "conditioning.png"),
    outputs=_pngs(*VIEW_FILES),
    result_file=StageFile("voxels.bin", BINARY),
    phases=("sampling",),
    options_message="MultiviewOptions",
    checkpoint_sections=("dinov2", "stage1"),
)

#: The phases of the post-processing (:mod:`synchuman.postprocess.pipeline`), near the end of stage 2's.
POSTPROCESS_PHASES = ("decimate", "visibility", "cut_fill", "uv_atlas", "gaussian_render", "bake", "export")
#: Stage 2's last phase, run only when the rigged GLB is asked for (:mod:`synchuman.pipelines.stage2_rig`).
RIG_PHASE = "rig"

RECONSTRUCTION = StageEntry(
    name="reconstruction",
    stage=3,
    service="stage2",
    proto_service="Stage2Service",
    default_port=50054,
    inputs=(*_pngs("conditioning.png", *VIEW_FILES), MULTIVIEW.result_file),
    outputs=(
        StageFile("person.glb", "model/gltf-binary"),
        StageFile("gaussians.ply", "application/x-ply"),
        StageFile("mesh_obj.zip", "application/zip"),
        StageFile("person.usdz", "model/vnd.usdz+zip"),
        StageFile("preview.png", PNG),
        StageFile("turntable.mp4", "video/mp4"),
        StageFile("turntable.webp", "image/webp"),
        StageFile("person_rigged.glb", "model/gltf-binary"),
    ),
    result_file=StageFile("output_report.json", JSON),
    phases=("condition", "sampling", "multiview_features", "decode", *POSTPROCESS_PHASES, RIG_PHASE),
    options_message="ReconstructionOptions",
    checkpoint_sections=("dinov2", "stage2"),
    optional_outputs=frozenset(
        {
            "gaussians.ply",
            "mesh_obj.zip",
            "person.usdz",
            "preview.png",
            "turntable.mp4",
            "turntable.webp",
            "person_rigged.glb",
        }
    ),
)

#: The stages in the order a job runs them.
STAGES = (PREPROCESS, MULTIVIEW, RECONSTRUCTION)

#: Media type of every file a stage takes or produces, by file name.
MEDIA_TYPES = {
    file.name: file.media_type for entry in STAGES for file in (*entry.inputs, *entry.stored_files)
}


def stage_entry(stage: int) -> StageEntry:
    """The entry of a ``synchuman.v1.Stage`` value; ``KeyError`` for a value no stage has."""
    for entry in STAGES:
        if entry.stage == stage:
            return entry
    raise KeyError(f"no stage has the value {stage}")


def media_type(name: str) -> str:
    """The media type of a stage's file (``application/octet-stream`` for a name no stage has)."""
    return MEDIA_TYPES.get(name, BINARY)
