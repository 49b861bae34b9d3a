"""The compose deployment as the end-to-end compose test drives it (tests only): a real Docker engine, the CPU
images built from a clean clone, ``docker compose -f compose.yaml -f compose.cpu.yaml`` with tiny random
checkpoints, and the gateway's published HTTP port. See ``tests/test_compose.py`` (``make compose-test``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import docker_env  # noqa: E402 - scripts/ is not a package

CPU_FILES = docker_env.CPU_FILES
SERVICES = ("preprocess", "stage1", "stage2", "gateway")
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
#: Few sampler steps, a small texture and few views: a job takes ~1 minute on 2 busy CPU cores.
SMALL_OPTIONS = {
    "multiview": {"steps": 2},
    "reconstruction": {
        "steps": 2, "texture_size": 256, "bake_steps": 5, "visibility_views": 8, "simplify_ratio": 0.95,
    },
}


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 1.0) -> object:
    """Poll ``condition`` until it returns something true; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(poll_s)


@dataclass
class Stack:
    """One compose project in ``workdir`` (a clone of the repository) with ``env`` (ports, checkpoints)."""

    workdir: Path
    project: str
    env: dict[str, str]
    http_port: int
    grpc_port: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def compose(self, *args: str, timeout_s: float = 900, check: bool = True, **env: str) -> str:
        """Run ``docker compose -p PROJECT -f compose.yaml -f compose.cpu.yaml ARGS``; returns its stdout."""
        argv = [*docker_env.compose_command(), "-p", self.project, *CPU_FILES, *args]
        done = subprocess.run(argv, cwd=self.workdir, env={**self.env, **env}, capture_output=True, text=True,
                              timeout=timeout_s)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def timed(self, step: str, action: Callable[[], object]) -> object:
        """Run ``action``, recording its wall time under ``step``."""
        started = time.monotonic()
        try:
            return action()
        finally:
            self.timings[step] = round(time.monotonic() - started, 1)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's running containers."""
        return self.compose("ps", "-q", service).split()

    def inspect(self, container: str) -> dict:
        done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)[0]

    def health(self, container: str) -> str:
        """The container's own HEALTHCHECK status (``starting``, ``healthy``, ``unhealthy``)."""
        state = self.inspect(container)["State"]
        return state.get("Health", {}).get("Status", "none")

    def logs(self, container: str) -> list[str]:
        """The container's log lines (stdout and stderr), as ``docker logs`` shows them."""
        done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
        return (done.stdout + done.stderr).splitlines()

    def log_records(self, container: str) -> list[dict]:
        return [json.loads(line) for line in self.logs(container) if line.strip()]

    # -- the gateway's HTTP API -----------------------------------------------------------------------------

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=30)

    def submit(self, photo: Path, options: dict | None = None) -> httpx.Response:
        form = {"options": json.dumps(SMALL_OPTIONS if options is None else options)}
        with photo.open("rb") as handle:
            files = {"image": (photo.name, handle, "image/png")}
            return httpx.post(self.base_url + "/v1/jobs", data=form, files=files, timeout=60)

    def submit_ok(self, photo: Path) -> str:
        reply = self.submit(photo)
        assert reply.status_code == 201, reply.text
        return reply.json()["job"]["id"]

    def job(self, job_id: str) -> dict:
        reply = self.get(f"/v1/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()["job"]

    def job_or_none(self, job_id: str) -> dict | None:
        """The job, or None while the gateway does not answer (restarting)."""
        try:
            return self.job(job_id)
        except (httpx.HTTPError, AssertionError):
            return None

    def wait_job(self, job_id: str, timeout_s: float = 900) -> dict:
        """Poll until the job is finished; returns it."""
        def finished() -> dict | None:
            job = self.job_or_none(job_id)
            return job if job and job["state"] in TERMINAL else None

        return wait_until(finished, timeout_s, f"job {job_id} to finish", poll_s=2.0)  # type: ignore[return-value]

    def follow_events(self, job_id: str, timeout_s: float = 900) -> list[dict]:
        """The job's server-sent events (``GET /v1/jobs/ID/events``; the server ends the stream with the
        ``finished`` event)."""
        url = f"{self.base_url}/v1/jobs/{job_id}/events"
        with httpx.stream("GET", url, timeout=httpx.Timeout(60, read=timeout_s)) as stream:
            return [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]

    def stage_jobs_started(self, container: str, event: str = "job started") -> list[str]:
        """Job ids in a stage container's ``job started`` (or ``event``) log records."""
        return [r.get("job_id", "") for r in self.log_records(container) if r.get("msg") == event]

    def cancel(self, job_id: str) -> dict:
        reply = httpx.post(f"{self.base_url}/v1/jobs/{job_id}/cancel", timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["job"]


def image_sizes(images: list[str]) -> dict[str, str]:
    """``docker system df -v``'s SIZE / SHARED SIZE / UNIQUE SIZE of each image (``repo:tag``)."""
    done = subprocess.run(["docker", "system", "df", "-v"], capture_output=True, text=True, timeout=120)
    sizes = {}
    for line in done.stdout.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) >= 7 and f"{parts[0]}:{parts[1]}" in images:
            sizes[f"{parts[0]}:{parts[1]}"] = f"size {parts[4]}, shared {parts[5]}, unique {parts[6]}"
    return sizes
