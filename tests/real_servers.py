"""Real servers the storage tests start and stop themselves (tests only).

- :func:`postgres_server`: a real PostgreSQL server (Debian's ``postgresql`` package, ``initdb`` and
  ``postgres`` from ``/usr/lib/postgresql/*/bin``) in a temporary folder on a free port. PostgreSQL refuses
  to run as root, so under root the cluster belongs to, and the server runs as, the unprivileged ``nobody``.
- :func:`s3_server`: moto's standalone server (``python -m moto.server``, its own process): an HTTP server
  that emulates the Amazon S3 REST API in memory. It is not AWS; it speaks the same protocol, so boto3 and our
  S3 artifact store talk to it exactly as to any S3-compatible service.

Both are context managers yielding a URL and stop the server on exit, also when the test failed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import _in_ci


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path:
    """Folder with ``initdb`` and ``postgres``; skips the test (fails under CI=true) when not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    message = "PostgreSQL server not installed (apt-get install -y postgresql; scripts/bootstrap.sh does it)"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _run_as() -> tuple[str | None, int | None]:
    """(user, uid) to run PostgreSQL as: ``nobody`` under root, else the current user (None)."""
    if os.geteuid() != 0:
        return None, None
    entry = pwd.getpwnam("nobody")
    return entry.pw_name, entry.pw_uid


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    tail = log.read_text()[-2000:]
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s} s: {tail}")


class PostgresServer:
    """A fresh PostgreSQL cluster in a temporary folder (trust authentication, 127.0.0.1 only, a free port
    kept across :meth:`stop` / :meth:`start`); :meth:`remove` deletes it."""

    def __init__(self) -> None:
        self.bindir = postgres_bin()
        self.user, uid = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="synchuman-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        if uid is not None:
            os.chown(self.root, uid, -1)
        subprocess.run(
            [self.bindir / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            user=self.user,
            cwd=self.root,
            timeout=120,
        )

    def url(self, database: str) -> str:
        """The ``postgresql://`` URL of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                [
                    self.bindir / "postgres", "-D", self.data, "-p", str(self.port), "-h", "127.0.0.1",
                    "-k", self.root, "-c", "fsync=off", "-c", "full_page_writes=off",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                user=self.user,
                cwd=self.root,
            )
        _wait_for_port(self.port, self.process, 60, "postgres", self.log)
        _wait_for_database(self.url("postgres"))

    def stop(self) -> None:
        """Stop the server (SIGINT: PostgreSQL's fast shutdown, which disconnects every client)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def remove(self) -> None:
        """Stop the server and delete the cluster."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server(database: str = "synchuman") -> Iterator[str]:
    """A started :class:`PostgresServer` with database ``database``; yields its URL. Removed afterwards."""
    server = PostgresServer()
    try:
        server.start()
        create_database(server.url("postgres"), database)
        yield server.url(database)
    finally:
        server.remove()


def _wait_for_database(url: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(url, connect_timeout=5).close()
            return
        except psycopg.OperationalError:  # still starting up
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def create_database(admin_url: str, database: str) -> None:
    """``CREATE DATABASE database`` through ``admin_url`` (a database URL of the same server)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 emulator (``python -m moto.server``) as its own process on a free port; yields its endpoint
    URL (``http://127.0.0.1:PORT``).
    """
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="synchuman-moto-")) / "moto.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, 60, "moto server", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(log.parent, ignore_errors=True)


@contextmanager
def s3_bucket(bucket: str) -> Iterator[str]:
    """:func:`s3_server` with ``bucket`` created, reached the production way: the usual AWS variables point
    boto3 at it while the block runs (no config or credentials file of the host is read). Yields its
    endpoint URL."""
    import boto3
    import pytest

    with s3_server() as endpoint, pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }.items():
            env.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield endpoint
