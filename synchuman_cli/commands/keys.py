"""``synchuman keys create|list|revoke``: the gateway's API keys, kept (hashed) in its job store.

Run it where the job store is reachable: on the gateway's host or pod (``kubectl exec deploy/gateway --
synchuman keys ...``), with the gateway's ``$SYNCHUMAN_GATEWAY_JOB_STORE`` (or ``--job-store``). ``create``
prints the new key alone on stdout (``KEY=$(synchuman keys create --name acme)``); it is shown only then.
See :mod:`gateway.api_keys` and :mod:`gateway.tenants`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

QUOTA_HELP = (
    "limits as NAME=VALUE, comma-separated: concurrent=N (jobs queued or running at once), daily=N (jobs "
    "created per UTC day), upload=SIZE (photo bytes; kB, KiB, MB, MiB accepted); none or 0: no limit "
    "(default: none)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``keys`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "keys",
        help="create, list or revoke the gateway's API keys (tenants with their own jobs and quotas)",
        description="API keys of the gateway, stored hashed in its job store. A key sees only the jobs it "
        "created (an --admin key sees all, as the shared --auth-token does). Once any key exists, calls "
        "without a token are refused.",
    )
    parser.add_argument(
        "--job-store",
        default=os.environ.get("SYNCHUMAN_GATEWAY_JOB_STORE")
        or os.environ.get("SYNCHUMAN_GATEWAY_DATABASE_URL", ""),
        metavar="URL",
        help="the gateway's job store (default: $SYNCHUMAN_GATEWAY_JOB_STORE, else "
        "sqlite:///DATA_DIR/jobs.sqlite3)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("gateway-data"), help="the gateway's --data-dir (SQLite)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="make a key and print it (shown only this once)")
    create.add_argument("--name", required=True, help="who the key is for (shown in keys list)")
    create.add_argument("--quota", default="", metavar="LIMITS", help=QUOTA_HELP)
    create.add_argument("--admin", action="store_true", help="the key sees and manages every job")
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="every key with its limits and today's jobs (never the key)")
    listing.set_defaults(func=run_list)

    revoke = actions.add_parser("revoke", help="refuse a key from now on (UNAUTHENTICATED / HTTP 401)")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (keys list; shk_<KEY_ID>_...)")
    revoke.set_defaults(func=run_revoke)


def _keys(args: argparse.Namespace):  # noqa: ANN202 - gateway.api_keys.SqlKeyStore, with its store
    from gateway.store import StoreError, open_job_store
    from synchuman_cli.main import UserError

    try:
        return open_job_store(args.job_store, args.data_dir)
    except (StoreError, ValueError) as exc:
        raise UserError(f"cannot open the job store: {exc}") from None


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9)) if ns else "-"


def run_create(args: argparse.Namespace) -> int:
    from gateway.api_keys import parse_quota
    from synchuman_cli.main import UserError

    try:
        quota = parse_quota(args.quota)
    except ValueError as exc:
        raise UserError(f"--quota: {exc}") from None
    store = _keys(args)
    try:
        key, token = store.api_keys.create(args.name, quota, admin=args.admin)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    role = "admin" if key.admin else "tenant"
    print(
        f"created {role} key {key.key_id} ({key.name}), quota {quota.describe()}; store the key now, it is "
        "not shown again:",
        file=sys.stderr,
    )
    print(token)
    return 0


def run_list(args: argparse.Namespace) -> int:
    store = _keys(args)
    try:
        keys = store.api_keys.list()
    finally:
        store.close()
    rows = [("KEY_ID", "NAME", "ROLE", "QUOTA", "JOBS_TODAY", "CREATED", "REVOKED")]
    for key in keys:
        role = "admin" if key.admin else "tenant"
        created, revoked = _when(key.create_ns), _when(key.revoke_ns)
        rows.append((key.key_id, key.name, role, key.quota.describe(), str(key.jobs_today), created, revoked))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from gateway.api_keys import KEY_ID_PATTERN, KeyNotFound
    from synchuman_cli.main import UserError

    if not KEY_ID_PATTERN.fullmatch(args.key_id):
        raise UserError(f"{args.key_id!r} is no key id: give the 10 characters after shk_ (keys list)")
    store = _keys(args)
    try:
        key = store.api_keys.revoke(args.key_id)
    except KeyNotFound as exc:
        raise UserError(str(exc)) from None
    finally:
        store.close()
    print(f"revoked key {key.key_id} ({key.name}) at {_when(key.revoke_ns)}", file=sys.stderr)
    return 0
