"""Launch the services as local child processes: preprocess, stage 1, stage 2 and the gateway (the "embedded"
all-in-one deployment of ``synchuman serve``, ``synchuman reconstruct`` and ``synchuman selftest``).

:data:`TARGETS` names every service module; :func:`child_specs` turns an :class:`EmbeddedConfig` into the
:class:`~services.supervisor.ChildSpec` list the supervisor runs; each child is
``python -m synchuman_cli serve <target> ...`` so it uses exactly the code and options of a stand-alone
service. Importing this module stays cheap and needs no gRPC (the CLI reads :data:`TARGETS` to build its
parser); the supervisor is imported where processes are started.
"""

from __future__ import annotations

import secrets
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.endpoints import DEFAULT_HOST, DEFAULT_PORTS, HEALTH_SERVICES
from services.common.tls import ClientTls

if TYPE_CHECKING:
    from services.supervisor import ChildSpec, Supervisor

#: Service name -> (module, one-line description). Order = start order of the all-in-one deployment (a front
#: end such as the gateway goes last). Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``;
#: add a service by adding one line here.
TARGETS: dict[str, tuple[str, str]] = {
    "preprocess": ("services.preprocess.main", "PreprocessService: decode, segment, frame, check (CPU)"),
    "stage1": ("services.stage1.main", "Stage1Service: multiview diffusion and sparse structure (GPU)"),
    "stage2": ("services.stage2.main", "Stage2Service: structured latent, decoders, GLB export (GPU)"),
    "gateway": ("gateway.main", "ReconstructionService gateway: jobs, stage retries, HTTP bridge"),
}


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (for tests and the self-test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of an all-in-one deployment: ``cert`` / ``key`` are every service's server certificate (its
    names must include the host the services listen on) and the gateway's client certificate to the stages
    (so it needs both the serverAuth and clientAuth uses); ``ca`` signed it: clients of the gateway trust it,
    and the stages accept only client certificates it signed (mutual TLS)."""

    ca: Path
    cert: Path
    key: Path

    def server_args(self) -> tuple[str, ...]:
        """Options of a service serving with this certificate."""
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))


@dataclass
class EmbeddedConfig:
    """Where each service listens and what it loads.

    ``ports``: per service name (see :data:`~services.common.endpoints.DEFAULT_PORTS`); ``ckpts``: checkpoint
    root (None: default); ``data_dir``: the gateway's job and artifact store; ``stage_args``: extra options
    for both GPU stages (e.g. ``["--max-queue", "8"]``); ``stage1_args``: extra options for stage 1 only
    (e.g. ``["--compile"]``); ``gateway_args``: extra options for the gateway (e.g. ``["--stage-timeout",
    "7200"]``); ``env``: extra environment for every child; ``tls``: serve every service over
    TLS, mutual TLS between the gateway and the stages (None: plaintext). The stages always require a
    bearer token only their gateway knows (``stage_token``, new and random per config). ``share_gpu``: both
    stages run on the one ``device``, so stage 2 pauses its GPU phases while stage 1 works
    (:mod:`services.common.gpu_share`, through :attr:`gpu_share_dir`); set it False when the children are
    pinned to different GPUs (e.g. ``CUDA_VISIBLE_DEVICES`` per child).
    """

    host: str = DEFAULT_HOST
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    ckpts: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    data_dir: Path | None = None
    log_level: str = "INFO"
    stage_args: list[str] = field(default_factory=list)
    stage1_args: list[str] = field(default_factory=list)
    gateway_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    tls: TlsFiles | None = None
    stage_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    share_gpu: bool = True

    @classmethod
    def with_free_ports(cls, **kwargs: object) -> EmbeddedConfig:
        """A config whose services listen on free ports (self-test, tests)."""
        config = cls(**kwargs)  # type: ignore[arg-type]
        config.ports = {name: free_port(config.host) for name in DEFAULT_PORTS}
        return config

    @property
    def gpu_share_dir(self) -> Path | None:
        """The folder of the stages' GPU turn (one per deployment: named after stage 1's port); None when the
        GPU is not shared or the stages run on the CPU."""
        if not self.share_gpu or self.device == "cpu":
            return None
        return Path(tempfile.gettempdir()) / f"synchuman-gpu-share-{self.ports['stage1']}"

    def address(self, name: str) -> str:
        """host:port of service ``name``."""
        return f"{self.host}:{self.ports[name]}"

    @property
    def http_url(self) -> str:
        """Base URL of the gateway's HTTP bridge."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.ports['http']}"

    def gateway_tls(self) -> ClientTls | None:
        """How a client connects to the gateway (None: plaintext)."""
        return ClientTls(self.tls.ca) if self.tls else None

    def stage_tls(self) -> ClientTls | None:
        """How the gateway (and a health check) connects to a stage: mTLS with the shared certificate."""
        return ClientTls(self.tls.ca, self.tls.cert, self.tls.key) if self.tls else None


def _cli(config: EmbeddedConfig, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "synchuman_cli", "--log-level", config.log_level, "serve", *args)


def child_specs(config: EmbeddedConfig) -> list[ChildSpec]:
    """The four services, gateway last (it is stopped first on shutdown)."""
    from services.supervisor import ChildSpec

    ckpts = ("--ckpts", str(config.ckpts)) if config.ckpts else ()
    device = ("--device", config.device, "--dtype", config.dtype)
    segmentation = ("--segmentation-dir", str(config.ckpts / "segmentation")) if config.ckpts else ()
    # two malloc arenas: with one per thread, freed request buffers stay spread over many arenas (RSS grows)
    env = {"MALLOC_ARENA_MAX": "2", **config.env, "SYNCHUMAN_STAGE_TOKEN": config.stage_token}
    stage_tls = (*config.tls.server_args(), "--tls-client-ca", str(config.tls.ca)) if config.tls else ()
    share = ("--gpu-share-dir", str(config.gpu_share_dir)) if config.gpu_share_dir else ()
    gpu_stage = (*ckpts, *device, *share, *config.stage_args)
    own_args: dict[str, tuple[str, ...]] = {
        "preprocess": segmentation,
        "stage1": (*gpu_stage, *config.stage1_args),
        "stage2": gpu_stage,
    }
    specs = []
    for stage, own in own_args.items():
        argv = _cli(config, stage, "--address", config.address(stage), *stage_tls, *own)
        specs.append(
            ChildSpec(stage, argv, config.address(stage), HEALTH_SERVICES[stage], env, config.stage_tls())
        )
    gateway_tls: tuple[str, ...] = ()
    if config.tls:
        files = config.tls
        gateway_tls = (*files.server_args(), "--stage-tls-ca", str(files.ca))
        gateway_tls += ("--stage-tls-cert", str(files.cert), "--stage-tls-key", str(files.key))
    gateway = _cli(
        config,
        "gateway",
        "--address",
        config.address("gateway"),
        "--http",
        f"{config.host}:{config.ports['http']}",
        "--preprocess",
        config.address("preprocess"),
        "--stage1",
        config.address("stage1"),
        "--stage2",
        config.address("stage2"),
        *(("--data-dir", str(config.data_dir)) if config.data_dir else ()),
        "--published-on",  # a --host beyond loopback needs $SYNCHUMAN_GATEWAY_AUTH_TOKEN
        config.host,
        *gateway_tls,
        *config.gateway_args,
    )
    address, health = config.address("gateway"), HEALTH_SERVICES["gateway"]
    specs.append(ChildSpec("gateway", gateway, address, health, env, config.gateway_tls()))
    return specs


def missing_services() -> list[str]:
    """Services whose module is not installed (``"name (module)"``); empty when all four can start."""
    import importlib.util

    return [f"{name} ({mod})" for name, (mod, _) in TARGETS.items() if not importlib.util.find_spec(mod)]


def start_embedded(config: EmbeddedConfig, ready_timeout_s: float = 600.0) -> Supervisor:
    """Start the four services supervised from a background thread; wait until all are SERVING.

    Raises ``RuntimeError`` at once when a service is not installed, and (after stopping what was started)
    when they are not ready in time.
    """
    missing = missing_services()
    if missing:
        raise RuntimeError(f"cannot start every service: not installed: {', '.join(missing)}")
    from services.supervisor import Supervisor

    supervisor = Supervisor(child_specs(config))
    supervisor.start()
    supervisor.run_in_background()
    if not supervisor.wait_ready(ready_timeout_s):
        reason = supervisor.failed or f"not all services were ready within {ready_timeout_s:.0f} s"
        supervisor.stop()
        raise RuntimeError(f"the embedded servers did not start: {reason}")
    return supervisor
