"""The gateway's webhook options (``synchuman serve gateway --webhook-...``) and their environment variables:
``SYNCHUMAN_GATEWAY_WEBHOOK_SECRET`` (or ``_SECRET_FILE``, a mounted Kubernetes secret),
``SYNCHUMAN_GATEWAY_WEBHOOK_ALLOW_HOSTS`` and ``SYNCHUMAN_GATEWAY_WEBHOOK_ALLOW_PRIVATE``. Webhooks are off
(callback URLs refused at submission) until both a secret and an allowed host are given.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from services.common.arguments import CommandLineError

if TYPE_CHECKING:  # imported when the options are read: the option parser stays light
    from gateway.webhooks import WebhookSettings

_ENV = "SYNCHUMAN_GATEWAY_WEBHOOK_"


def add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--webhook-*`` options."""
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get(f"{_ENV}SECRET", ""),
        metavar="WHSEC",
        help="Standard Webhooks signing secret, whsec_ + base64 of 24 to 64 random bytes (default: "
        f"${_ENV}SECRET; prefer it or --webhook-secret-file: options show up in process listings)",
    )
    parser.add_argument(
        "--webhook-secret-file",
        default=os.environ.get(f"{_ENV}SECRET_FILE", ""),
        metavar="FILE",
        help=f"file holding the signing secret (default: ${_ENV}SECRET_FILE)",
    )
    parser.add_argument(
        "--webhook-allow-hosts",
        default=os.environ.get(f"{_ENV}ALLOW_HOSTS", ""),
        metavar="HOSTS",
        help="hosts jobs' callback URLs may name, comma-separated: names, addresses, *.domain (subdomains) "
        f"or * (any); empty: no webhooks, callback URLs refused (default: ${_ENV}ALLOW_HOSTS)",
    )
    parser.add_argument(
        "--webhook-allow-private",
        action="store_true",
        default=os.environ.get(f"{_ENV}ALLOW_PRIVATE", "").lower() in ("1", "true", "yes"),
        help="let callback hosts resolve to loopback, link-local and private addresses (refused by default: "
        f"they reach this cluster's own services; default: ${_ENV}ALLOW_PRIVATE=1)",
    )
    parser.add_argument(
        "--webhook-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="deadline of one webhook request, connection to answer (default 10)",
    )
    parser.add_argument(
        "--webhook-retry-base",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="first retry delay of a failed webhook; the schedule scales with it (default 5: 5 s, 30 s, "
        "3 min, 18 min, 1.8 h, then every 6 h, for at least 24 h)",
    )


def webhook_settings_from_args(args: argparse.Namespace) -> WebhookSettings:
    """:class:`~gateway.webhooks.WebhookSettings` from the options; CommandLineError naming the option at
    fault."""
    from gateway.webhooks import WebhookRetry, WebhookSettings, read_secret
    from gateway.webhooks_policy import WebhookPolicy, parse_allow_hosts

    try:
        secret = read_secret(args.webhook_secret, args.webhook_secret_file)
    except ValueError as exc:
        raise CommandLineError(f"--webhook-secret: {exc}") from None
    try:
        hosts = parse_allow_hosts(args.webhook_allow_hosts)
    except ValueError as exc:
        raise CommandLineError(f"--webhook-allow-hosts: {exc}") from None
    if hosts and not secret:
        raise CommandLineError(
            "--webhook-allow-hosts needs a signing secret: set SYNCHUMAN_GATEWAY_WEBHOOK_SECRET (or "
            "--webhook-secret-file); receivers verify the events with it"
        )
    if not 0 < args.webhook_timeout <= 300:
        raise CommandLineError(f"--webhook-timeout: {args.webhook_timeout:g} s is not in (0, 300]")
    if not 0 < args.webhook_retry_base <= 3600:
        raise CommandLineError(f"--webhook-retry-base: {args.webhook_retry_base:g} s is not in (0, 3600]")
    return WebhookSettings(
        secret=secret,
        policy=WebhookPolicy(hosts, args.webhook_allow_private),
        retry=WebhookRetry(base_s=args.webhook_retry_base),
        timeout_s=args.webhook_timeout,
        poll_s=args.poll_seconds,
    )
