"""The shared service plumbing: one backend shape, blob reassembly on the client side, option conversions."""

from __future__ import annotations

import importlib
import inspect

import pytest
from stage_doubles import FakeStage1, start_server

from services.common.backend import StageBackend
from services.common.conversions import (
    progress_event,
    stage1_options_from_proto,
    stage1_options_to_proto,
    stage2_options_from_proto,
)
from services.common.stage_io import (
    BlobAssembler,
    BlobMismatch,
    InvalidInput,
    blob_chunks,
    blob_header,
    read_start,
    upload_messages,
)
from services.common.stage_runtime import StageLimits
from synchuman.options import Stage1Options
from synchuman.v1 import common_pb2, stage1_pb2

BACKENDS = {
    "preprocess": "PreprocessBackend",
    "stage1": "Stage1PipelineBackend",
    "stage2": "Stage2PipelineBackend",
}


@pytest.mark.parametrize("stage", sorted(BACKENDS))
def test_every_service_backend_has_the_one_shape(stage: str) -> None:
    backend = getattr(importlib.import_module(f"services.{stage}.backend"), BACKENDS[stage])
    for name in ("info", "warm_up", "run", "close"):
        protocol = inspect.signature(getattr(StageBackend, name))
        assert list(inspect.signature(getattr(backend, name)).parameters) == list(protocol.parameters), name
    assert callable(backend.load)


def test_stopping_a_stage_server_closes_its_backend_after_the_drain() -> None:
    backend = FakeStage1()
    server = start_server("stage1", backend, StageLimits())
    assert not backend.closed
    server.stop()
    assert backend.closed


def _stream(blobs: dict[str, bytes], chunk_bytes: int = 4) -> list:
    messages = []
    for name, data in blobs.items():
        messages.append(("header", blob_header(name, "application/octet-stream", data)))
        messages += [("chunk", chunk) for chunk in blob_chunks(name, data, chunk_bytes)]
    return messages


def _assemble(messages: list) -> dict[str, bytes]:
    assembler = BlobAssembler()
    for kind, message in messages:
        if kind == "header":
            assembler.add_header(message)
        else:
            assembler.add_chunk(message)
    return assembler.finish()


def test_blob_assembler_reassembles_and_checks_every_blob() -> None:
    blobs = {"a.bin": b"0123456789", "empty": b"", "b.bin": b"xyz"}
    assert _assemble(_stream(blobs)) == blobs
    messages = _stream(blobs)
    messages[1], messages[2] = messages[2], messages[1]  # two chunks of a.bin swapped
    with pytest.raises(BlobMismatch, match="out of order"):
        _assemble(messages)
    truncated = [m for m in _stream(blobs) if not (m[0] == "chunk" and m[1].offset == 8)]
    with pytest.raises(BlobMismatch, match="ended after 8 of 10"):
        _assemble(truncated)
    corrupted = _stream(blobs)
    corrupted[1] = ("chunk", common_pb2.BlobChunk(name="a.bin", offset=0, data=b"X123"))
    with pytest.raises(BlobMismatch, match="SHA-256"):
        _assemble(corrupted)


def test_upload_messages_start_then_chunks_and_read_start_refuses_anything_else() -> None:
    start = stage1_pb2.GenerateViewsStart(job_id="j")
    requests = list(upload_messages(stage1_pb2.GenerateViewsRequest, start, {"x": b"a" * ((1 << 20) + 1)}))
    assert [r.WhichOneof("payload") for r in requests] == ["start", "chunk", "chunk"]
    assert read_start(iter(requests), "job id").job_id == "j"
    for stream in ([], requests[1:]):
        with pytest.raises(InvalidInput, match="first message must be `start` \\(job id\\)") as error:
            read_start(iter(stream), "job id")
        assert error.value.field == "start"


def test_options_conversions_fill_defaults_and_name_the_request_field() -> None:
    assert stage1_options_from_proto(common_pb2.MultiviewOptions()) == Stage1Options()
    chosen = Stage1Options(seed=3, steps=7, guidance_scale=2.5)
    assert stage1_options_from_proto(stage1_options_to_proto(chosen)) == chosen
    with pytest.raises(InvalidInput) as error:
        stage1_options_from_proto(common_pb2.MultiviewOptions(steps=0), "options.multiview")
    assert error.value.field == "options.multiview.steps" and "1 to 200" in str(error.value)
    with pytest.raises(InvalidInput) as error:
        stage2_options_from_proto(common_pb2.ReconstructionOptions(bake_mode=99))
    assert error.value.field == "start.options.bake_mode" and "BAKE_MODE_FAST" in str(error.value)
    event = progress_event(common_pb2.STAGE_MULTIVIEW, "sampling", 2, 5, elapsed_s=1.5)
    assert (event.phase, event.step, event.total_steps, event.elapsed_seconds) == ("sampling", 2, 5, 1.5)
