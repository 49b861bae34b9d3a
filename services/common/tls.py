"""TLS for the gRPC services and their clients, from PEM files.

* :class:`ServerTls` - a server's certificate chain and key, and optionally ``client_ca``: then every client
  must present a certificate signed by that CA (mutual TLS, used between the gateway and the stages).
* :class:`ClientTls` - what a client trusts (``ca``; empty: the system's roots), an optional client
  certificate for mTLS and an optional ``server_name`` checked against the server certificate instead of the
  target's host (e.g. a health probe dialling 127.0.0.1 of a certificate issued for ``stage1``).
* :func:`open_channel` - a secure channel with a :class:`ClientTls`, else a plain one.

Command-line options: :func:`add_server_tls_arguments` / :func:`server_tls_from_args` and
:func:`add_client_tls_arguments` / :func:`client_tls_from_args`; each option defaults to an environment
variable (named in its help) so keys stay out of process listings and manifests only name files. Importing
this module needs no gRPC (command-line parsers use it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.arguments import CommandLineError

if TYPE_CHECKING:
    import grpc


def _read(path: str | Path, what: str) -> bytes:
    """The bytes of PEM file ``path``; CommandLineError naming ``what`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandLineError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class ServerTls:
    """A server's PEM certificate chain and key; ``client_ca``: require client certificates it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials (client certificates required and verified when ``client_ca`` is set)."""
        import grpc

        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        ca = _read(self.client_ca, "client CA") if self.client_ca else None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientTls:
    """Trust ``ca`` (None: the system's roots), present ``cert``/``key`` when set (mTLS), check the server
    certificate against ``server_name`` when set (else the target's host)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate") if self.ca else None,
            private_key=_read(self.key, "client key") if self.key else None,
            certificate_chain=_read(self.cert, "client certificate") if self.cert else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        """Channel options (the server name override)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def open_channel(
    target: str, tls: ClientTls | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to ``target``: TLS with ``tls``, plaintext without."""
    import grpc

    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def _env_default(variable: str) -> str:
    return os.environ.get(variable, "")


def add_server_tls_arguments(
    parser: argparse.ArgumentParser, env_prefix: str, client_ca: bool, what: str = "gRPC"
) -> None:
    """``--tls-cert``, ``--tls-key`` (and ``--tls-client-ca`` when ``client_ca``), defaulting to
    ``$<env_prefix>_TLS_CERT`` / ``_TLS_KEY`` / ``_TLS_CLIENT_CA``; ``what``: what is served over TLS."""
    group = parser.add_argument_group(f"TLS (--tls-cert and --tls-key: serve over TLS; {what})")
    group.add_argument(
        "--tls-cert", default=_env_default(f"{env_prefix}_TLS_CERT"), metavar="PEM",
        help=f"server certificate chain (default: ${env_prefix}_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key", default=_env_default(f"{env_prefix}_TLS_KEY"), metavar="PEM",
        help=f"its private key (default: ${env_prefix}_TLS_KEY)",
    )
    if client_ca:
        group.add_argument(
            "--tls-client-ca", default=_env_default(f"{env_prefix}_TLS_CLIENT_CA"), metavar="PEM",
            help="require client certificates signed by this CA: mutual TLS; health and reflection too "
            f"(default: ${env_prefix}_TLS_CLIENT_CA)",
        )


def server_tls_from_args(args: argparse.Namespace) -> ServerTls | None:
    """The :class:`ServerTls` of :func:`add_server_tls_arguments` options (None: plaintext)."""
    client_ca = getattr(args, "tls_client_ca", "")
    if not (args.tls_cert or args.tls_key or client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise CommandLineError("TLS needs both --tls-cert and --tls-key (or their environment variables)")
    tls = ServerTls(Path(args.tls_cert), Path(args.tls_key), Path(client_ca) if client_ca else None)
    tls.credentials()  # unreadable files fail at start-up, with the file named
    return tls


def add_client_tls_arguments(
    parser: argparse.ArgumentParser, prefix: str, env_prefix: str, what: str, client_cert: bool = True
) -> None:
    """``--<prefix>-ca``, ``--<prefix>-cert``, ``--<prefix>-key`` (when ``client_cert``) and
    ``--<prefix>-server-name`` for the connection to ``what``, defaulting to ``$<env_prefix>_CA`` etc."""
    group = parser.add_argument_group(f"TLS to {what} (--{prefix}-ca or --{prefix}: use TLS)")
    group.add_argument(
        f"--{prefix}", action="store_true", dest=f"{prefix.replace('-', '_')}_on",
        help="use TLS, trusting the system's certificate authorities",
    )
    group.add_argument(
        f"--{prefix}-ca", default=_env_default(f"{env_prefix}_CA"), metavar="PEM",
        help=f"CA certificate that signed the certificate of {what} (default: ${env_prefix}_CA)",
    )
    if client_cert:
        group.add_argument(
            f"--{prefix}-cert", default=_env_default(f"{env_prefix}_CERT"), metavar="PEM",
            help=f"client certificate presented to {what} (mutual TLS; default: ${env_prefix}_CERT)",
        )
        group.add_argument(
            f"--{prefix}-key", default=_env_default(f"{env_prefix}_KEY"), metavar="PEM",
            help=f"its private key (default: ${env_prefix}_KEY)",
        )
    group.add_argument(
        f"--{prefix}-server-name", default=_env_default(f"{env_prefix}_SERVER_NAME"), metavar="NAME",
        help=f"name to check the certificate of {what} against instead of the address's host "
        f"(default: ${env_prefix}_SERVER_NAME)",
    )


def client_tls_from_args(args: argparse.Namespace, prefix: str) -> ClientTls | None:
    """The :class:`ClientTls` of :func:`add_client_tls_arguments` options (None: plaintext)."""
    name = prefix.replace("-", "_")
    ca, cert, key = (getattr(args, f"{name}_{part}", "") for part in ("ca", "cert", "key"))
    server_name = getattr(args, f"{name}_server_name")
    if not (getattr(args, f"{name}_on") or ca or cert or key or server_name):
        return None
    if bool(cert) != bool(key):
        raise CommandLineError(f"a client certificate needs both --{prefix}-cert and --{prefix}-key")
    tls = ClientTls(
        Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None, server_name
    )
    tls.credentials()
    return tls
