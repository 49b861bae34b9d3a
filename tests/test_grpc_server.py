"""The shared gRPC server builder: reflection answers v1 and v1alpha clients, health follows set_serving."""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest
from conftest import REPO_ROOT, require_tool
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.grpc_server import REFLECTION_V1_SERVICE, ServiceServer
from services.stage1.service import Stage1Servicer
from synchuman.stage_catalog import MULTIVIEW
from synchuman.v1 import stage1_pb2_grpc

EXPECTED = {
    MULTIVIEW.grpc_service,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture
def server():
    built = ServiceServer(
        "stage1",
        MULTIVIEW.grpc_service,
        "127.0.0.1:0",
        lambda s: stage1_pb2_grpc.add_Stage1ServiceServicer_to_server(Stage1Servicer(None), s),  # type: ignore[arg-type]
        workers=4,
        max_concurrent_rpcs=4,
    )
    built.start()
    yield built
    built.stop(None).wait()


def _v1_reflection(channel: grpc.Channel, *requests: dict) -> list:
    """A grpc.reflection.v1 client: one ServerReflectionInfo stream carrying ``requests``."""
    pool = descriptor_pool.Default()
    request_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    call = channel.stream_stream(
        f"/{REFLECTION_V1_SERVICE}/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return list(call(iter([request_type(**r) for r in requests]), timeout=10))


def test_reflection_v1_lists_and_describes_the_services(server: ServiceServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        listed, described, missing = _v1_reflection(
            channel,
            {"list_services": ""},
            {"file_containing_symbol": MULTIVIEW.grpc_service},
            {"file_containing_symbol": "synchuman.v1.NoSuchService"},
        )
    assert {s.name for s in listed.list_services_response.service} == EXPECTED
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in described.file_descriptor_response.file_descriptor_proto
    ]
    assert any(s.name == "Stage1Service" for f in files for s in f.service)
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_v1alpha_lists_the_same_services(server: ServiceServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        assert set(ProtoReflectionDescriptorDatabase(channel).get_services()) == EXPECTED


def test_health_follows_set_serving(server: ServiceServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status(name: str) -> int:
            return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status

        assert status("") == status(MULTIVIEW.grpc_service) == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        assert status("") == status(MULTIVIEW.grpc_service) == health_pb2.HealthCheckResponse.SERVING



@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_lists_the_methods_with_either_reflection_protocol(
    server: ServiceServer, protocol: str, tmp_path
) -> None:
    buf = require_tool(REPO_ROOT / "node_modules" / ".bin" / "buf", "buf (npm @bufbuild/buf)")
    listed = subprocess.run(
        [
            str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol,
            "--list-methods", f"http://{server.address}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert listed.returncode == 0, listed.stderr
    assert f"{MULTIVIEW.grpc_service}/GenerateViews" in listed.stdout
    assert "grpc.health.v1.Health/Check" in listed.stdout
