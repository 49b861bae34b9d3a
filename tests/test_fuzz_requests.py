"""Property-based fuzzing (hypothesis) of everything a client's bytes reach (issue 17, finding 12): the upload
decoders, the blob reassembly, and every request message of the four services over real gRPC (gateway with
the stage doubles, stage 1/2 servicers with fake backends, the preprocess service with its real backend).

Random and invalid field values (every integer of the field's wire range, unknown enum numbers, NaN and
infinite floats, any text, random bytes, random chunk streams) must never crash a decoder with anything but
its own error type, and never give UNKNOWN, INTERNAL or DATA_LOSS; out-of-range options give
INVALID_ARGUMENT. Bounded for CI: ``FUZZ_EXAMPLES`` examples per target (default 40; decoders 5x that).
"""

from __future__ import annotations

import argparse
import io
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from stage_doubles import FakeStage1, FakeStage2, png, start_server, upload
from test_gateway import Stack, photo

from gateway.errors import JobError
from gateway.upload_checks import checked_photo_media_type
from services.common.conversions import (
    preprocess_options_from_proto,
    stage1_options_from_proto,
    stage2_options_from_proto,
)
from services.common.servicer import MAX_ID_CHARS, checked_id
from services.common.stage_io import (
    BlobAssembler,
    BlobMismatch,
    InvalidInput,
    blob_chunks,
    blob_header,
    blob_mismatch,
    receive_blobs,
)
from services.common.stage_io import decode_image as decode_view
from services.common.stage_runtime import StageLimits
from services.common.stage_server import StageServer
from services.preprocess import main as preprocess_main
from synchuman.options import PreprocessOptions
from synchuman.preprocess.decode import decode_image
from synchuman.preprocess.errors import InvalidImageError
from synchuman.v1 import (
    common_pb2,
    preprocess_pb2,
    preprocess_pb2_grpc,
    reconstruction_pb2,
    stage1_pb2,
    stage1_pb2_grpc,
    stage2_pb2,
    stage2_pb2_grpc,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
#: status codes no client input may cause
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}

# -- random messages from the descriptors ------------------------------------------------------------

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
}
_EDGES = (0, 1, 2, 7, 100, 255, 256, 1000, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1)


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Any integer in [low, high], often an edge value."""
    edges = [v for v in _EDGES + tuple(-v for v in _EDGES) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """A value of ``field``'s type, including those the contract calls invalid."""
    kind = field.type
    if kind in _INT_RANGES:
        return integers(*_INT_RANGES[kind])
    if kind == F.TYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]), integers(-(2**31), 2**31 - 1)
        )
    if kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.floats(width=32 if kind == F.TYPE_FLOAT else 64, allow_nan=True, allow_infinity=True)
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_STRING:
        return st.one_of(
            st.text(max_size=40), st.text(max_size=2000), st.sampled_from(["input", "job", "a" * 64])
        )
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=3000)
    return messages(field.message_type, depth + 1)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Random instances of ``descriptor``'s message: any subset of fields set (one per oneof)."""
    cls = GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    fields = [f for f in descriptor.fields if not (f.type == F.TYPE_MESSAGE and depth >= 3)]

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        message = cls()
        chosen_oneofs: set[str] = set()
        for field in fields:
            oneof = field.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                if oneof.name in chosen_oneofs or not draw(st.booleans()):
                    continue
                chosen_oneofs.add(oneof.name)
            elif not draw(st.booleans()):
                continue
            if field.is_repeated:
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    continue
                values = draw(st.lists(field_values(field, depth), max_size=3))
                target = getattr(message, field.name)
                for value in values:
                    target.add().CopyFrom(value) if field.type == F.TYPE_MESSAGE else target.append(value)
            elif field.type == F.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(draw(field_values(field, depth)))
            else:
                setattr(message, field.name, draw(field_values(field, depth)))
        return message

    return build()


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status of ``call()`` (a unary call, or a stream it drains); checks the message has no repr."""
    try:
        call()
    except grpc.RpcError as error:
        assert " object at 0x" not in (error.details() or ""), error.details()
        return error.code()
    return grpc.StatusCode.OK


def assert_no_fault(code: grpc.StatusCode, what: Any) -> None:
    assert code not in SERVER_FAULTS, f"{code} for {what}"


# -- decoders ----------------------------------------------------------------------------------------------


def encoded(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    pixels = np.random.default_rng(size[0] * 31 + size[1]).integers(0, 255, (size[1], size[0], 4), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def hostile_images(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real image cut short, with flipped bytes or with a header claiming any size."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=4000))
    fmt, mode = draw(
        st.sampled_from(
            [
                ("PNG", "RGBA"),
                ("PNG", "P"),
                ("JPEG", "RGB"),
                ("GIF", "P"),
                ("WEBP", "RGB"),
                ("BMP", "RGB"),
                ("TIFF", "RGB"),
                ("PNG", "I;16"),
            ]
        )
    )
    data = bytearray(encoded(fmt, (draw(st.integers(1, 80)), draw(st.integers(1, 80))), mode))
    action = draw(st.sampled_from(["truncate", "flip", "size", "none"]))
    if action == "truncate":
        del data[draw(st.integers(0, len(data))) :]
    elif action == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif action == "size" and fmt == "PNG":
        data[16:24] = struct.pack(">II", draw(integers(0, 2**32 - 1)), draw(integers(0, 2**32 - 1)))
    return bytes(data)


@settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_images())
def test_upload_decoders_raise_only_their_own_errors(data):
    try:
        decoded = decode_image(data)
        assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape[2] == 3
    except InvalidImageError as error:
        assert error.code and " object at 0x" not in str(error)
    try:
        assert checked_photo_media_type(data, 1 << 20)
    except JobError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and " object at 0x" not in error.message
    try:
        view = decode_view("color_0.png", data, (16, 16), 3)
        assert view.shape == (16, 16, 3)
    except InvalidInput as error:
        assert error.field and " object at 0x" not in str(error)


# -- blob reassembly -----------------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "input", ""])


@st.composite
def blob_streams(draw: st.DrawFn) -> tuple[list, list]:
    """Announced headers and a chunk stream: the honest one of real blobs, then randomly damaged."""
    blobs = {name: draw(st.binary(max_size=300)) for name in draw(st.lists(NAMES, max_size=3, unique=True))}
    headers = [blob_header(name, "image/png", data) for name, data in blobs.items()]
    chunks = [c for name, data in blobs.items() for c in blob_chunks(name, data, draw(st.integers(1, 128)))]
    for _ in range(draw(st.integers(0, 3))):
        damage = draw(st.sampled_from(["header", "chunk", "drop", "add", "swap"]))
        if damage == "header" and headers:
            headers[draw(st.integers(0, len(headers) - 1))] = draw(messages(common_pb2.BlobHeader.DESCRIPTOR))
        elif damage == "chunk" and chunks:
            chunks[draw(st.integers(0, len(chunks) - 1))] = draw(messages(common_pb2.BlobChunk.DESCRIPTOR))
        elif damage == "drop" and chunks:
            del chunks[draw(st.integers(0, len(chunks) - 1))]
        elif damage == "add":
            chunks.insert(draw(st.integers(0, len(chunks))), draw(messages(common_pb2.BlobChunk.DESCRIPTOR)))
        elif damage == "swap" and len(chunks) > 1:
            i = draw(st.integers(0, len(chunks) - 2))
            chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
    return headers, chunks, blobs


@FUZZ
@given(blob_streams())
def test_blob_reassembly_accepts_only_what_was_announced(stream):
    headers, chunks, blobs = stream
    required = [h.name for h in headers]
    try:
        received = receive_blobs(headers, chunks, required, 1 << 20)
        assert {n: received[n] for n in required} == {h.name: received[h.name] for h in headers}
    except InvalidInput as error:
        assert error.field
    assembler = BlobAssembler()
    try:
        for header in headers:
            assembler.add_header(header)
            for chunk in (c for c in chunks if c.name == header.name):
                assembler.add_chunk(chunk)
        result = assembler.finish()
        assert all(blob_mismatch(assembler.headers[name], data) == "" for name, data in result.items())
    except BlobMismatch:
        pass


# -- the four services over gRPC ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("fuzz-gateway"), max_pending_jobs=1000)
    yield stack
    stack.close()


def submit_stream(start: Any, tail: list[Any]) -> Iterator[Any]:
    yield reconstruction_pb2.SubmitJobRequest(start=start)
    yield from tail


@FUZZ
@given(
    rpc=st.sampled_from(["WatchJob", "GetJob", "ListJobs", "CancelJob", "DeleteJob", "GetArtifact"]),
    data=st.data(),
)
def test_gateway_unary_and_stream_requests(gateway, rpc, data):
    stub = gateway.stub
    request_type = getattr(reconstruction_pb2, f"{rpc}Request")
    request = data.draw(messages(request_type.DESCRIPTOR))
    method = getattr(stub, rpc)
    streams = rpc in ("WatchJob", "GetArtifact")
    code = code_of(lambda: list(method(request, timeout=5)) if streams else method(request, timeout=5))
    if rpc == "WatchJob" and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return  # a watch of a job still running waits for it; not a fault
    assert_no_fault(code, request)


@FUZZ
@given(
    start=messages(reconstruction_pb2.SubmitJobStart.DESCRIPTOR),
    honest=st.booleans(),
    tail=st.lists(messages(reconstruction_pb2.SubmitJobRequest.DESCRIPTOR), max_size=3),
)
def test_gateway_submit_job(gateway, start, honest, tail):
    if honest:  # a real photo under the random options and key: the options decide the outcome
        image = photo()
        start.image.CopyFrom(blob_header("input", "image/png", image))
        tail = [reconstruction_pb2.SubmitJobRequest(chunk=c) for c in blob_chunks("input", image)]
    code = code_of(lambda: gateway.stub.SubmitJob(submit_stream(start, tail), timeout=10))
    assert_no_fault(code, start)
    if honest:
        try:
            preprocess_options_from_proto(start.options.preprocess, PreprocessOptions())
            stage1_options_from_proto(start.options.multiview)
            stage2_options_from_proto(start.options.reconstruction)
            profiles = gateway.gateway.manager.settings.profiles
            merged = profiles.apply(start.options)  # JobError for an unknown profile
            stage2_options_from_proto(merged.reconstruction)
        except (InvalidInput, JobError):
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        else:
            key_ok = len(start.idempotency_key) <= 128 and all(" " <= c <= "~" for c in start.idempotency_key)
            accepted = key_ok and not start.callback_url  # this gateway sends no webhooks
            assert code == (grpc.StatusCode.OK if accepted else grpc.StatusCode.INVALID_ARGUMENT), start


SOLID = {
    "framed.png": png(np.zeros((768, 768, 4), np.uint8)),
    "conditioning.png": png(np.zeros((518, 518, 3), np.uint8)),
}
VIEWS = {
    name: png(np.full((768, 768, 3), 90, np.uint8))
    for name in [f"{kind}_{i}.png" for kind in ("color", "normal") for i in range(5)]
}
STAGE2_INPUTS = {"conditioning.png": SOLID["conditioning.png"], **VIEWS}


@pytest.fixture(scope="module")
def stage_servers():
    limits = StageLimits(concurrency=2, max_queue=8, grace_s=0.2)
    servers = {
        "stage1": start_server("stage1", FakeStage1(), limits),
        "stage2": start_server("stage2", FakeStage2(glb_bytes=1000), limits),
    }
    yield servers
    for server in servers.values():
        server.stop()


def upload_requests(
    request_type: Any, start: Any, blobs: dict[str, bytes] | None, tail: list[Any]
) -> Iterator[Any]:
    """``start`` announcing ``blobs`` (when given) and their chunks, or ``start`` then the random ``tail``."""
    if blobs is not None:
        headers, chunks = upload(blobs)
        del start.inputs[:]
        start.inputs.extend(headers)
        tail = [request_type(chunk=c) for c in chunks]
    yield request_type(start=start)
    yield from tail


@FUZZ
@given(
    start=messages(stage1_pb2.GenerateViewsStart.DESCRIPTOR),
    honest=st.booleans(),
    tail=st.lists(messages(stage1_pb2.GenerateViewsRequest.DESCRIPTOR), max_size=3),
)
def test_stage1_requests(stage_servers, start, honest, tail):
    stub = stage1_pb2_grpc.Stage1ServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{stage_servers['stage1'].port}")
    )
    if honest and start.options.HasField("steps") and start.options.steps > 20:
        start.options.steps = 201 + start.options.steps % 1000  # keep the fake short; still out of range
    requests = upload_requests(stage1_pb2.GenerateViewsRequest, start, SOLID if honest else None, tail)
    code = code_of(lambda: list(stub.GenerateViews(requests, timeout=20)))
    assert_no_fault(code, start)
    assert (
        code_of(lambda: stub.GetInfo(stage1_pb2.Stage1ServiceGetInfoRequest(), timeout=5))
        == grpc.StatusCode.OK
    )
    if honest:
        try:
            stage1_options_from_proto(start.options)
            checked_id(start, "job_id")
        except InvalidInput:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, start


@FUZZ
@given(
    start=messages(stage2_pb2.ReconstructStart.DESCRIPTOR),
    honest=st.booleans(),
    tail=st.lists(messages(stage2_pb2.ReconstructRequest.DESCRIPTOR), max_size=3),
)
def test_stage2_requests(stage_servers, start, honest, tail):
    stub = stage2_pb2_grpc.Stage2ServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{stage_servers['stage2'].port}")
    )
    if honest and start.options.HasField("steps") and start.options.steps > 20:
        start.options.steps = 201 + start.options.steps % 1000
    requests = upload_requests(stage2_pb2.ReconstructRequest, start, STAGE2_INPUTS if honest else None, tail)
    code = code_of(lambda: list(stub.Reconstruct(requests, timeout=20)))
    assert_no_fault(code, start)
    if honest:
        try:
            stage2_options_from_proto(start.options)
            checked_id(start, "job_id")
        except InvalidInput:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, start


@pytest.fixture(scope="module")
def preprocess_server(segmenter_dir):
    parser = argparse.ArgumentParser()
    preprocess_main.add_arguments(parser)
    args = parser.parse_args(["--segmentation-dir", str(segmenter_dir)])
    server = StageServer(
        preprocess_main.build_spec(args), "127.0.0.1:0", StageLimits(concurrency=1, max_queue=4)
    )
    server.load()
    yield server
    server.stop()


@FUZZ
@given(
    start=messages(preprocess_pb2.PreprocessStart.DESCRIPTOR),
    image=st.one_of(st.none(), hostile_images(), st.just(photo())),
    tail=st.lists(messages(preprocess_pb2.PreprocessRequest.DESCRIPTOR), max_size=3),
)
def test_preprocess_requests(preprocess_server, start, image, tail):
    stub = preprocess_pb2_grpc.PreprocessServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{preprocess_server.port}")
    )
    if image is not None:  # announced correctly; the bytes and options are what is fuzzed
        start.image.CopyFrom(blob_header("input", "image/png", image))
        tail = [preprocess_pb2.PreprocessRequest(chunk=c) for c in blob_chunks("input", image)]

    def requests() -> Iterator[Any]:
        yield preprocess_pb2.PreprocessRequest(start=start)
        yield from tail

    code = code_of(lambda: list(stub.Preprocess(requests(), timeout=30)))
    assert_no_fault(code, start)
    if len(start.request_id) > MAX_ID_CHARS or not start.request_id.isprintable():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, start.request_id
