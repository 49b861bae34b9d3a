"""Starting services: the four as compose runs them (:func:`launch`), with the embedded launcher
(:func:`services.launcher.child_specs`) under a :class:`~services.supervisor.Supervisor` (which also
restarts a killed child): preprocess and the gateway on the CPU, each GPU stage pinned to its GPU with
``CUDA_VISIBLE_DEVICES``; or one ``synchuman serve stageN`` process alone (:class:`StageProcess`)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib.poll import serving
from services.launcher import EmbeddedConfig, child_specs, free_port
from services.supervisor import ChildSpec, Supervisor


@dataclass(frozen=True)
class Route:
    """Where a run's jobs go: the gateway, and the stage-2 service behind it (``host:port`` each)."""

    gateway: str
    stage2: str


@dataclass(frozen=True)
class Deployment:
    """What to start. ``gpus``: one GPU index (both stages share it) or two (stage 1, stage 2), ignored on
    ``device="cpu"``; ``max_queue``: each stage's queue length; ``priority``: on one GPU, stage 2 yields the
    GPU to stage 1 (the launcher's ``share_gpu``); ``twin``: also :func:`without_priority_twin`."""

    ckpts: Path
    data_dir: Path
    device: str = "cuda"
    dtype: str = "float16"
    gpus: tuple[str, ...] = ("0",)
    max_queue: int = 8
    stage1_compile: bool = False
    priority: bool = True
    twin: bool = False
    log_level: str = "WARNING"
    stop_grace_s: float = 15.0


def _set_option(argv: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    at = argv.index(flag)
    return (*argv[: at + 1], value, *argv[at + 2 :])


def _drop_option(argv: tuple[str, ...], flag: str) -> tuple[str, ...]:
    if flag not in argv:
        return argv
    at = argv.index(flag)
    return (*argv[:at], *argv[at + 2 :])


def without_priority_twin(specs: list[ChildSpec], config: EmbeddedConfig, data_dir: Path) -> list[ChildSpec]:
    """A second stage 2 that does not yield the GPU (no ``--gpu-share-dir``) and a second gateway in front of
    it, sharing preprocess and stage 1: the deployment without priority beside the one with it, so one
    start-up serves both runs (the idle stage 2 only holds its memory meanwhile)."""
    by_name = {spec.name: spec for spec in specs}
    stage2, gateway = by_name["stage2"], by_name["gateway"]
    stage2_address, gateway_address = (f"{config.host}:{free_port(config.host)}" for _ in range(2))
    stage2_argv = _set_option(_drop_option(stage2.argv, "--gpu-share-dir"), "--address", stage2_address)
    gateway_argv = gateway.argv
    for flag, value in (
        ("--address", gateway_address),
        ("--http", f"{config.host}:{free_port(config.host)}"),
        ("--stage2", stage2_address),
        ("--data-dir", str(data_dir)),
    ):
        gateway_argv = _set_option(gateway_argv, flag, value)
    return [
        dataclasses.replace(stage2, name="stage2-no-priority", argv=stage2_argv, address=stage2_address),
        dataclasses.replace(gateway, name="gateway-no-priority", argv=gateway_argv, address=gateway_address),
    ]


def launch(
    deployment: Deployment, ready_timeout_s: float
) -> tuple[Supervisor, EmbeddedConfig, dict[str, Route]]:
    """Start ``deployment`` and wait up to ``ready_timeout_s`` for every health check to be SERVING
    (``SystemExit`` naming why not). Returns the running supervisor, the config and the routes: ``"run"``
    (with ``twin``: ``"stage-1 priority"`` and ``"no priority"``)."""
    gpus = deployment.gpus
    if deployment.device != "cpu" and len(gpus) not in (1, 2):
        raise SystemExit("--gpus takes one GPU (shared by both stages) or two (stage 1, stage 2)")
    config = EmbeddedConfig.with_free_ports(
        share_gpu=deployment.priority and len(gpus) == 1,
        ckpts=deployment.ckpts,
        device=deployment.device,
        dtype=deployment.dtype,
        data_dir=deployment.data_dir / "jobs",
        log_level=deployment.log_level,
        stage_args=["--max-queue", str(deployment.max_queue)],
        stage1_args=["--compile"] if deployment.stage1_compile else [],
    )
    visible = {"preprocess": "", "gateway": "", "stage1": "", "stage2": ""}
    if deployment.device != "cpu":
        visible["stage1"], visible["stage2"] = gpus[0], gpus[-1]
    specs = [
        dataclasses.replace(spec, env={**spec.env, "CUDA_VISIBLE_DEVICES": visible[spec.name]})
        for spec in child_specs(config)
    ]
    main_route = Route(config.address("gateway"), config.address("stage2"))
    routes = {"run": main_route}
    if deployment.twin:
        twins = without_priority_twin(specs, config, deployment.data_dir / "jobs-no-priority")
        specs += twins
        routes = {"no priority": Route(twins[1].address, twins[0].address), "stage-1 priority": main_route}
    supervisor = Supervisor(specs, stop_grace_s=deployment.stop_grace_s)
    supervisor.start()
    supervisor.run_in_background()
    if not supervisor.wait_ready(ready_timeout_s):
        reason = supervisor.failed or f"not all services SERVING within {ready_timeout_s:.0f} s"
        supervisor.stop()
        raise SystemExit(f"services did not start: {reason}")
    return supervisor, config, routes


class StageProcess:
    """One ``synchuman serve stage{stage}`` process on a free localhost port (:attr:`address`), with
    ``args`` after ``--ckpts ckpts`` and ``env`` over this process's environment; its stderr (the JSON log,
    level INFO) goes to ``log_path``."""

    def __init__(
        self,
        stage: int,
        ckpts: Path,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.address = f"127.0.0.1:{free_port('127.0.0.1')}"
        self.log_path = log_path
        command = [
            sys.executable, "-m", "synchuman_cli", "--log-level", "INFO", "serve", f"stage{stage}",
            "--address", self.address, "--ckpts", str(ckpts), *args,
        ]  # fmt: skip
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log_path.open("w"), env={**os.environ, **(env or {})}
        )

    def ready_s(self) -> float | None:
        """Seconds from launch to now once the service is SERVING (None while it is not yet);
        ``RuntimeError`` with the end of its log when the process exited."""
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"exited with {self.process.returncode}: {tail}")
        return time.perf_counter() - self.started if serving(self.address) else None

    def stop(self, timeout_s: float = 90.0) -> None:
        """SIGTERM, then SIGKILL when it has not exited within ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
