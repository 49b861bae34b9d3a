"""The compose deployment: compose.yaml (+ compose.cpu.yaml, compose.stage1-cfg-parallel.yaml) and
docker/Dockerfile.

Static checks (every run): the files validated by a real Docker Compose v2 (``docker-compose config``, no
engine needed; ``scripts/fetch_compose.py`` puts the binary in ``.cache/tools``; without it these tests skip,
except under ``CI=true`` where they fail) and every container command parsed by the project's own CLI.

End to end (``make compose-test``, which sets ``SYNCHUMAN_COMPOSE_E2E=1``): a real Docker engine (started and
stopped here when none runs), the CPU images built from a clean clone, the stack started with tiny random
checkpoints and driven through its published ports: jobs over HTTP and gRPC, a killed stage, a restarted
gateway, a scaled stage, a stage with a missing checkpoint file, ``down``. Times per step and image sizes go
to ``.cache/compose-test/report.json``.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
CFG_PARALLEL_FILE = REPO_ROOT / "compose.stage1-cfg-parallel.yaml"
CPU_FILE = REPO_ROOT / "compose.cpu.yaml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
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


def dockerfile_stages() -> dict[str, list[str]]:
    """docker/Dockerfile's build stages: name -> its instruction lines (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[1].strip(), [line])
        elif line and not line.startswith("#"):
            current.append(line)
    return stages


def instruction(stage: str, keyword: str) -> str:
    """The (last) ``keyword`` instruction of a Dockerfile stage, without the keyword."""
    lines = [line for line in dockerfile_stages()[stage] if line.startswith(keyword + " ")]
    assert lines, (stage, keyword)
    return lines[-1].removeprefix(keyword + " ")


def test_services_and_images(config: dict) -> None:
    """One Dockerfile, one target per service; the GPU stages on the CUDA base, the others on Python slim."""
    assert set(config["services"]) == {"ckpts", *LONG_RUNNING}
    stages = dockerfile_stages()
    for name in LONG_RUNNING:
        build = config["services"][name]["build"]
        assert build["dockerfile"] == "docker/Dockerfile"
        assert build["target"] == ("stage2-gpu" if name == "stage2" else name)
        base = build["args"]["BASE_IMAGE"]
        assert base.startswith("nvidia/cuda:" if name in ("stage1", "stage2") else "python:3.12-slim"), name
        assert stages[name][0] == "FROM app AS " + name
        assert "services.common.healthcheck" in instruction(name, "HEALTHCHECK")
    assert stages["app"][0] == "FROM deps AS app" and stages["stage2-gpu"][0] == "FROM stage2 AS stage2-gpu"


def test_one_shared_dependency_layer() -> None:
    """torch (requirements/torch.txt's pin unless TORCH_SPEC names one) and the third-party packages are
    installed in ``deps`` only, from the hashed lock before any source file is copied; the project itself in
    ``app`` without resolving anything; non-root user."""
    stages = dockerfile_stages()
    deps = " ".join(stages["deps"])
    assert 'spec="${TORCH_SPEC:-$(grep -v \'^#\' /tmp/deps/torch.txt)}"' in deps
    assert 'pip install "$spec"' in deps
    assert "pip install --require-hashes --no-deps -r /tmp/deps/all.txt && pip check" in deps
    assert [line for line in stages["deps"] if line.startswith("COPY")] == [
        "COPY requirements/torch.txt requirements/all.txt /tmp/deps/"
    ]
    assert "pip install --no-deps --no-build-isolation /tmp/src" in " ".join(stages["app"])
    assert instruction("app", "USER") == "synchuman"
    for name in LONG_RUNNING:
        assert not [line for line in stages[name] if line.startswith(("RUN", "COPY", "USER"))], name
    assert instruction("app", "ENTRYPOINT") == '["python", "/usr/local/lib/synchuman/json_logs.py"]'


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
    published = {(p["host_ip"], p["published"], p["target"]) for p in config["services"]["gateway"]["ports"]}
    assert published == {("127.0.0.1", "50051", 50051), ("127.0.0.1", "8080", 8080)}


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


def test_services_have_no_route_out(config: dict) -> None:
    """Nothing is downloaded at run time: the services sit on an internal network; only the gateway (its
    published ports) and the one-shot ckpts job (pulling weights) reach further."""
    assert config["networks"]["backend"]["internal"] is True
    for name in STAGES:
        assert set(config["services"][name]["networks"]) == {"backend"}, name
    assert set(config["services"]["gateway"]["networks"]) == {"backend", "frontend"}
    assert set(config["services"]["ckpts"]["networks"]) == {"frontend"}
    assert "HF_HUB_OFFLINE=1" in instruction("app", "ENV")


def test_the_validator_rejects_a_broken_file(compose_bin: Path, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("shm_size:", "shm_sise:"))
    result = run_config(compose_bin, broken)
    assert result.returncode != 0 and "shm_sise" in result.stderr


def _cli_argv(argv: list[str]) -> list[str]:
    assert argv[0] == "synchuman", argv  # the console script of pyproject.toml
    return argv[1:]


def _dockerfile_cmd(name: str) -> list[str]:
    return json.loads(instruction(name, "CMD"))


@pytest.mark.parametrize("name", [*LONG_RUNNING, "ckpts"])
def test_commands_parse_with_the_real_cli(config: dict, name: str) -> None:
    """Every container command (compose and Dockerfile CMD) is accepted by the project's own parsers."""
    import argparse

    from services.launcher import TARGETS
    from synchuman_cli.main import build_parser

    service = config["services"][name]
    commands = [service["command"]] + ([_dockerfile_cmd(name)] if name in LONG_RUNNING else [])
    for command in commands:
        args = build_parser().parse_args(_cli_argv(command))
        if args.command != "serve":
            assert args.func is not None
            continue
        module = importlib.import_module(TARGETS[args.target][0])
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


def test_stage1_image_can_run_torch_compile(config: dict) -> None:
    """`--compile` runs Triton, which builds its launcher modules with a C compiler and the Python headers at
    run time; its caches go to a directory the service user owns (the compose override mounts a volume)."""
    args = config["services"]["stage1"]["build"]["args"]
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(args["SYSTEM_PACKAGES"].split())
    app = dockerfile_stages()["app"]
    env = next(line for line in app if line.startswith("ENV TORCHINDUCTOR_CACHE_DIR="))
    cache = env.split("=", 1)[1]
    assert cache.startswith("/var/cache/synchuman/")
    assert any("install -d -o synchuman" in line and cache in line for line in app)
    assert app.index(env) < app.index("USER synchuman")


def test_images_need_the_web_page_built_on_the_host() -> None:
    """The gateway serves gateway/web/dist (bundled by `make setup`; node is not in the base images): the
    build context keeps it, and the app stage fails with the command to run before installing without it."""
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in ignored if line and not line.startswith("#")]
    for path in ("gateway/web/dist/index.html", "gateway/web/dist/docs/swagger-ui-bundle.js"):
        dropped = [p for p in patterns if fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")]
        assert not dropped, (path, dropped)
    lines = dockerfile_stages()["app"]
    check = next(i for i, line in enumerate(lines) if "test -f /tmp/src/gateway/web/dist/index.html" in line)
    assert "/tmp/src/gateway/web/dist/docs/swagger-ui-bundle.js" in lines[check]
    assert "make setup" in lines[check] and "exit 1" in lines[check]
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert lines.index("COPY . /tmp/src") < check < install
    assert "setup" in (REPO_ROOT / "Makefile").read_text().split("compose-test:", 1)[1].splitlines()[0]


def test_images_ship_the_python_client() -> None:
    """`synchuman reconstruct` / `selftest` inside an image need synchuman-client (clients/python): the build
    context keeps it (its build folder out) and the app stage installs it with the project."""
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    assert "!clients/python" in ignored and "clients/python/build" in ignored
    assert ignored.index("clients") < ignored.index("!clients/python")
    app = dockerfile_stages()["app"]
    install = next(line for line in app if "pip install" in line and "/tmp/src" in line)
    assert "/tmp/src/clients/python" in install.split("&&")[0]


def test_stage2_image_builds_gsplat_kernels_before_switching_user() -> None:
    """gsplat's CUDA extension is compiled while the GPU image is built, into a directory the runtime user
    owns, so no JIT build (and no writable cache) is needed at the first request."""
    lines = dockerfile_stages()["stage2-gpu"]
    env = next(line for line in lines if line.startswith("ENV TORCH_EXTENSIONS_DIR="))
    directory = env.split("=", 1)[1].split()[0]
    build = next(i for i, line in enumerate(lines) if "from gsplat.cuda._backend import _C" in line)
    assert lines.index(env) < build < lines.index("USER synchuman")
    assert "assert _C is not None" in lines[build]  # no CUDA toolkit -> gsplat leaves _C None: fail the build
    assert f"chown -R 10001 {directory}" in lines[build]


def test_cpu_override_runs_everything_on_the_cpu(compose_bin: Path) -> None:
    """compose.cpu.yaml: no GPU reservation anywhere, `--device cpu`, CPU build arguments, stage images
    tagged -cpu (never replacing the CUDA ones)."""
    result = run_config(compose_bin, COMPOSE_FILE, CPU_FILE)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, service in services.items():
        assert "deploy" not in service, name
        assert service["build"]["args"]["BASE_IMAGE"] == "python:3.12-slim", name
        assert service["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", name
    for name in ("stage1", "stage2"):
        assert option(services[name]["command"], "--device") == "cpu"
        assert services[name]["image"] == f"synchuman/{name}:latest-cpu"
        assert services[name]["build"]["target"] == name
    assert services["ckpts"]["image"] == "synchuman/stage1:latest-cpu"


def test_env_example_lists_every_variable() -> None:
    """.env.example names every ${VARIABLE} the compose files read."""
    used = set()
    for path in (COMPOSE_FILE, CPU_FILE, CFG_PARALLEL_FILE):
        used |= set(re.findall(r"\$\{(\w+)", path.read_text()))
    listed = set(re.findall(r"^#?\s*(\w+)=", (REPO_ROOT / ".env.example").read_text(), re.MULTILINE))
    assert used - listed == set()


def test_json_log_wrapper_keeps_json_and_wraps_the_rest() -> None:
    """docker/json_logs.py (the images' entry point): JSON lines pass, other lines become JSON objects, the
    command's exit status is kept."""
    script = (
        "import sys; print('{\"msg\": \"as is\"}'); print('plain'); sys.stderr.write('a\\rb\\n'); sys.exit(3)"
    )
    done = subprocess.run([sys.executable, str(REPO_ROOT / "docker" / "json_logs.py"), sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stderr == ""
    records = [json.loads(line) for line in done.stdout.splitlines()]
    # The two pipes are read concurrently: only the order within each stream is defined.
    assert [r for r in records if "logger" not in r] == [{"msg": "as is"}]
    streams = ("stdout", "stderr")
    by_stream = {name: [r["msg"] for r in records if r.get("logger") == name] for name in streams}
    assert by_stream == {"stdout": ["plain"], "stderr": ["a", "b"]}
    assert len(records) == 4


# -- end to end: `make compose-test` ------------------------------------------------------------------------

def e2e(test):  # noqa: ANN001, ANN201 - a test function
    """Only under ``make compose-test``; long timeout (the first test pays for building the images)."""
    skip = pytest.mark.skipif(
        os.environ.get("SYNCHUMAN_COMPOSE_E2E") != "1",
        reason="builds images and runs containers (minutes): `make compose-test` runs it",
    )
    return pytest.mark.timeout(2400)(skip(test))


REPORT = REPO_ROOT / ".cache" / "compose-test" / "report.json"
IMAGES = ["synchuman/preprocess:latest", "synchuman/stage1:latest-cpu", "synchuman/stage2:latest-cpu",
          "synchuman/gateway:latest"]


def _tiny_checkpoints(root: Path) -> Path:
    """Tiny random checkpoints (+ the segmenter) readable by the containers' user (uid 10001)."""
    from synchuman_cli.main import main as cli

    assert cli(["ckpts", "make-tiny", str(root)]) == 0
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The CPU stack built from a clean clone of this repository and started with tiny checkpoints."""
    import tempfile
    import time

    from compose_stack import Stack, docker_env, image_sizes
    from real_servers import free_port

    report: dict = {"timings_s": {}}
    started = time.monotonic()
    engine = docker_env.ensure_dockerd()
    engine_step = "Docker engine (started here)" if engine.process else "Docker engine (was running)"
    report["timings_s"][engine_step] = round(time.monotonic() - started, 1)
    work = Path(tempfile.mkdtemp(prefix="synchuman-compose-"))
    work.chmod(0o755)
    stack = None
    try:
        clone = work / "clone"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(clone)], check=True,
                       timeout=300)
        # the web page is bundled on the host by `make setup` (git-ignored; the images have no node), as in a
        # user's checkout after `make setup`
        shutil.copytree(REPO_ROOT / "gateway" / "web" / "dist", clone / "gateway" / "web" / "dist")
        ckpts = _tiny_checkpoints(work / "ckpts")
        http_port, grpc_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCHUMAN_", "COMPOSE_"))}
        env.update(SYNCHUMAN_CKPTS_DIR=str(ckpts), SYNCHUMAN_HTTP_PORT=str(http_port),
                   SYNCHUMAN_GRPC_PORT=str(grpc_port))
        stack = Stack(clone, "synchuman-e2e", env, http_port, grpc_port, report["timings_s"])
        started = time.monotonic()
        with docker_env.build_inputs() as build_env:
            report["timings_s"]["base image + torch source"] = round(time.monotonic() - started, 1)
            report["build_inputs"] = build_env
            stack.timed("build (compose build, from a clean clone)",
                        lambda: docker_env.build_cpu_images(clone, {**env, **build_env}))
        report["image_sizes"] = image_sizes(IMAGES)
        stack.timed("up -d --wait (all healthy)", lambda: stack.compose("up", "-d", "--wait", timeout_s=900))
        yield stack
    finally:
        if stack is not None:
            stack.timed("down -v", lambda: stack.compose("down", "-v", "--remove-orphans", check=False))
        engine.stop()
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(report, indent=2))

        shutil.rmtree(work, ignore_errors=True)


@e2e
def test_every_container_is_healthy_by_its_own_healthcheck(stack) -> None:
    for name in LONG_RUNNING:
        (container,) = stack.containers(name)
        assert stack.health(container) == "healthy", name
        user = stack.inspect(container)["Config"]["User"]
        assert user == "synchuman", (name, user)
        mounts = {m["Destination"]: m for m in stack.inspect(container)["Mounts"]}
        if name != "gateway":
            assert mounts["/ckpts"]["RW"] is False, name
    assert all(docker_image_present(image) for image in IMAGES)


def docker_image_present(image: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60)
    return done.returncode == 0


@e2e
def test_logs_are_json_lines_and_metrics_and_readiness_answer(stack) -> None:
    lines = stack.compose("logs", "--no-color", "--no-log-prefix").splitlines()
    assert len(lines) > 10  # the services' start and request lines (no third-party warnings since issue 24)
    not_json = [line for line in lines if line.strip() and not line.startswith("{")]
    assert not_json == [], not_json[:5]
    for line in lines:
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    metrics = stack.get("/metrics")
    assert metrics.status_code == 200 and "synchuman_" in metrics.text
    ready = stack.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["stages"].values()) == {"SERVING"}
    page = stack.get("/")  # the web page bundled into the image (docker/Dockerfile's app stage)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:200]
    assert stack.get("/docs").status_code == 200


def validate_glb(path: Path) -> None:
    """The Khronos glTF validator (npm gltf-validator, run as tests/test_postprocess.py does): no error."""
    from conftest import require_tool

    require_tool(REPO_ROOT / "node_modules" / "gltf-validator", "npm package gltf-validator")
    script = (
        "const v=require('gltf-validator');const fs=require('fs');"
        "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[1])))"
        ".then(r=>{console.log(JSON.stringify(r.issues));}).catch(e=>{console.error(e);process.exit(1);});"
    )
    done = subprocess.run(["node", "-e", script, str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    issues = json.loads(done.stdout)
    assert issues["numErrors"] == 0, issues["messages"]


def photo() -> Path:
    from conftest import SHARED_DIR, require_dir

    return require_dir(SHARED_DIR / "images", "sample images") / "person_000.png"


@e2e
def test_http_job_follows_progress_and_returns_a_valid_glb(stack, tmp_path: Path) -> None:
    def run() -> None:
        job_id = stack.submit_ok(photo())
        events = stack.follow_events(job_id)
        assert events[-1]["finished"]["state"] == "JOB_STATE_SUCCEEDED", events[-1]
        assert sum(1 for event in events if "progress" in event) >= 3
        glb = stack.get(f"/v1/jobs/{job_id}/artifacts/person.glb")
        assert glb.status_code == 200 and glb.content[:4] == b"glTF"
        (tmp_path / "http.glb").write_bytes(glb.content)

    stack.timed("HTTP job (submit, follow events, download)", run)
    validate_glb(tmp_path / "http.glb")


@e2e
def test_grpc_job_through_the_published_port(stack, tmp_path: Path) -> None:
    """`synchuman reconstruct` (the gRPC client) against the published gRPC port: submit, watch, download."""
    out = tmp_path / "grpc.glb"
    argv = [sys.executable, "-m", "synchuman_cli", "reconstruct", str(photo()), "-o", str(out),
            "--gateway", f"127.0.0.1:{stack.grpc_port}", "--start-servers", "never", "--steps1", "2",
            "--steps2", "2", "--texture-size", "256", "--bake-steps", "5", "--visibility-views", "8",
            "--simplify", "0.95"]
    done = stack.timed("gRPC job (synchuman reconstruct)", lambda: subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900))
    assert done.returncode == 0, done.stderr[-3000:]
    validate_glb(out)


def _wait_stage_started(stack, container: str, job_id: str, timeout_s: float = 600) -> None:
    from compose_stack import wait_until

    wait_until(lambda: job_id in stack.stage_jobs_started(container), timeout_s, f"{job_id} in {container}")


@e2e
def test_killed_stage2_is_restarted_and_the_job_finishes_without_stage1_again(stack) -> None:
    (stage1,) = stack.containers("stage1")
    (stage2,) = stack.containers("stage2")
    restarts = stack.inspect(stage2)["RestartCount"]

    def run() -> dict:
        job_id = stack.submit_ok(photo())
        _wait_stage_started(stack, stage2, job_id)
        # SIGKILL of the container's init from the host: the container dies as in a crash (OOM kill) and its
        # restart policy brings it back. (`docker kill` would count as a manual stop, which Docker's restart
        # policies deliberately never undo.)
        os.kill(stack.inspect(stage2)["State"]["Pid"], signal.SIGKILL)
        return stack.wait_job(job_id)

    job = stack.timed("stage-2 kill mid-job, job finished", run)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["attempts"]["multiview"] == 1 and job["attempts"]["reconstruction"] >= 2, job["attempts"]
    assert stack.stage_jobs_started(stage1).count(job["id"]) == 1
    assert stack.inspect(stage2)["RestartCount"] == restarts + 1  # the restart policy, same container


@e2e
def test_gateway_restarted_mid_job_keeps_the_job(stack) -> None:
    from compose_stack import wait_until

    (stage1,) = stack.containers("stage1")

    def run() -> dict:
        job_id = stack.submit_ok(photo())
        _wait_stage_started(stack, stage1, job_id)
        stack.compose("restart", "gateway")
        wait_until(lambda: stack.job_or_none(job_id), 180, "the restarted gateway")
        return stack.wait_job(job_id)

    job = stack.timed("gateway restart mid-job, job finished", run)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    (gateway,) = stack.containers("gateway")
    # the restarted gateway found the job unfinished in its store and took it up again
    taken_up = [r for r in stack.log_records(gateway) if r.get("job_id") == job["id"]
                and r.get("msg") == "job unfinished at start"]
    assert taken_up, "no log record of the restarted gateway taking the job up again"
    assert stack.get(f"/v1/jobs/{job['id']}/artifacts/person.glb").status_code == 200


@e2e
def test_two_stage1_replicas_share_the_jobs(stack) -> None:
    """Two stage-1 replicas each run one of two jobs (their own logs say so); the jobs are cancelled once
    stage 1 is done, stage 2 has nothing to show here."""
    import time

    from compose_stack import wait_until

    from services.common.grpc_server import MAX_CONNECTION_AGE_MS

    def run() -> dict[str, list[str]]:
        stack.compose("up", "-d", "--wait", "--scale", "stage1=2", timeout_s=600)
        replicas = stack.containers("stage1")
        assert len(replicas) == 2
        # The gateway re-resolves dns:///stage1 when the stage's server ends its connection (max age): then
        # Docker's DNS answers with both replicas and round robin spreads the calls.
        time.sleep(MAX_CONNECTION_AGE_MS / 1000 + 10)
        jobs = [stack.submit_ok(photo()) for _ in range(2)]

        def finished_by_replica() -> dict[str, list[str]]:
            done = {r: [j for j in stack.stage_jobs_started(r, "job finished") if j in jobs]
                    for r in replicas}
            return done if sum(len(ids) for ids in done.values()) == len(jobs) else {}

        served = wait_until(finished_by_replica, 600, "stage 1 of both jobs")
        for job_id in jobs:
            stack.cancel(job_id)
        return served  # type: ignore[return-value]

    served = stack.timed("scale stage1=2, stage 1 of 2 jobs", run)
    assert all(served.values()), served  # each replica ran one job


@e2e
def test_stage_with_a_missing_checkpoint_stays_unhealthy_and_the_gateway_is_not_ready(stack) -> None:

    from compose_stack import wait_until

    good = Path(stack.env["SYNCHUMAN_CKPTS_DIR"])
    broken = good.parent / "ckpts-broken"
    shutil.copytree(good, broken)
    missing = sorted((broken / "SecondStage").rglob("*.safetensors"))[0]
    missing.unlink()

    def run() -> None:
        stack.compose("up", "-d", "--no-deps", "stage2", SYNCHUMAN_CKPTS_DIR=str(broken))
        (stage2,) = wait_until(lambda: stack.containers("stage2"), 60, "the new stage-2 container")
        reason = str(missing.relative_to(broken))
        wait_until(lambda: any(reason in line for line in stack.logs(stage2)), 300, "the reason in the log")
        ready = wait_until(lambda: (r := stack.get("/readyz")).status_code == 503 and r, 60, "readyz 503")
        assert ready.json()["stages"]["stage2"] == "NOT_SERVING"
        refused = stack.submit(photo())
        assert refused.status_code == 503 and "stage2" in refused.text, refused.text
        assert stack.health(stage2) != "healthy"
        records = [r for r in stack.log_records(stage2) if r.get("level") == "error"]
        assert any(reason in json.dumps(r) for r in records), records[-3:]

    stack.timed("missing checkpoint: stage unhealthy, gateway not ready", run)


@e2e
def test_down_leaves_no_container(stack) -> None:
    stack.timed("down -v (test)", lambda: stack.compose("down", "-v", "--remove-orphans"))
    project = f"label=com.docker.compose.project={stack.project}"
    for listing in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
        argv = ["docker", *listing, "-q", "--filter", project]
        listed = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and listed.stdout.split() == [], (listing, listed.stdout)
    assert all(docker_image_present(image) for image in IMAGES)  # the images stay for `compose up`
