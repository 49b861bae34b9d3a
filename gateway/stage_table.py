"""The stages of a job as one table (:data:`STAGE_TABLE`) that the job loop walks in order.

For each stage the table adds to its :mod:`synchuman.stage_catalog` entry (the stored files it needs and
the files it stores) how the gateway keeps its result: the result file's bytes and which report of the job it
fills in. All files of a job live in its artifact store under fixed
names (the photo is ``"input"``). A stage's last output, its *result file*, is written last, so its presence
marks the stage as complete: a job interrupted by a restart resumes at the first stage without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from gateway.artifacts import ArtifactStore
from gateway.events import now_timestamp
from gateway.stages import CallHandle, EventSink, StageClients, StageOutput
from gateway.store import Job
from services.common.stage_io import blob_header
from synchuman.stage_catalog import MULTIVIEW, PREPROCESS, RECONSTRUCTION, StageEntry, media_type
from synchuman.v1 import reconstruction_pb2


def _report_json(result: Any) -> bytes:
    return json_format.MessageToJson(result.report).encode()


def _voxels(result: Any) -> bytes:
    return result.structure.SerializeToString()


@dataclass(frozen=True)
class StageStep:
    """One stage of a job: its catalog ``entry`` (name, ``synchuman.v1.Stage`` value, files) and how the
    gateway keeps its result.

    ``encode_result``: the result file's bytes from the stage's result message; ``report_field``: the ``Job``
    field that gets ``result.report`` (the result file then is that report as JSON), "" for none;
    ``keeps_options``: whether ``result.effective_options`` goes to ``Job.effective_options`` (under the
    stage's name).
    """

    entry: StageEntry
    encode_result: Callable[[Any], bytes]
    report_field: str = ""
    keeps_options: bool = False

    @property
    def stage(self) -> int:
        """The ``synchuman.v1.Stage`` value."""
        return self.entry.stage

    @property
    def name(self) -> str:
        """The stage's name: its key in ``Job.attempts``, logs and metrics."""
        return self.entry.name

    @property
    def inputs(self) -> tuple[str, ...]:
        """Stored files the call needs, in upload order."""
        return tuple(file.name for file in self.entry.inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Files the stage stores, its result file last."""
        return tuple(file.name for file in self.entry.stored_files)

    @property
    def result_file(self) -> str:
        """The file written last, which marks the stage as complete."""
        return self.entry.result_file.name

    def load_inputs(self, job_id: str, artifacts: ArtifactStore) -> dict[str, bytes]:
        """The stored files the call needs (name -> bytes, in :attr:`inputs` order)."""
        return {name: artifacts.get(job_id, name) for name in self.inputs}

    def call(
        self,
        clients: StageClients,
        job: Job,
        inputs: dict[str, bytes],
        on_event: EventSink,
        handle: CallHandle,
    ) -> StageOutput:
        """Call the stage's service for ``job`` with its stored ``inputs`` (:meth:`load_inputs`)."""
        return clients.call(self.entry, job.id, inputs, job.options, on_event, handle)

    def store_outputs(self, job: Job, output: StageOutput, artifacts: ArtifactStore) -> None:
        """Write the stage's files (the result file last), list them in ``job`` and fill its report."""
        files = dict(output.blobs)
        files[self.result_file] = self.encode_result(output.result)
        if self.report_field:
            getattr(job, self.report_field).CopyFrom(output.result.report)
        if self.keeps_options:
            getattr(job.effective_options, self.name).CopyFrom(output.result.effective_options)
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
    StageStep(PREPROCESS, _report_json, report_field="input_report"),
    StageStep(MULTIVIEW, _voxels, keeps_options=True),
    StageStep(RECONSTRUCTION, _report_json, report_field="output_report", keeps_options=True),
)


def stage_name(stage: int) -> str:
    """The name of a ``synchuman.v1.Stage`` value ("" for none)."""
    return next((step.name for step in STAGE_TABLE if step.stage == stage), "")
