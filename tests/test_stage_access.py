"""Who may call the services (issue 17 #10 and TLS): the stage services require a shared bearer token (health
and reflection stay open), serve TLS and require client certificates signed by their CA (mTLS); the gateway
serves TLS (gRPC and HTTP), sends the token and presents its client certificate to the stages; the health
probe, ``synchuman reconstruct`` and the launcher take the CA / certificate options. Certificates are made by
the test (tests/tls_certs.py)."""

from __future__ import annotations

import io
import ssl
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from gateway_doubles import Behaviour, start_doubles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image
from stage_doubles import FakeStage1, stage1_inputs, stage1_requests, start_server
from tls_certs import CertificateAuthority

from gateway.server import Gateway, GatewayConfig
from services.common.auth import STAGE_TOKEN_HINT, BearerTokenInterceptor, authorized_channel
from services.common.healthcheck import main as healthcheck
from services.common.stage_runtime import StageLimits
from services.common.stage_server import StageAccess
from services.common.tls import ClientTls, ServerTls, open_channel
from services.launcher import EmbeddedConfig, TlsFiles, child_specs
from services.supervisor import health_status
from synchuman.v1 import common_pb2, stage1_pb2_grpc
from synchuman_cli.main import main as synchuman

TOKEN = "stage-secret"
SERVING, NOT_SERVING = 1, 2
LIMITS = StageLimits(concurrency=1, max_queue=1, grace_s=0.1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """A CA with a server certificate and a client certificate, and a foreign CA with a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(folder / "ca"), CertificateAuthority(folder / "other", "other-ca")
    return {
        "ca": ca.pem.cert,
        "server": ca.issue("server"),
        "client": ca.issue("gateway"),
        "stranger": other.issue("stranger"),
    }


def generate_views(channel: grpc.Channel, token: str = "") -> str:
    """One GenerateViews call (1 step); the payload kind of its last message."""
    stub = stage1_pb2_grpc.Stage1ServiceStub(authorized_channel(channel, token))
    requests = stage1_requests(stage1_inputs(), common_pb2.MultiviewOptions(steps=1))
    return list(stub.GenerateViews(requests, timeout=30))[-1].WhichOneof("payload")


def health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="synchuman.v1.Stage1Service")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_stage_requires_its_token_except_health_and_reflection() -> None:
    server = start_server("stage1", FakeStage1(), LIMITS, access=StageAccess(token=TOKEN))
    try:
        with grpc.insecure_channel(server.address) as channel:
            for sent, reason in (("", "no token"), ("wrong", "wrong token")):
                with pytest.raises(grpc.RpcError) as refused:
                    generate_views(channel, sent)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason in refused.value.details() and STAGE_TOKEN_HINT in refused.value.details()
            assert generate_views(channel, TOKEN) == "result"
            assert health(channel) == SERVING  # orchestrators probe without the secret
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert "synchuman.v1.Stage1Service" in services
    finally:
        server.stop()


def test_stage_with_mtls_accepts_only_clients_its_ca_signed(pki) -> None:
    tls = ServerTls(pki["server"].cert, pki["server"].key, client_ca=pki["ca"])
    server = start_server("stage1", FakeStage1(), LIMITS, access=StageAccess(TOKEN, tls))
    gateway_cert = ClientTls(pki["ca"], pki["client"].cert, pki["client"].key)
    try:
        refused = {
            "plaintext": None,
            "no client certificate": ClientTls(pki["ca"]),
            "certificate of another CA": ClientTls(pki["ca"], pki["stranger"].cert, pki["stranger"].key),
        }
        for what, client in refused.items():
            with open_channel(server.address, client) as channel, pytest.raises(grpc.RpcError) as error:
                health(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE, what
        with open_channel(server.address, gateway_cert) as channel:
            assert health(channel) == SERVING
            assert generate_views(channel, TOKEN) == "result"
            with pytest.raises(grpc.RpcError) as no_token:
                generate_views(channel)
            assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED  # mTLS does not replace the token
        probe = [server.address, "--service", "synchuman.v1.Stage1Service", "--tls-ca", str(pki["ca"])]
        assert healthcheck(probe) == 1
        client_files = ["--tls-cert", str(pki["client"].cert), "--tls-key", str(pki["client"].key)]
        assert healthcheck([*probe, *client_files]) == 0
    finally:
        server.stop()


def _photo(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 4), 128, dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def tls_stages(pki):
    """Stage doubles that require the token and mTLS, as the real stages with --auth-token and
    --tls-client-ca; yields their target."""
    credentials = ServerTls(pki["server"].cert, pki["server"].key, client_ca=pki["ca"]).credentials()
    server, port, _ = start_doubles(
        "127.0.0.1:0",
        ["preprocess", "stage1", "stage2"],
        Behaviour(),
        interceptors=(BearerTokenInterceptor(TOKEN, STAGE_TOKEN_HINT),),
        credentials=credentials,
    )
    yield f"localhost:{port}"
    server.stop(grace=None)


def https_client(gateway: Gateway, pki) -> httpx.Client:
    """A client of the gateway's HTTPS bridge that trusts the test CA."""
    trusted = ssl.create_default_context(cafile=pki["ca"])
    return httpx.Client(base_url=f"https://localhost:{gateway.http_port}", verify=trusted)


def _gateway(pki, target: str, tmp: Path, stage_tls: ClientTls) -> Gateway:
    return Gateway(
        GatewayConfig(
            address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            preprocess_target=target,
            stage1_target=target,
            stage2_target=target,
            data_dir=tmp,
            tls=ServerTls(pki["server"].cert, pki["server"].key),
            stage_token=TOKEN,
            stage_tls=stage_tls,
        )
    )


def test_tls_gateway_with_mtls_to_the_stages_runs_a_job_for_the_cli(pki, tls_stages, tmp_path, capsys):
    client_cert = ClientTls(pki["ca"], pki["client"].cert, pki["client"].key)
    gateway = _gateway(pki, tls_stages, tmp_path / "data", client_cert)
    try:
        tls = ClientTls(pki["ca"])
        assert health_status(gateway.address, "synchuman.v1.ReconstructionService", tls=tls) == SERVING
        assert health_status(gateway.address, timeout_s=2.0) is None  # plaintext clients get no answer
        with https_client(gateway, pki) as http:
            assert http.get("/readyz").json()["status"] == "READY"
        photo = _photo(tmp_path / "person.png")
        argv = ["reconstruct", str(photo), "-o", str(tmp_path / "p.glb"), "--gateway", gateway.address]
        argv += ["--start-servers", "never", "--quiet"]
        assert synchuman(argv) == 2
        assert "plaintext" in capsys.readouterr().err
        assert synchuman([*argv, "--tls-ca", str(pki["ca"])]) == 0
        assert (tmp_path / "p.glb").stat().st_size > 0
    finally:
        gateway.stop(grace_s=0.5)


def test_gateway_without_its_client_certificate_is_not_ready(pki, tls_stages, tmp_path) -> None:
    gateway = _gateway(pki, tls_stages, tmp_path / "data", ClientTls(pki["ca"]))
    try:
        tls = ClientTls(pki["ca"])
        assert health_status(gateway.address, "synchuman.v1.ReconstructionService", tls=tls) == NOT_SERVING
        with https_client(gateway, pki) as http:
            ready = http.get("/readyz")
        assert ready.status_code == 503 and set(ready.json()["stages"].values()) == {"NOT_SERVING"}
    finally:
        gateway.stop(grace_s=0.5)


def test_launcher_gives_every_service_tls_mtls_and_the_stage_token(tmp_path) -> None:
    files = TlsFiles(tmp_path / "ca.crt", tmp_path / "all.crt", tmp_path / "all.key")
    config = EmbeddedConfig.with_free_ports(tls=files)
    specs = {spec.name: spec for spec in child_specs(config)}
    assert len(config.stage_token) >= 24 and config.stage_token != EmbeddedConfig().stage_token
    for name, spec in specs.items():
        assert spec.env["SYNCHUMAN_STAGE_TOKEN"] == config.stage_token, name
        assert TOKEN not in spec.argv and config.stage_token not in spec.argv  # never in process listings
        argv = " ".join(spec.argv)
        assert f"--tls-cert {files.cert} --tls-key {files.key}" in argv, name
    for stage in ("preprocess", "stage1", "stage2"):
        assert f"--tls-client-ca {files.ca}" in " ".join(specs[stage].argv)
        assert specs[stage].tls == ClientTls(files.ca, files.cert, files.key)  # the supervisor's health probe
    gateway = " ".join(specs["gateway"].argv)
    assert f"--stage-tls-ca {files.ca} --stage-tls-cert {files.cert} --stage-tls-key {files.key}" in gateway
    assert specs["gateway"].tls == ClientTls(files.ca) and config.http_url.startswith("https://")
    plain = {spec.name: spec for spec in child_specs(EmbeddedConfig())}
    assert all(spec.tls is None and "--tls-cert" not in spec.argv for spec in plain.values())


def test_the_certificate_script_makes_what_compose_and_kubernetes_expect(tmp_path) -> None:
    """scripts/make_tls_certs.sh (README "Operating it"): the stages' certificate serves mTLS under each stage
    name and works as their probes' client certificate; the gateway's serves 127.0.0.1 and is accepted by the
    stages as a client certificate."""
    import shutil
    import subprocess

    from conftest import REPO_ROOT, require_tool

    require_tool(Path(shutil.which("openssl") or "/usr/bin/openssl"), "openssl")
    made = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "make_tls_certs.sh"), str(tmp_path), "api.example.org"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ca, cert, key = tmp_path / "ca.crt", tmp_path / "stages.crt", tmp_path / "stages.key"
    stage = start_server("stage1", FakeStage1(), LIMITS, access=StageAccess(TOKEN, ServerTls(cert, key, ca)))
    gateway_tls = ServerTls(tmp_path / "gateway.crt", tmp_path / "gateway.key")
    gateway = start_server("stage1", FakeStage1(), LIMITS, access=StageAccess(tls=gateway_tls))
    try:
        as_gateway = (tmp_path / "gateway.crt", tmp_path / "gateway.key")
        for name in ("preprocess", "stage1", "stage2"):
            assert health_status(stage.address, tls=ClientTls(ca, *as_gateway, name)) == SERVING, name
        assert health_status(stage.address, tls=ClientTls(ca, cert, key, "stage1")) == SERVING  # the probe
        assert health_status(stage.address, tls=ClientTls(ca, *as_gateway, "api.example.org")) is None
        assert health_status(gateway.address, tls=ClientTls(ca)) == SERVING
        assert health_status(gateway.address, tls=ClientTls(ca, server_name="api.example.org")) == SERVING
    finally:
        stage.stop()
        gateway.stop()
