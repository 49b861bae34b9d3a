"""A Docker engine and build inputs for the compose test (``make compose-test``), on any Linux CI machine.

    python scripts/docker_env.py [--keep-dockerd]     # build the CPU images (compose.cpu.yaml) here

* :func:`ensure_dockerd`: uses a running engine; else installs Debian's ``docker.io`` when ``dockerd`` is
  missing (root, apt) and starts ``dockerd`` in the background; :meth:`Engine.stop` stops only what it
  started.
* :func:`python_base`: ``python:3.12-slim`` when it is present or can be pulled; otherwise (no Docker Hub) a
  local Debian bookworm image built with ``debootstrap`` and ``docker import`` (~1-3 minutes, once; kept as
  ``synchuman/local-base:bookworm``). It trusts the host's CA bundle (``PIP_CERT``), so pip works behind the
  same TLS-inspecting proxy as the host.
* :func:`cpu_torch`: the CPU torch build arguments. The public CPU index when a container reaches it;
  otherwise the host's own CPU wheel of the venv's torch version (``pip download``, i.e. the host's pip
  configuration finds it), served to the image build over HTTP on the Docker bridge.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".cache" / "docker"
PUBLIC_BASE = "python:3.12-slim"
LOCAL_BASE = "synchuman/local-base:bookworm"
LOCAL_BASE_PYTHON = "3.11"  # Debian bookworm's python3
PUBLIC_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
Completed = subprocess.CompletedProcess


def run(argv: list[str], timeout: float, check: bool = True, env: dict[str, str] | None = None) -> Completed:
    """``subprocess.run`` with captured text output; raises with the command's stderr when ``check``."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def engine_up() -> bool:
    """True when ``docker info`` reaches a running engine."""
    if not shutil.which("docker"):
        return False
    try:
        return run(["docker", "info", "--format", "{{.ServerVersion}}"], 30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Engine:
    """The Docker engine in use; ``process`` is the ``dockerd`` this run started (None: it was running)."""

    process: subprocess.Popen | None = None

    def stop(self) -> None:
        """Stop the ``dockerd`` started by :func:`ensure_dockerd` (containers were removed before)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ensure_dockerd() -> Engine:
    """A running Docker engine: the present one, or ``dockerd`` installed (apt) and started by this call."""
    if engine_up():
        return Engine()
    if not shutil.which("dockerd"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError("no Docker engine, and installing one needs root and apt-get: install Docker")
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "install", "-y", "-q", "docker.io"], 900, env=apt_env)
    CACHE.mkdir(parents=True, exist_ok=True)
    log = (CACHE / "dockerd.log").open("ab")
    process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not engine_up():
        if process.poll() is not None or time.monotonic() > deadline:
            Engine(process).stop()
            raise RuntimeError(f"dockerd did not start; see {CACHE / 'dockerd.log'}")
        time.sleep(1)
    return Engine(process)


def image_present(name: str) -> bool:
    return run(["docker", "image", "inspect", name], 60, check=False).returncode == 0


def python_base() -> str:
    """The CPU images' base: the public ``python:3.12-slim``, else the local bookworm base (built once)."""
    if image_present(PUBLIC_BASE):
        return PUBLIC_BASE
    with contextlib.suppress(subprocess.TimeoutExpired):
        if run(["docker", "pull", "-q", PUBLIC_BASE], 120, check=False).returncode == 0:
            return PUBLIC_BASE
    if not image_present(LOCAL_BASE):
        build_local_base()
    return LOCAL_BASE


def build_local_base() -> None:
    """``debootstrap`` a minimal bookworm with python3 + venv, trust the host's CAs, ``docker import`` it."""
    if not shutil.which("debootstrap"):
        run(["apt-get", "install", "-y", "-q", "debootstrap"], 600)
    with tempfile.TemporaryDirectory(prefix="synchuman-base-") as tmp:
        root = Path(tmp) / "root"
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(root)], 1200)
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        changes = ["ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                   "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]
        argv = ["docker", "import", *[arg for c in changes for arg in ("--change", c)], "-", LOCAL_BASE]
        imported = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True, timeout=600)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"docker import of the local base failed: {imported.stderr.strip()}")


def container_reaches(base: str, url: str) -> bool:
    """True when a container of ``base`` fetches ``url`` (the registry path the image build would take)."""
    probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=10)"
    try:
        return run(["docker", "run", "--rm", base, "python3", "-c", probe], 90, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (what build containers reach the host on)."""
    template = '{{range .IPAM.Config}}{{.Gateway}}{{end}} {{index .Options "com.docker.network.bridge.name"}}'
    found = run(["docker", "network", "inspect", "bridge", "--format", template], 30).stdout.strip()
    gateway, _, interface = found.rpartition(" ")
    if gateway.strip():
        return gateway.strip()
    address = run(["ip", "-4", "-o", "addr", "show", interface], 30).stdout.split()  # "... inet A.B.C.D/16"
    return address[address.index("inet") + 1].split("/")[0]


#: The wheel server's port when free: its URL is a build argument; a stable one keeps the deps layer cached.
WHEEL_PORT = 47321


@contextlib.contextmanager
def serve_folder(folder: Path, host: str) -> Iterator[str]:
    """Serve ``folder`` over plain HTTP on ``host`` (:data:`WHEEL_PORT`, else any free port) while the block
    runs; yields the URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer((host, WHEEL_PORT), handler)
    except OSError:  # in use
        server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def host_torch_wheel(python_version: str) -> Path:
    """The host's CPU wheel of this venv's torch version for ``python_version`` (``pip download``)."""
    import torch

    version = torch.__version__
    if "+cpu" not in version:
        raise RuntimeError(f"the venv's torch is {version}, not a CPU build: it cannot serve the CPU images")
    dest = CACHE / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    tag = python_version.replace(".", "")
    found = sorted(dest.glob(f"torch-{version}-cp{tag}-*.whl"))
    if not found:
        run([sys.executable, "-m", "pip", "download", f"torch=={version}", "--no-deps", "--only-binary=:all:",
             "--python-version", python_version, "--platform", "manylinux_2_28_x86_64", "-d", str(dest)], 900)
        found = sorted(dest.glob(f"torch-{version}-cp{tag}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download torch=={version} for Python {python_version} found no wheel")
    return found[0]


@contextlib.contextmanager
def cpu_torch(base: str) -> Iterator[dict[str, str]]:
    """The compose variables that give the CPU images a CPU torch (valid while the block runs)."""
    if container_reaches(base, PUBLIC_CPU_INDEX + "/torch/"):
        yield {}
        return
    if base != LOCAL_BASE:
        raise RuntimeError(f"containers of {base} reach no CPU torch index; the host wheel fits {LOCAL_BASE}")
    wheel = host_torch_wheel(LOCAL_BASE_PYTHON)
    version = wheel.name.split("-")[1]
    with serve_folder(wheel.parent, bridge_gateway()) as url:
        yield {
            "SYNCHUMAN_CPU_TORCH_SPEC": f"torch=={version}",
            "SYNCHUMAN_CPU_TORCH_INDEX_URL": "https://pypi.org/simple",
            "SYNCHUMAN_CPU_TORCH_FIND_LINKS": url,
        }


def compose_command() -> list[str]:
    """``docker compose`` when the plugin is installed, else the Docker Compose v2 binary of
    ``scripts/fetch_compose.py`` (put in ``.cache/tools``)."""
    if run(["docker", "compose", "version"], 30, check=False).returncode == 0:
        return ["docker", "compose"]
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import fetch_compose

    return [str(fetch_compose.fetch())]


CPU_FILES = ["-f", "compose.yaml", "-f", "compose.cpu.yaml"]


def build_cpu_images(workdir: Path, env: dict[str, str]) -> float:
    """``docker compose -f compose.yaml -f compose.cpu.yaml build`` in ``workdir``; returns the seconds."""
    started = time.monotonic()
    done = subprocess.run([*compose_command(), *CPU_FILES, "build"], cwd=workdir,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"compose build failed:\n{(done.stdout + done.stderr)[-6000:]}")
    return time.monotonic() - started


@contextlib.contextmanager
def build_inputs() -> Iterator[dict[str, str]]:
    """The compose variables to build the CPU images on this machine (valid while the block runs)."""
    base = python_base()
    with cpu_torch(base) as torch_vars:
        yield {"SYNCHUMAN_PYTHON_IMAGE": base, **torch_vars}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the CPU images (compose.cpu.yaml) on this machine")
    parser.add_argument("--keep-dockerd", action="store_true", help="leave running a dockerd it started")
    args = parser.parse_args(argv)
    engine = ensure_dockerd()
    try:
        with build_inputs() as env:
            print("\n".join(f"{key}={value}" for key, value in env.items()))
            print(f"built in {build_cpu_images(REPO_ROOT, env):.0f} s")
    finally:
        if not args.keep_dockerd:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
