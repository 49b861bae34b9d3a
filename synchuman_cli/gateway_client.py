"""Client side of ``synchuman reconstruct`` and ``synchuman selftest``: submit a photo to the gateway, follow
the job with a progress bar per phase, download the GLB (and extras), report the outcome.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.common.auth import authorized_channel
from services.common.stage_io import BlobAssembler, BlobMismatch, blob_header, upload_messages
from services.common.tls import ClientTls, open_channel
from services.launcher import EmbeddedConfig, start_embedded
from services.supervisor import Supervisor, health_status
from synchuman.v1 import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc
from synchuman_cli.reporting import ProgressBars, beside, extra_file_names, summary_lines, write_report

TERMINAL = {
    reconstruction_pb2.JOB_STATE_SUCCEEDED,
    reconstruction_pb2.JOB_STATE_FAILED,
    reconstruction_pb2.JOB_STATE_CANCELLED,
}


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


def _upload(photo: bytes, options: common_pb2.JobOptions) -> Iterator[reconstruction_pb2.SubmitJobRequest]:
    start = reconstruction_pb2.SubmitJobStart(
        options=options, image=blob_header("input", "application/octet-stream", photo)
    )
    return upload_messages(reconstruction_pb2.SubmitJobRequest, start, {"input": photo})


def download(stub: reconstruction_pb2_grpc.ReconstructionServiceStub, job_id: str, name: str) -> bytes:
    """One artifact of a job, checked against its header's size and SHA-256 (RuntimeError when it is not
    the announced file)."""
    assembler = BlobAssembler()
    try:
        for message in stub.GetArtifact(
            reconstruction_pb2.GetArtifactRequest(job_id=job_id, name=name), timeout=300
        ):
            if message.WhichOneof("payload") == "header":
                assembler.add_header(message.header)
            else:
                assembler.add_chunk(message.chunk)
        data = assembler.finish().get(name)
    except BlobMismatch as exc:
        raise RuntimeError(f"download of {name} was incomplete or corrupted ({exc}); try again") from None
    if data is None:
        raise RuntimeError(f"download of {name} was incomplete or corrupted (no header); try again")
    return data


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
    with open_channel(gateway, tls) as channel:
        stub = reconstruction_pb2_grpc.ReconstructionServiceStub(authorized_channel(channel, token))
        try:
            job = stub.SubmitJob(_upload(photo, options), timeout=120).job
        except grpc.RpcError as exc:
            return Outcome(reconstruction_pb2.Job(), error=f"the gateway refused the photo: {exc.details()}")
        outcome = Outcome(job)
        bars = ProgressBars(progress)
        sequence = 0
        deadline = started + timeout_s
        try:
            while job.state not in TERMINAL:
                try:
                    for event in stub.WatchJob(
                        reconstruction_pb2.WatchJobRequest(job_id=job.id, after_sequence=sequence),
                        timeout=max(1.0, deadline - time.monotonic()),
                    ):
                        sequence = event.sequence
                        outcome.events.append(event)
                        kind = event.WhichOneof("event")
                        if kind == "progress":
                            bars.update(event.progress)
                        elif kind == "finished":
                            job = event.finished
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job.id), timeout=30)
                        outcome.error = f"gave up after {timeout_s:.0f} s; the job was cancelled"
                        return outcome
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(1.0)  # the gateway restarts: resume from the last sequence seen
                if job.state not in TERMINAL:
                    job = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job.id), timeout=30).job
        finally:
            bars.close()
        outcome.job = job
        outcome.seconds = time.monotonic() - started
        if job.state != reconstruction_pb2.JOB_STATE_SUCCEEDED:
            state = reconstruction_pb2.JobState.Name(job.state)
            outcome.error = f"job {job.id} {state}: {job.error.message or 'no reason given'}"
            return outcome
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(download(stub, job.id, "person.glb"))
        outcome.written.append(output)
        for name in extra_file_names(extras, {a.blob.name for a in job.artifacts}):
            path = beside(output, name)
            path.write_bytes(download(stub, job.id, name))
            outcome.written.append(path)
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
