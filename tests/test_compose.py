"""compose.yaml validated by a real Docker Compose v2 (``docker-compose config``, no engine needed).

The binary is put in ``.cache/tools`` by ``scripts/fetch_compose.py`` (bootstrap runs it; this test runs it
too when it is missing). Without it the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
CFG_PARALLEL_FILE = REPO_ROOT / "compose.stage1-cfg-parallel.yaml"
STAGES = ("preprocess", "stage1", "stage2")  # scalable services behind the gateway
LONG_RUNNING = (*STAGES, "gateway")
HEALTH_SERVICE = {
    "preprocess": "synchuman.v1.PreprocessService",
    "stage1": "synchuman.v1.Stage1Service",
    "stage2": "synchuman.v1.Stage2Service",
    "gateway": "synchuman.v1.ReconstructionService",
}


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    spec = importlib.util.spec_from_file_location("fetch_compose", REPO_ROOT / "scripts" / "fetch_compose.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.fetch()
    except (RuntimeError, OSError) as exc:
        message = f"Docker Compose v2 could not be installed by scripts/fetch_compose.py: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def run_config(
    compose_bin: Path, compose_file: Path, *overrides: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCHUMAN_", "COMPOSE_", "DOCKER_"))}
    files = [arg for path in (compose_file, *overrides) for arg in ("-f", str(path))]
    return subprocess.run(
        [str(compose_bin), *files, "config", "--format", "json"],
        capture_output=True, text=True, env={**clean, **env}, cwd=compose_file.parent, timeout=60,
    )


@pytest.fixture(scope="module")
def config(compose_bin: Path) -> dict:
    result = run_config(compose_bin, COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def listen_port(service: dict) -> str:
    return option(service["command"], "--address").rsplit(":", 1)[1]


def test_services_and_images(config: dict) -> None:
    assert set(config["services"]) == {"ckpts", *LONG_RUNNING}
    for name in LONG_RUNNING:
        dockerfile = REPO_ROOT / config["services"][name]["build"]["dockerfile"]
        text = dockerfile.read_text()
        base = next(line for line in text.splitlines() if line.startswith("ARG") and "_IMAGE=" in line)
        assert ("nvidia/cuda" in base) == (name in ("stage1", "stage2")), (name, base)
        assert "services.common.healthcheck" in text and "CMD [" in text


def test_each_gpu_stage_is_pinned_to_its_own_gpu(config: dict, compose_bin: Path) -> None:
    ids = {}
    for name in ("stage1", "stage2"):
        (device,) = config["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        ids[name] = device["device_ids"]
    assert ids == {"stage1": ["0"], "stage2": ["1"]}
    moved = json.loads(run_config(compose_bin, COMPOSE_FILE, SYNCHUMAN_STAGE1_GPU="3").stdout)
    (device,) = moved["services"]["stage1"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["3"]
    for name in ("preprocess", "gateway"):
        assert "deploy" not in config["services"][name]


def test_stages_can_scale_behind_round_robin_gateway(config: dict) -> None:
    gateway = config["services"]["gateway"]["command"]
    for name in STAGES:
        service = config["services"][name]
        assert "container_name" not in service and "ports" not in service, name
        assert option(gateway, f"--{name}") == f"dns:///{name}:{listen_port(service)}"
        assert option(service["command"], "--address").startswith("0.0.0.0:")
    published = {p["target"] for p in config["services"]["gateway"]["ports"]}
    assert published == {50051, 8080}


def test_health_checks_restart_and_read_only_checkpoints(config: dict) -> None:
    for name in LONG_RUNNING:
        service = config["services"][name]
        assert service["restart"] == "unless-stopped"
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
        assert test[4] == f"127.0.0.1:{listen_port(service)}" and test[-1] == HEALTH_SERVICE[name]
    for name in STAGES:
        service = config["services"][name]
        (mount,) = [v for v in service["volumes"] if v["target"] == "/ckpts"]
        assert mount["read_only"] is True, name
        assert service["depends_on"]["ckpts"]["condition"] == "service_completed_successfully"
    job = config["services"]["ckpts"]
    assert job["restart"] == "no" and job["command"][-4:] == ["ckpts", "ensure", "--root", "/ckpts"]
    assert not job["volumes"][0].get("read_only", False)


def test_the_validator_rejects_a_broken_file(compose_bin: Path, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("shm_size:", "shm_sise:"))
    result = run_config(compose_bin, broken)
    assert result.returncode != 0 and "shm_sise" in result.stderr


def _cli_argv(argv: list[str]) -> list[str]:
    assert argv[:3] == ["python", "-m", "synchuman_cli"], argv
    return argv[3:]


def _dockerfile_cmd(service: dict) -> list[str]:
    text = (REPO_ROOT / service["build"]["dockerfile"]).read_text()
    line = next(line for line in text.splitlines() if line.startswith("CMD "))
    return json.loads(line.removeprefix("CMD "))


@pytest.mark.parametrize("name", [*LONG_RUNNING, "ckpts"])
def test_commands_parse_with_the_real_cli(config: dict, name: str) -> None:
    """Every container command (compose and Dockerfile CMD) is accepted by the project's own parsers."""
    import argparse

    from synchuman_cli.commands import serve
    from synchuman_cli.main import build_parser

    service = config["services"][name]
    commands = [service["command"]] + ([_dockerfile_cmd(service)] if name in LONG_RUNNING else [])
    for command in commands:
        args = build_parser().parse_args(_cli_argv(command))
        if args.command != "serve":
            assert args.func is not None
            continue
        module = importlib.import_module(serve.TARGETS[args.target][0])
        parser = argparse.ArgumentParser(prog=f"synchuman serve {args.target}")
        module.add_arguments(parser)
        options = parser.parse_args(args.options)
        assert options.address == f"0.0.0.0:{listen_port(service)}"


def test_gateway_token_is_passed_through(config) -> None:
    environment = config["services"]["gateway"]["environment"]
    assert "SYNCHUMAN_GATEWAY_AUTH_TOKEN" in environment
    assert environment["SYNCHUMAN_CKPTS"] == "/ckpts"


def test_stage1_cfg_parallel_override(compose_bin: Path) -> None:
    """The two-GPU stage-1 override: both GPUs reserved (replacing, not adding to, the base reservation), the
    service started with --cfg-device cuda:1 --compile, and the command accepted by the real parser."""
    import argparse

    from services.stage1 import main as stage1_main
    from synchuman_cli.main import build_parser

    result = run_config(compose_bin, COMPOSE_FILE, CFG_PARALLEL_FILE, SYNCHUMAN_STAGE1_CFG_GPU="3")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    (device,) = services["stage1"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["0", "3"] and device["capabilities"] == ["gpu"]
    (stage2_device,) = services["stage2"]["deploy"]["resources"]["reservations"]["devices"]
    assert stage2_device["device_ids"] == ["1"]
    args = build_parser().parse_args(_cli_argv(services["stage1"]["command"]))
    parser = argparse.ArgumentParser()
    stage1_main.add_arguments(parser)
    options = parser.parse_args(args.options)
    assert (options.device, options.cfg_device, options.compile) == ("cuda:0", "cuda:1", True)
    assert options.address == "0.0.0.0:50053"
    mounts = {v["target"]: v for v in services["stage1"]["volumes"]}
    assert mounts["/ckpts"]["read_only"] is True  # the base file's checkpoint mount survives the override
    assert mounts["/var/cache/synchuman"]["type"] == "volume"  # torch.compile's caches across restarts


def test_stage1_image_can_run_torch_compile() -> None:
    """`--compile` runs Triton, which builds its launcher modules with a C compiler and the Python headers at
    run time; its caches go to a directory the service user owns (the compose override mounts a volume)."""
    text = (REPO_ROOT / "docker/stage1.Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    apt = next(line for line in lines if "apt-get install" in line)
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(apt.split())
    env = next(line for line in lines if line.startswith("ENV TORCHINDUCTOR_CACHE_DIR="))
    cache = env.split("=", 1)[1]
    assert cache.startswith("/var/cache/synchuman/")
    uid = next(line for line in lines if line.startswith("RUN useradd")).split("--uid ")[1].split()[0]
    assert f"chown -R {uid} /var/cache/synchuman" in text
    assert lines.index(env) < lines.index("USER synchuman")


def test_stage2_image_builds_gsplat_kernels_before_switching_user() -> None:
    """gsplat's CUDA extension is compiled while the image is built, into a directory the runtime user owns
    (the user has no home directory, so a JIT build at the first request could not write its cache)."""
    lines = [line.strip() for line in (REPO_ROOT / "docker/stage2.Dockerfile").read_text().splitlines()]
    env = next(line for line in lines if line.startswith("ENV TORCH_EXTENSIONS_DIR="))
    directory = env.split("=", 1)[1].split()[0]
    build = next(i for i, line in enumerate(lines) if "from gsplat.cuda._backend import _C" in line)
    user = lines.index("USER synchuman")
    uid = next(line for line in lines if line.startswith("RUN useradd")).split("--uid ")[1].split()[0]
    assert build < user and lines.index(env) < build
    assert "assert _C is not None" in lines[build]  # no CUDA toolkit -> gsplat leaves _C None: fail the build
    assert f"chown -R {uid} {directory}" in " ".join(lines[build : build + 2])
