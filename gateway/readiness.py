"""Whether the gateway can run jobs now: the gRPC health of the three stage services it calls and the
reachability of its job store: one answer for ``GET /healthz``, ``GET /readyz`` and the gateway's gRPC health.

A stage that is down, still loading, or unable to load its checkpoints (it then never turns SERVING and its
log says why) makes the gateway *not ready*, and so does a job store that cannot be reached: ``/healthz`` and
``/readyz`` answer 503 naming what is missing, the gateway's grpc.health.v1 says NOT_SERVING (a load
balancer or Kubernetes sends new calls to other gateways), and new jobs are refused with UNAVAILABLE and a
RetryInfo instead of being queued for a stage that cannot run them. Jobs already accepted keep waiting for
the stage (the job loop's retries). A stage scaled to several replicas (its target resolves to several
addresses) is SERVING while at least one replica is; the others are named under ``replicas_not_serving``
(:mod:`gateway.replicas`). ``GET /livez`` only says the process answers. Health is asked at most
once per ``max_age_s`` and stage, so submissions and probes do not multiply health calls; a thread
(:meth:`ReadinessMonitor.start`) re-checks every ``interval_s`` and reports each change to the gRPC health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from gateway.errors import JobError
from gateway.stages import StageClients
from gateway.store import JobStore, StoreUnavailable
from services.common.endpoints import STAGE_SERVICES
from services.common.rpc_status import error_info, retry_info

log = logging.getLogger(__name__)

SERVING, NOT_SERVING, UNKNOWN = "SERVING", "NOT_SERVING", "UNKNOWN"
REACHABLE, UNREACHABLE = "REACHABLE", "UNREACHABLE"


class StageReadiness:
    """Cached health of the stage services; ``UNKNOWN`` (a stage without a health service) counts as ready."""

    def __init__(self, stages: StageClients, max_age_s: float = 2.0, timeout_s: float = 1.0) -> None:
        self._stages = stages
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._states: dict[str, str] = {}
        self._down_replicas: dict[str, list[str]] = {}

    def states(self) -> dict[str, str]:
        """Stage service name (``stage1``) -> ``SERVING`` | ``NOT_SERVING`` | ``UNKNOWN``, at most
        ``max_age_s`` old."""
        return self.check()[0]

    def check(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """:meth:`states`, and stage service name -> the addresses of its replicas that are down or not
        serving (only stages with such replicas), from the same look."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self._max_age_s:
                asked = {name: self._ask(stage) for name, stage in STAGE_SERVICES.items()}
                self._states = {name: state for name, (state, _) in asked.items()}
                self._down_replicas = {name: down for name, (_, down) in asked.items() if down}
                self._checked_at = time.monotonic()
            return dict(self._states), {name: list(down) for name, down in self._down_replicas.items()}

    def _ask(self, stage: int) -> tuple[str, list[str]]:
        """The stage's state (SERVING when any replica serves; UNKNOWN when none does and some replica has
        no health service) and its replicas that are down or not serving."""
        replicas = self._stages.replicas_serving(stage, timeout_s=self._timeout_s)
        down = [address for address, serving in replicas.items() if serving is False]
        if True in replicas.values():
            return SERVING, down
        return (UNKNOWN if None in replicas.values() else NOT_SERVING), down

    def not_ready(self) -> list[str]:
        """The stages that are down or not serving (empty: ready)."""
        return [name for name, state in self.states().items() if state == NOT_SERVING]

    def require_ready(self) -> None:
        """Raise UNAVAILABLE (with RetryInfo) naming the stages that cannot run a job now."""
        down = self.not_ready()
        if down:
            raise JobError(
                grpc.StatusCode.UNAVAILABLE,
                f"not accepting jobs: stage service(s) {', '.join(down)} not serving (starting, restarting, "
                "or unable to load their checkpoints: see their logs); retry later",
                retry_info(15.0),
                error_info("STAGES_NOT_READY", stages=",".join(down)),
            )


@dataclass(frozen=True)
class Readiness:
    """One look at what the gateway needs: ``stages`` (name -> SERVING | NOT_SERVING | UNKNOWN),
    ``job_store`` (REACHABLE | UNREACHABLE, with ``store_error``) and ``down_replicas`` (stage name -> the
    addresses of its replicas that are down or not serving, when it has several; a stage with one serving
    replica is still SERVING)."""

    stages: dict[str, str]
    job_store: str
    store_error: str = ""
    down_replicas: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Every stage serving (or without a health service) and the job store reachable."""
        return self.job_store == REACHABLE and NOT_SERVING not in self.stages.values()

    def as_json(self) -> dict:
        """The body of ``/healthz`` and ``/readyz``."""
        body: dict = {
            "status": "READY" if self.ready else "NOT_READY",
            "stages": self.stages,
            "job_store": self.job_store,
        }
        if self.store_error:
            body["job_store_error"] = self.store_error
        if self.down_replicas:
            body["replicas_not_serving"] = self.down_replicas
        return body


class ReadinessMonitor:
    """The gateway's readiness (stage health + job store ping), at most ``max_age_s`` old; from
    :meth:`start` to :meth:`stop` a thread re-checks every ``interval_s`` seconds and calls
    ``on_change(ready)`` at start and whenever readiness changes."""

    def __init__(
        self, stages: StageReadiness, store: JobStore, interval_s: float = 2.0, max_age_s: float = 2.0
    ) -> None:
        self.stages = stages
        self._store = store
        self._interval_s = interval_s
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._last: Readiness | None = None
        self._checked_at = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report(self) -> Readiness:
        """The current readiness (checked now when the last check is older than ``max_age_s``)."""
        with self._lock:
            if self._last is None or time.monotonic() - self._checked_at >= self._max_age_s:
                states, down_replicas = self.stages.check()
                self._last = Readiness(states, *self._ping_store(), down_replicas=down_replicas)
                self._checked_at = time.monotonic()
            return self._last

    def _ping_store(self) -> tuple[str, str]:
        try:
            self._store.ping()
        except (StoreUnavailable, OSError) as exc:
            return UNREACHABLE, str(exc)
        return REACHABLE, ""

    def start(self, on_change: Callable[[bool], None]) -> None:
        """Check now, report it with ``on_change``, then keep checking in a thread."""
        ready = self._log_change(None, self.report())
        on_change(ready)
        self._thread = threading.Thread(
            target=self._run, args=(on_change, ready), name="gateway-readiness", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop checking; no ``on_change`` call after this returns (unless a check outlives ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self, on_change: Callable[[bool], None], ready: bool) -> None:
        while not self._stop.wait(self._interval_s):
            now = self._log_change(ready, self.report())
            if now != ready and not self._stop.is_set():
                ready = now
                on_change(ready)

    @staticmethod
    def _log_change(before: bool | None, readiness: Readiness) -> bool:
        if readiness.ready != before:
            if readiness.ready:
                log.info("ready: SERVING", extra={"stages": readiness.stages})
            else:
                log.warning(
                    "not ready: NOT_SERVING",
                    extra={
                        "stages": readiness.stages,
                        "job_store": readiness.job_store,
                        "error": readiness.store_error,
                    },
                )
        return readiness.ready
