"""Client side of ``synchuman reconstruct`` and ``synchuman selftest``: submit a photo to the gateway through
the ``synchuman-client`` package (clients/python), follow the job with a progress bar per phase, download the
GLB (and extras), report the outcome.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from synchuman_client import Client, SyncHumanError, reconstruction_pb2

from services.common.tls import ClientTls
from services.launcher import EmbeddedConfig, start_embedded
from services.supervisor import Supervisor, health_status
from synchuman.v1 import common_pb2
from synchuman_cli.reporting import ProgressBars, beside, extra_file_names, summary_lines, write_report


class GatewayUnavailable(Exception):
    """No gateway answers at the address."""


@dataclass
class Outcome:
    """How a reconstruction ended: the final job, the files written, an error message when it failed."""

    job: reconstruction_pb2.Job
    written: list[Path] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    events: list[reconstruction_pb2.WatchJobResponse] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """Human-readable summary: files, output report, warnings."""
        state = reconstruction_pb2.JobState.Name(self.job.state)
        title = f"job {self.job.id}: {state} in {self.seconds:.1f} s"
        if self.job.options.profile:
            title += f" (profile {self.job.options.profile})"
        return summary_lines(title, self.job.input_report, self.job.output_report, self.written)


def _download(client: Client, job_id: str, name: str, path: Path) -> Path:
    """Write one artifact to ``path`` once its size and SHA-256 checked out (RuntimeError otherwise)."""
    try:
        client.download(job_id, name, path, timeout_s=300)
    except SyncHumanError as exc:
        if exc.code != grpc.StatusCode.DATA_LOSS:
            raise RuntimeError(f"download of {name} failed: {exc}") from None
        reason = f"download of {name} was incomplete or corrupted ({exc.message}); try again"
        raise RuntimeError(reason) from None
    return path


def _follow(client: Client, outcome: Outcome, timeout_s: float, progress: bool) -> None:
    """Watch the job to its end (the watch resumes after a dropped stream, e.g. a gateway restart), updating
    the progress bars; on ``timeout_s`` cancel it and set ``outcome.error``."""
    bars = ProgressBars(progress)
    try:
        for event in client.watch(outcome.job.id, timeout_s=timeout_s, max_reconnects=10):
            outcome.events.append(event)
            kind = event.WhichOneof("event")
            if kind == "progress":
                bars.update(event.progress)
            elif kind == "finished":
                outcome.job = event.finished
    except SyncHumanError as exc:
        if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
            outcome.error = f"lost the job {outcome.job.id}: {exc}"
            return
        client.cancel(outcome.job.id, timeout_s=30)
        outcome.error = f"gave up after {timeout_s:.0f} s; the job was cancelled"
    finally:
        bars.close()


def reconstruct_photo(
    gateway: str,
    photo: bytes,
    options: common_pb2.JobOptions,
    output: Path,
    extras: list[str] | tuple[str, ...] = (),
    timeout_s: float = 3600.0,
    progress: bool = True,
    token: str = "",
    tls: ClientTls | None = None,
) -> Outcome:
    """Submit ``photo``, follow the job to its end, write the GLB to ``output`` and extras beside it.

    Raises :class:`GatewayUnavailable` when nothing answers at ``gateway``. ``token``: the gateway's bearer
    token, when it requires one; ``tls``: connect over TLS (None: plaintext).
    """
    if health_status(gateway, timeout_s=2.0, tls=tls) is None:
        tried = "over TLS: check --tls-ca, --tls-server-name" if tls else "plaintext; TLS gateway: --tls-ca"
        raise GatewayUnavailable(f"no gateway answers at {gateway} ({tried})")
    started = time.monotonic()
    secure = {"credentials": tls.credentials(), "channel_options": tls.options()} if tls else {}
    with Client(gateway, token=token or None, **secure) as client:
        try:
            outcome = Outcome(client.submit(photo, options, timeout_s=120))
        except SyncHumanError as exc:
            return Outcome(reconstruction_pb2.Job(), error=f"the gateway refused the photo: {exc.message}")
        _follow(client, outcome, timeout_s, progress)
        job = outcome.job
        outcome.seconds = time.monotonic() - started
        if outcome.error:
            return outcome
        if job.state != reconstruction_pb2.JOB_STATE_SUCCEEDED:
            state = reconstruction_pb2.JobState.Name(job.state)
            outcome.error = f"job {job.id} {state}: {job.error.message or 'no reason given'}"
            return outcome
        output.parent.mkdir(parents=True, exist_ok=True)
        outcome.written.append(_download(client, job.id, "person.glb", output))
        for name in extra_file_names(extras, {a.blob.name for a in job.artifacts}):
            outcome.written.append(_download(client, job.id, name, beside(output, name)))
        outcome.written.append(
            write_report(
                output, job.input_report, job.output_report, job_id=job.id, attempts=dict(job.attempts)
            )
        )
    return outcome


@dataclass
class EmbeddedServers:
    """Servers started by a client command: the gateway address and a way to stop them."""

    supervisor: Supervisor
    config: EmbeddedConfig

    @property
    def gateway(self) -> str:
        return self.config.address("gateway")

    def stop(self) -> None:
        self.supervisor.stop()


def start_servers_for(args: argparse.Namespace, ready_timeout_s: float = 900.0) -> EmbeddedServers:
    """Start the embedded servers on free ports with the command's ``--ckpts`` / ``--device``."""
    config = EmbeddedConfig.with_free_ports(
        ckpts=Path(args.ckpts) if args.ckpts else None, device=args.device, log_level="WARNING"
    )
    return EmbeddedServers(start_embedded(config, ready_timeout_s), config)
