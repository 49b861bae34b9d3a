"""The stage catalog (issue 24, item 2) agrees with the protos, the checkpoint sections, the stages'
options and with what the stage services really send; the gateway keeps its media types on a resumed job."""

from __future__ import annotations

import grpc
import pytest
from stage_doubles import (
    FakeStage1,
    FakeStage2,
    channel,
    stage1_inputs,
    stage1_requests,
    stage2_requests,
    start_server,
)
from test_preprocess_service import cutout, requests, start
from test_stage_services import STRUCTURE, stage2_inputs

from gateway.artifacts_file import FileArtifactStore
from gateway.stage_table import STAGE_TABLE
from gateway.stages import StageFailure
from services.common.endpoints import DEFAULT_PORTS, HEALTH_SERVICES, STAGE_SERVICES
from services.common.stage_runtime import StageLimits
from synchuman.checkpoints.verify import SECTIONS
from synchuman.options import EXTRA_OUTPUTS, PREVIEW_FILES
from synchuman.stage_catalog import MULTIVIEW, PREPROCESS, RECONSTRUCTION, STAGES, StageEntry, stage_entry
from synchuman.v1 import (
    common_pb2,
    preprocess_pb2_grpc,
    reconstruction_pb2,
    stage1_pb2_grpc,
    stage2_pb2_grpc,
)
from synchuman.v1.common_pb2 import DESCRIPTOR as COMMON


def test_each_stage_is_its_stage_value_options_field_and_grpc_service():
    assert [entry.stage for entry in STAGES] == [v for v in common_pb2.Stage.values() if v]
    for entry in STAGES:
        assert common_pb2.Stage.Name(entry.stage) == f"STAGE_{entry.name.upper()}"
        assert stage_entry(entry.stage) is entry
        field = common_pb2.JobOptions.DESCRIPTOR.fields_by_name[entry.name]
        assert field.message_type.name == entry.options_message
        assert COMMON.pool.FindServiceByName(entry.grpc_service)
        assert HEALTH_SERVICES[entry.service] == entry.grpc_service
        assert DEFAULT_PORTS[entry.service] == entry.default_port
        assert STAGE_SERVICES[entry.service] == entry.stage
    assert [step.name for step in STAGE_TABLE] == [entry.name for entry in STAGES]
    with pytest.raises(KeyError):
        stage_entry(common_pb2.STAGE_UNSPECIFIED)


def test_checkpoint_sections_inputs_and_optional_outputs_are_consistent():
    for entry in STAGES:
        assert set(entry.checkpoint_sections) <= set(SECTIONS), entry.name
        assert len({f.name for f in entry.stored_files}) == len(entry.stored_files), entry.name
    produced: set[str] = {"input"}  # the photo, stored at submission
    for entry in STAGES:
        assert {f.name for f in entry.inputs} <= produced, entry.name
        produced |= {f.name for f in entry.stored_files}
    assert RECONSTRUCTION.optional_outputs == set(EXTRA_OUTPUTS) | set(PREVIEW_FILES)
    assert all(not entry.optional_outputs for entry in (PREPROCESS, MULTIVIEW))


def _sent(responses: list) -> dict[str, str]:
    """Name -> media type of every blob header in a stage's responses."""
    return {r.blob.name: r.blob.media_type for r in responses if r.WhichOneof("payload") == "blob"}


def _assert_catalogued(entry: StageEntry, sent: dict[str, str]) -> None:
    assert sent == {f.name: f.media_type for f in entry.outputs}, entry.name


def test_preprocess_sends_the_catalogued_files(segmenter_dir):
    server = start(segmenter_dir)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = preprocess_pb2_grpc.PreprocessServiceStub(ch)
            responses = list(stub.Preprocess(requests(cutout()), timeout=60))
    finally:
        server.stop()
    _assert_catalogued(PREPROCESS, _sent(responses))


def test_stage1_sends_the_catalogued_files():
    server = start_server("stage1", FakeStage1(), StageLimits())
    try:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
        responses = list(stub.GenerateViews(stage1_requests(stage1_inputs()), timeout=30))
    finally:
        server.stop()
    _assert_catalogued(MULTIVIEW, _sent(responses))


def test_stage2_sends_the_catalogued_files_every_extra_included():
    server = start_server("stage2", FakeStage2(glb_bytes=1000), StageLimits())
    formats = [v for v in common_pb2.OutputFormat.values() if v]  # every format: GLB and views ask nothing
    options = common_pb2.ReconstructionOptions(steps=1, outputs=formats)
    try:
        stub = stage2_pb2_grpc.Stage2ServiceStub(channel(server))
        responses = list(stub.Reconstruct(stage2_requests(stage2_inputs(), STRUCTURE, options), timeout=30))
    finally:
        server.stop()
    _assert_catalogued(RECONSTRUCTION, _sent(responses))


def test_a_stage_error_names_the_stage_once_by_its_catalog_name():
    """The service labels its errors with the stage's name and the gateway keeps that label (it used to add
    its own: "multiview: stage1: ...")."""
    server = start_server("stage1", FakeStage1(), StageLimits())
    try:
        stub = stage1_pb2_grpc.Stage1ServiceStub(channel(server))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GenerateViews(stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=0))))
    finally:
        server.stop()
    assert err.value.details().startswith(f"{MULTIVIEW.name}: ")
    failure = StageFailure.from_rpc_error(MULTIVIEW.name, err.value)
    assert failure.status.message == err.value.details() and MULTIVIEW.service not in failure.status.message


def test_a_resumed_job_lists_its_files_with_the_catalogued_media_types(tmp_path):
    """adopt_outputs (after a restart between storing the files and recording the job) labels each file as
    the stage sent it, not by a guess from its extension."""
    artifacts = FileArtifactStore(tmp_path)
    step = STAGE_TABLE[-1]
    for file in RECONSTRUCTION.outputs:
        artifacts.put("job1", file.name, b"x")
    artifacts.put("job1", step.result_file, b"{}")
    job = reconstruction_pb2.Job(id="job1")
    step.adopt_outputs(job, artifacts)
    listed = {a.blob.name: a.blob.media_type for a in job.artifacts}
    assert listed == {f.name: f.media_type for f in RECONSTRUCTION.stored_files}
    assert listed["gaussians.ply"] == "application/x-ply"
