"""The stages of a job as one table (:data:`STAGE_TABLE`) that the job loop walks in order.

For each stage the table says which stored files the stage needs, how the stage service is called, which files
it stores and which report of the job it fills in. All files of a job live in its artifact store under fixed
names (the photo is ``"input"``). A stage's last output, its *result file*, is written last, so its presence
marks the stage as complete: a job interrupted by a restart resumes at the first stage without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from gateway.artifacts import ArtifactStore, media_type
from gateway.events import now_timestamp
from gateway.stages import CallHandle, Progress, StageClients, StageOutput
from gateway.store import Job
from services.common.stage_io import blob_header
from synchuman.pipelines.handoff import VIEW_FILES
from synchuman.v1 import common_pb2, reconstruction_pb2

#: ``(clients, job, inputs, on_progress, handle)`` -> the stage's output; ``inputs`` maps the names in
#: :attr:`StageStep.inputs` to the stored bytes.
StageCall = Callable[[StageClients, Job, dict[str, bytes], Progress, CallHandle], StageOutput]


def _report_json(result: Any) -> bytes:
    return json_format.MessageToJson(result.report).encode()


def _voxels(result: Any) -> bytes:
    return result.structure.SerializeToString()


def _call_preprocess(
    clients: StageClients, job: Job, inputs: dict[str, bytes], on_progress: Progress, handle: CallHandle
) -> StageOutput:
    return clients.preprocess(job.id, inputs["input"], job.options.preprocess, on_progress, handle)


def _call_stage1(
    clients: StageClients, job: Job, inputs: dict[str, bytes], on_progress: Progress, handle: CallHandle
) -> StageOutput:
    return clients.stage1(job.id, inputs, job.options.multiview, on_progress, handle)


def _call_stage2(
    clients: StageClients, job: Job, inputs: dict[str, bytes], on_progress: Progress, handle: CallHandle
) -> StageOutput:
    structure = common_pb2.VoxelStructure.FromString(inputs.pop("voxels.bin"))
    return clients.stage2(job.id, structure, inputs, job.options.reconstruction, on_progress, handle)


@dataclass(frozen=True)
class StageStep:
    """One stage of a job.

    ``stage``: the ``synchuman.v1.Stage`` value; ``name``: its key in ``Job.attempts``, logs and metrics;
    ``inputs``: stored files the call needs, in upload order; ``call``: the stage-service call;
    ``outputs``: files the stage stores, its result file last; ``encode_result``: the result file's bytes
    from the stage's result message; ``report_field``: the ``Job`` field that gets ``result.report`` (the
    result file then is that report as JSON), "" for none; ``options_field``: the ``JobOptions`` field of
    ``Job.effective_options`` that gets ``result.effective_options``, "" for none.
    """

    stage: int
    name: str
    inputs: tuple[str, ...]
    call: StageCall
    outputs: tuple[str, ...]
    encode_result: Callable[[Any], bytes]
    report_field: str = ""
    options_field: str = ""

    @property
    def result_file(self) -> str:
        """The file written last, which marks the stage as complete."""
        return self.outputs[-1]

    def load_inputs(self, job_id: str, artifacts: ArtifactStore) -> dict[str, bytes]:
        """The stored files the call needs (name -> bytes, in :attr:`inputs` order)."""
        return {name: artifacts.get(job_id, name) for name in self.inputs}

    def store_outputs(self, job: Job, output: StageOutput, artifacts: ArtifactStore) -> None:
        """Write the stage's files (the result file last), list them in ``job`` and fill its report."""
        files = dict(output.blobs)
        files[self.result_file] = self.encode_result(output.result)
        if self.report_field:
            getattr(job, self.report_field).CopyFrom(output.result.report)
        if self.options_field:
            getattr(job.effective_options, self.options_field).CopyFrom(output.result.effective_options)
        now = now_timestamp()
        for name in sorted(files, key=lambda n: n == self.result_file):
            header = artifacts.put(job.id, name, files[name], output.media.get(name, ""))
            _list_artifact(job, reconstruction_pb2.Artifact(blob=header, stage=self.stage, create_time=now))

    def adopt_outputs(self, job: Job, artifacts: ArtifactStore) -> None:
        """List the stage's already stored files in ``job`` and fill its report from them (after a restart
        between writing the files and recording the job)."""
        listed = {a.blob.name for a in job.artifacts}
        now = now_timestamp()
        for name in self.outputs:
            if name not in listed and artifacts.has(job.id, name):
                header = blob_header(name, media_type(name), artifacts.get(job.id, name))
                artifact = reconstruction_pb2.Artifact(blob=header, stage=self.stage, create_time=now)
                _list_artifact(job, artifact)
        if self.report_field and not job.HasField(self.report_field):
            json_format.Parse(artifacts.get(job.id, self.result_file), getattr(job, self.report_field))


def _list_artifact(job: Job, artifact: reconstruction_pb2.Artifact) -> None:
    """Add ``artifact`` to ``job.artifacts``, replacing a listed one of the same name."""
    for i, existing in enumerate(job.artifacts):
        if existing.blob.name == artifact.blob.name:
            job.artifacts[i].CopyFrom(artifact)
            return
    job.artifacts.append(artifact)


#: The stages in the order a job runs them.
STAGE_TABLE = (
    StageStep(
        stage=common_pb2.STAGE_PREPROCESS,
        name="preprocess",
        inputs=("input",),
        call=_call_preprocess,
        outputs=("framed.png", "conditioning.png", "mask.png", "input_report.json"),
        encode_result=_report_json,
        report_field="input_report",
    ),
    StageStep(
        stage=common_pb2.STAGE_MULTIVIEW,
        name="multiview",
        inputs=("framed.png", "conditioning.png"),
        call=_call_stage1,
        outputs=(*VIEW_FILES, "voxels.bin"),
        encode_result=_voxels,
        options_field="multiview",
    ),
    StageStep(
        stage=common_pb2.STAGE_RECONSTRUCTION,
        name="reconstruction",
        inputs=("conditioning.png", *VIEW_FILES, "voxels.bin"),
        call=_call_stage2,
        outputs=("person.glb", "gaussians.ply", "mesh_obj.zip", "output_report.json"),
        encode_result=_report_json,
        report_field="output_report",
        options_field="reconstruction",
    ),
)


def stage_name(stage: int) -> str:
    """The table name of a ``synchuman.v1.Stage`` value ("" for none)."""
    return next((step.name for step in STAGE_TABLE if step.stage == stage), "")
