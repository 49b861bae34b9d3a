"""deploy/kubernetes: who may call the services. Every stage pod requires the stage token and the gateway
sends it (Secret synchuman-stages); components/tls, added to either overlay, gives the gateway its
certificate (gRPC + HTTPS) and the stages mTLS from the Secret synchuman-tls, with probes that work under TLS
(the kubelet's gRPC probes speak neither TLS nor mTLS). Built with ``kubectl kustomize`` and checked
against the strict Kubernetes schemas like the overlays themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_kubernetes_manifests import OVERLAYS, SERVICE_NAMES, STAGES, kustomize, kustomize_with_component

HEALTHCHECK = ["python", "-m", "services.common.healthcheck"]


def deployments(objects: list[dict]) -> dict[str, dict]:
    """Deployment name -> its first container."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]
        for o in objects
        if o["kind"] == "Deployment"
    }


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_stage_requires_the_token_the_gateway_sends(overlay: str) -> None:
    containers = deployments(kustomize(overlay))
    for name in (*STAGES, "gateway"):
        reference = env_of(containers[name])["SYNCHUMAN_STAGE_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "synchuman-stages", "key": "token"}, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_component_gives_the_gateway_tls_and_the_stages_mtls(overlay: str, tmp_path: Path) -> None:
    objects = kustomize_with_component(overlay, "tls", tmp_path)
    specs = [o for o in objects if o["kind"] == "Deployment"]
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in specs}
    containers = deployments(objects)
    for name in (*STAGES, "gateway"):
        main = containers[name]
        assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in main["volumeMounts"], name
        (volume,) = [v for v in pods[name]["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "synchuman-tls"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in main[probe], (name, probe)  # one handler per probe, none the kubelet's gRPC
    for name, port in STAGES.items():
        main, env = containers[name], env_of(containers[name])
        assert env["SYNCHUMAN_STAGE_TLS_CLIENT_CA"]["value"] == "/tls/ca.crt"
        assert env["SYNCHUMAN_HEALTHCHECK_TLS_CERT"]["value"] == env["SYNCHUMAN_STAGE_TLS_CERT"]["value"]
        assert env["SYNCHUMAN_HEALTHCHECK_TLS_SERVER_NAME"]["value"] == name
        ready = main["readinessProbe"]["exec"]["command"]
        assert ready == [*HEALTHCHECK, f"127.0.0.1:{port}", "--service", SERVICE_NAMES[name]]
        assert main["livenessProbe"]["exec"]["command"][:4] == [*HEALTHCHECK, f"127.0.0.1:{port}"]
    gateway, env = containers["gateway"], env_of(containers["gateway"])
    assert env["SYNCHUMAN_GATEWAY_TLS_CERT"]["value"] == env["SYNCHUMAN_GATEWAY_STAGE_TLS_CERT"]["value"]
    assert env["SYNCHUMAN_GATEWAY_STAGE_TLS_CA"]["value"] == "/tls/ca.crt"
    assert gateway["readinessProbe"]["exec"]["command"][:4] == [*HEALTHCHECK, "127.0.0.1:50051"]
    for probe in ("startupProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/livez", "port": "http", "scheme": "HTTPS"}
