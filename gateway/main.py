"""``synchuman serve gateway`` / ``python -m gateway``: the ReconstructionService gateway process.

Options may also come from the environment: ``SYNCHUMAN_GATEWAY_AUTH_TOKEN`` (bearer token of the HTTP
bridge; preferred over ``--auth-token``, which shows up in process listings), ``SYNCHUMAN_GATEWAY_JOB_STORE``
(``--job-store``; holds the database password, so keep it out of the command line; the older
``SYNCHUMAN_GATEWAY_DATABASE_URL`` is read too), ``SYNCHUMAN_GATEWAY_ARTIFACT_STORE``,
``SYNCHUMAN_STAGE_TOKEN`` (``--stage-token``), ``SYNCHUMAN_GATEWAY_PROFILES`` (``--profiles``) and the TLS
files (``SYNCHUMAN_GATEWAY_TLS_CERT`` / ``_KEY``: gRPC over TLS; ``SYNCHUMAN_GATEWAY_STAGE_TLS_CA`` /
``_CERT`` / ``_KEY``: (m)TLS to the stages); traces go where ``OTEL_EXPORTER_OTLP_ENDPOINT`` says
(``--otlp-endpoint``; :mod:`services.common.tracing`); the webhook options' variables are listed in
:mod:`gateway.webhooks_config`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from gateway.webhooks_config import add_webhook_arguments, webhook_settings_from_args
from services.common import tracing
from services.common.arguments import CommandLineError
from services.common.endpoints import default_address
from services.common.tls import (
    add_client_tls_arguments,
    add_server_tls_arguments,
    client_tls_from_args,
    server_tls_from_args,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the gateway."""
    parser.add_argument("--address", default=default_address("gateway"), help="gRPC host:port to listen on")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (overrides the port of --address)")
    parser.add_argument(
        "--http",
        default=default_address("http"),
        metavar="HOST:PORT",
        help="HTTP bridge host:port ('' or 'off': no HTTP bridge)",
    )
    parser.add_argument("--http-port", type=int, help="HTTP port (overrides the port of --http)")
    for name in ("preprocess", "stage1", "stage2"):
        parser.add_argument(
            f"--{name}",
            f"--{name}-target",
            dest=name,
            default=default_address(name),
            metavar="TARGET",
            help=f"gRPC target of the {name} service: host:port, dns:///host:port or "
            f"ipv4:ADDR:PORT,ADDR:PORT (replicas used round robin; default {default_address(name)})",
        )
    parser.add_argument("--data-dir", default="gateway-data", metavar="DIR", help="job and artifact store")
    parser.add_argument(
        "--job-store",
        "--database-url",
        dest="database_url",
        default=os.environ.get("SYNCHUMAN_GATEWAY_JOB_STORE")
        or os.environ.get("SYNCHUMAN_GATEWAY_DATABASE_URL", ""),
        metavar="URL",
        help="job store: sqlite:///PATH (one gateway) or postgresql://USER:PASSWORD@HOST:PORT/DB (several "
        "gateways share it; default: $SYNCHUMAN_GATEWAY_JOB_STORE, else sqlite:///DATA_DIR/jobs.sqlite3)",
    )
    parser.add_argument(
        "--artifact-store",
        default=os.environ.get("SYNCHUMAN_GATEWAY_ARTIFACT_STORE", ""),
        metavar="URL",
        help="job files: file:///PATH or s3://BUCKET/PREFIX (AWS_ENDPOINT_URL, AWS_REGION and credentials "
        "from the usual AWS variables/config; default: $SYNCHUMAN_GATEWAY_ARTIFACT_STORE, else "
        "DATA_DIR/artifacts)",
    )
    parser.add_argument(
        "--s3-presigned-downloads",
        type=int,
        default=0,
        metavar="SECONDS",
        help="with an s3:// artifact store: answer HTTP downloads with a 307 redirect to a presigned S3 URL "
        "valid SECONDS, so the bytes go from S3 to the client (S3's endpoint must be reachable by the "
        "clients; same as ?presigned_downloads=SECONDS on the store URL; default 0: the gateway sends them)",
    )
    parser.add_argument(
        "--gateway-id",
        default=os.environ.get("SYNCHUMAN_GATEWAY_ID", ""),
        help="this gateway's name on the jobs it leases: unique among the gateways of one job store, the "
        "same across its restarts (default: $SYNCHUMAN_GATEWAY_ID, else HOSTNAME:GRPC_PORT)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="a job stays leased this long without a heartbeat; a dead gateway's jobs are taken over after "
        "it (default 30)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="an idle worker looks for jobs at least this often; sooner when woken by a submission here, a "
        "PostgreSQL notification or a waiting job's due time (default 1)",
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("SYNCHUMAN_GATEWAY_AUTH_TOKEN", ""),
        help="bearer token that gRPC calls and the HTTP bridge require, the admin's: it sees every job; "
        "tenants send API keys instead (synchuman keys create; default: $SYNCHUMAN_GATEWAY_AUTH_TOKEN; "
        "empty: none, and the gateway is open until an API key exists)",
    )
    parser.add_argument(
        "--published-on",
        default=os.environ.get("SYNCHUMAN_GATEWAY_PUBLISHED_ON", ""),
        metavar="HOST",
        help="the host interface clients reach the gateway's ports on (compose sets it from $SYNCHUMAN_BIND, "
        "synchuman serve from --host); any but a loopback one needs --auth-token (default: "
        "$SYNCHUMAN_GATEWAY_PUBLISHED_ON; empty: no check)",
    )
    add_server_tls_arguments(parser, "SYNCHUMAN_GATEWAY", client_ca=False, what="gRPC and the HTTP bridge")
    parser.add_argument(
        "--stage-token",
        default=os.environ.get("SYNCHUMAN_STAGE_TOKEN", ""),
        help="bearer token sent to the stage services (their --auth-token; default: $SYNCHUMAN_STAGE_TOKEN)",
    )
    add_client_tls_arguments(parser, "stage-tls", "SYNCHUMAN_GATEWAY_STAGE_TLS", "the stage services")
    parser.add_argument("--max-upload-bytes", type=int, default=32 << 20, help="largest photo accepted")
    parser.add_argument(
        "--max-pending-jobs", type=int, default=64, help="queued + running jobs before RESOURCE_EXHAUSTED"
    )
    parser.add_argument("--workers", type=int, default=8, help="jobs worked on at once (default 8)")
    parser.add_argument(
        "--stage-timeout", type=float, default=1800.0, metavar="SECONDS", help="deadline of one stage call"
    )
    parser.add_argument("--max-attempts", type=int, default=20, help="attempts per stage before a job fails")
    parser.add_argument(
        "--profiles",
        default=os.environ.get("SYNCHUMAN_GATEWAY_PROFILES", ""),
        metavar="FILE",
        help="named output profiles (TOML, checked at start-up; format: the shipped gateway/profiles.toml, "
        "which is the default: standard, web, game, ar, preview-only; default: $SYNCHUMAN_GATEWAY_PROFILES)",
    )
    parser.add_argument(
        "--retention-hours",
        type=float,
        default=168.0,
        help="delete finished jobs (record, photo, outputs) this long after submission (default 168 = "
        "7 days; 0: keep until DeleteJob)",
    )
    tracing.add_tracing_arguments(parser)
    add_webhook_arguments(parser)


def _with_port(address: str, port: int | None) -> str:
    return address if port is None else f"{address.rsplit(':', 1)[0]}:{port}"


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _artifact_store(args: argparse.Namespace) -> str:
    """The artifact store URL with ``--s3-presigned-downloads`` in it; CommandLineError when it is no S3 store
    or the seconds are out of range."""
    if not args.s3_presigned_downloads:
        return args.artifact_store
    from gateway.artifacts_s3 import presigned_downloads_url

    try:
        return presigned_downloads_url(args.artifact_store, args.s3_presigned_downloads)
    except ValueError as exc:
        raise CommandLineError(f"--s3-presigned-downloads: {exc}") from None


def config_from_args(args: argparse.Namespace):  # noqa: ANN201 - gateway.server.GatewayConfig
    """A :class:`gateway.server.GatewayConfig` from parsed options; CommandLineError when the gateway would be
    published beyond this host (``--published-on``) without a token."""
    from gateway.retry import RetryPolicy
    from gateway.server import GatewayConfig

    if args.published_on and not _is_loopback(args.published_on) and not args.auth_token:
        raise CommandLineError(
            f"the gateway is published on {args.published_on} without a token (open to anyone there): "
            "set SYNCHUMAN_GATEWAY_AUTH_TOKEN (or --auth-token), or publish on 127.0.0.1 (SYNCHUMAN_BIND)"
        )

    from gateway.profile_file import ProfileFileError, load_profiles

    try:
        load_profiles(args.profiles or None)  # a mistake in the file stops the start, naming file and key
    except ProfileFileError as exc:
        raise CommandLineError(f"--profiles: {exc}") from None
    http = "" if args.http in ("", "off") else _with_port(args.http, args.http_port)
    return GatewayConfig(
        address=_with_port(args.address, args.grpc_port),
        http_address=http,
        preprocess_target=args.preprocess,
        stage1_target=args.stage1,
        stage2_target=args.stage2,
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        artifact_store=_artifact_store(args),
        auth_token=args.auth_token,
        max_upload_bytes=args.max_upload_bytes,
        max_pending_jobs=args.max_pending_jobs,
        workers=args.workers,
        stage_timeout_s=args.stage_timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        retention_s=args.retention_hours * 3600.0,
        gateway_id=args.gateway_id,
        lease_s=args.lease_seconds,
        poll_s=args.poll_seconds,
        tls=server_tls_from_args(args),
        stage_token=args.stage_token,
        stage_tls=client_tls_from_args(args, "stage-tls"),
        profiles=args.profiles,
        webhooks=webhook_settings_from_args(args),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (traced when ``--otlp-endpoint`` or the OTLP variables say so)."""
    from gateway.server import serve

    config = config_from_args(args)
    tracing.configure("gateway", args.otlp_endpoint)
    return serve(config)
