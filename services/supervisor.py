"""Run several services as child processes: start them, report when they are ready, restart crashed ones,
forward SIGINT/SIGTERM and stop them all cleanly.

Used by ``synchuman serve`` (the embedded all-in-one default), ``synchuman reconstruct --start-servers`` and
``synchuman selftest``. A child is "ready" when its gRPC health check answers SERVING. A child that exits on
its own is restarted with exponential back-off (1 s, 2 s, ... up to 30 s); one that fails ``max_restarts``
times within ``restart_window_s`` is given up on and the whole group stops with a non-zero status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import ClientTls, open_channel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildSpec:
    """One service process: ``argv`` to run, the gRPC ``address`` it listens on, the health service name;
    ``tls``: how its health check connects when it serves TLS (None: plaintext)."""

    name: str
    argv: tuple[str, ...]
    address: str
    health_service: str = ""
    env: dict[str, str] = field(default_factory=dict)
    tls: ClientTls | None = None


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float = 0.0
    ready: bool = False


def health_status(
    address: str, service: str = "", timeout_s: float = 1.0, tls: ClientTls | None = None
) -> int | None:
    """The health status of ``service`` at ``address`` (``HealthCheckResponse`` enum), None when
    unreachable (or the TLS handshake fails). ``tls``: connect with TLS (None: plaintext).
    """
    with open_channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
    return reply.status


class Supervisor:
    """Starts, watches and stops a group of :class:`ChildSpec` processes."""

    def __init__(
        self,
        specs: list[ChildSpec],
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        max_restarts: int = 5,
        restart_window_s: float = 120.0,
        stop_grace_s: float = 60.0,
    ) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._say = say
        self._max_restarts = max_restarts
        self._window_s = restart_window_s
        self._stop_grace_s = stop_grace_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.failed: str | None = None

    def start(self) -> None:
        """Start every child (non-blocking)."""
        for child in self._children:
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, **child.spec.env}
        child.process = subprocess.Popen(child.spec.argv, env=env, start_new_session=True)
        child.ready = False
        self._say(
            f"{child.spec.name}: started (pid {child.process.pid}), will listen on {child.spec.address}"
        )

    def wait_ready(self, timeout_s: float, names: list[str] | None = None) -> bool:
        """Wait until every child (or those in ``names``) is SERVING; False on timeout, stop or give-up."""
        deadline = time.monotonic() + timeout_s
        wanted = [c for c in self._children if names is None or c.spec.name in names]
        while time.monotonic() < deadline and not self._stop.is_set():
            self.poll()
            if self.failed:
                return False
            if all(c.ready for c in wanted):
                return True
            time.sleep(0.25)
        return all(c.ready for c in wanted)

    def poll(self) -> None:
        """Check each child once: readiness, unexpected exit (schedule a restart), due restarts."""
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        now = time.monotonic()
        for child in self._children:
            process = child.process
            if process is None:
                if now >= child.restart_at and not self._stop.is_set():
                    self._spawn(child)
                continue
            code = process.poll()
            if code is None:
                spec = child.spec
                if not child.ready and health_status(spec.address, spec.health_service, tls=spec.tls) == 1:
                    child.ready = True
                    self._say(f"{child.spec.name}: ready on {child.spec.address}")
                continue
            if self._stop.is_set():
                continue
            child.process = None
            child.ready = False
            child.crashes = [t for t in child.crashes if now - t < self._window_s] + [now]
            if len(child.crashes) > self._max_restarts:
                self.failed = (
                    f"{child.spec.name} exited {len(child.crashes)} times within {self._window_s:.0f} s "
                    f"(last exit status {code}); giving up - see its log above"
                )
                self._say(self.failed)
                self._stop.set()
                return
            delay = min(30.0, 2.0 ** (len(child.crashes) - 1))
            child.restart_at = now + delay
            self._say(f"{child.spec.name}: exited with status {code}; restarting in {delay:.0f} s")

    def run_until_stopped(self, on_ready: Callable[[], None] | None = None) -> int:
        """Supervise until SIGINT/SIGTERM (forwarded to the children) or a give-up; return the exit status."""
        previous = {s: signal.signal(s, lambda *_: self._stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            announced = False
            while not self._stop.is_set():
                self.poll()
                if not announced and all(c.ready for c in self._children):
                    announced = True
                    if on_ready is not None:
                        on_ready()
                self._stop.wait(0.5)
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 1 if self.failed else 0

    def run_in_background(self) -> threading.Thread:
        """Supervise from a daemon thread (no signal handling) until :meth:`stop`; returns the thread."""

        def loop() -> None:
            while not self._stop.is_set():
                self.poll()
                self._stop.wait(0.25)

        self._thread = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._thread.start()
        return self._thread

    def request_stop(self) -> None:
        """Ask :meth:`run_until_stopped` to return (thread-safe)."""
        self._stop.set()

    def stop(self) -> None:
        """SIGTERM every child, wait up to ``stop_grace_s`` for them to drain, then SIGKILL what is left."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        running = [c for c in self._children if c.process is not None and c.process.poll() is None]
        for child in reversed(running):  # the gateway (listed last) first, so it stops sending new work
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self._stop_grace_s
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"{child.spec.name}: did not stop within {self._stop_grace_s:.0f} s; killing it")
                child.process.kill()
                child.process.wait()
        for child in running:
            self._say(f"{child.spec.name}: stopped (status {child.process.returncode})")  # type: ignore[union-attr]

    def pid(self, name: str) -> int | None:
        """The process id of child ``name`` now (None while it is not running, e.g. between restarts)."""
        child = next(c for c in self._children if c.spec.name == name)
        process = child.process
        return process.pid if process is not None and process.poll() is None else None

    def kill_child(self, name: str) -> int:
        """SIGKILL one child (a crash, for tests); it is restarted by :meth:`poll`. Returns the killed pid."""
        child = next(c for c in self._children if c.spec.name == name)
        assert child.process is not None, f"{name} is not running"
        pid = child.process.pid
        child.process.kill()
        child.process.wait()
        return pid
