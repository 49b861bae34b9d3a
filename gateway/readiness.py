"""Whether the gateway can run jobs now: the gRPC health of the three stage services it calls.

A stage that is down, still loading, or unable to load its checkpoints (it then never turns SERVING and its
log says why) makes the gateway *not ready*: ``GET /readyz`` answers 503 naming it, and new jobs are refused
with UNAVAILABLE and a RetryInfo instead of being queued for a stage that cannot run them. Jobs already
accepted keep waiting for the stage (the job loop's retries). Health is asked at most once per ``max_age_s``
and stage, so submissions do not multiply health calls.
"""

from __future__ import annotations

import threading
import time

import grpc

from gateway.errors import JobError
from gateway.stages import StageClients
from services.common.stage_runtime import error_info, retry_info
from synchuman.v1 import common_pb2

#: Stage service name -> its ``synchuman.v1.Stage`` value, in job order.
STAGES: dict[str, int] = {
    "preprocess": common_pb2.STAGE_PREPROCESS,
    "stage1": common_pb2.STAGE_MULTIVIEW,
    "stage2": common_pb2.STAGE_RECONSTRUCTION,
}
SERVING, NOT_SERVING, UNKNOWN = "SERVING", "NOT_SERVING", "UNKNOWN"


class StageReadiness:
    """Cached health of the stage services; ``UNKNOWN`` (a stage without a health service) counts as ready."""

    def __init__(self, stages: StageClients, max_age_s: float = 2.0, timeout_s: float = 1.0) -> None:
        self._stages = stages
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._states: dict[str, str] = {}

    def states(self) -> dict[str, str]:
        """Stage name -> ``SERVING`` | ``NOT_SERVING`` | ``UNKNOWN``, at most ``max_age_s`` old."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self._max_age_s:
                self._states = {name: self._ask(stage) for name, stage in STAGES.items()}
                self._checked_at = time.monotonic()
            return dict(self._states)

    def _ask(self, stage: int) -> str:
        serving = self._stages.serving(stage, timeout_s=self._timeout_s)
        return UNKNOWN if serving is None else SERVING if serving else NOT_SERVING

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
