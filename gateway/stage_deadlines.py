"""The deadline of each stage call, from the job's options and the device the stage runs on.

A fixed deadline is either far too long on a GPU (a stalled call holds a job for 30 minutes) or too short on a
CPU, where upstream's defaults never finish. :func:`estimate_s` is a deliberately generous cost model (seconds
per sampler step, visibility view, bake step and texture area, per device type, with real weights);
:meth:`StageDeadlines.deadline_s` gives a call twice its estimate plus a minute, at most the gateway's
``--stage-timeout`` (the ceiling). A job whose estimate on the stages' devices already exceeds the ceiling is
refused at submission (:meth:`StageDeadlines.check_fits`), naming the option to lower.

The device of each stage comes from its ``GetInfo`` (``ModelInfo.device``), cached for a minute; while a
stage cannot be asked, its calls get the ceiling and nothing is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from gateway.errors import JobError
from services.common.conversions import stage1_options_from_proto, stage2_options_from_proto
from services.common.rpc_status import bad_request
from synchuman.options import Stage1Options, Stage2Options
from synchuman.pipelines.stage2_types import VISIBILITY_RESOLUTION, device_defaults
from synchuman.stage_catalog import MULTIVIEW, PREPROCESS, RECONSTRUCTION, STAGES
from synchuman.v1 import common_pb2

#: How long a stage's device answer stays cached (seconds).
DEVICE_CACHE_S = 60.0


@dataclass(frozen=True)
class DeviceCosts:
    """Seconds per unit of work on one device type (generous: real weights, a busy machine).

    ``fixed_s``: per call (upload, conditioning, decoders, export); ``sampler_step_s``: one diffusion or flow
    step; ``view_s``: one visibility view at 1024^2 (scaled by the rendered area); ``bake_step_s``: one
    bake step at a 1024^2 texture (scaled by the texture area).
    """

    fixed_s: float
    sampler_step_s: float
    view_s: float = 0.0
    bake_step_s: float = 0.0


#: ``(stage, device type) -> costs``; a device type not listed is priced as "cpu".
COSTS: dict[tuple[int, str], DeviceCosts] = {
    (PREPROCESS.stage, "cpu"): DeviceCosts(fixed_s=60.0, sampler_step_s=0.0),
    (PREPROCESS.stage, "cuda"): DeviceCosts(fixed_s=60.0, sampler_step_s=0.0),
    (MULTIVIEW.stage, "cuda"): DeviceCosts(fixed_s=60.0, sampler_step_s=1.0),
    (MULTIVIEW.stage, "cpu"): DeviceCosts(fixed_s=120.0, sampler_step_s=25.0),
    (RECONSTRUCTION.stage, "cuda"): DeviceCosts(60.0, 1.0, view_s=0.05, bake_step_s=0.05),
    (RECONSTRUCTION.stage, "cpu"): DeviceCosts(300.0, 10.0, view_s=16.0, bake_step_s=4.0),
}


def device_type(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``; anything but CUDA is priced as a CPU."""
    kind = device.split(":", 1)[0]
    return "cuda" if kind == "cuda" else "cpu"


def _multiview_costs(options: common_pb2.JobOptions, kind: str, costs: DeviceCosts) -> dict[str, float]:
    stage1: Stage1Options = stage1_options_from_proto(options.multiview)
    return {"options.multiview.steps": stage1.steps * costs.sampler_step_s}


def _reconstruction_costs(options: common_pb2.JobOptions, kind: str, costs: DeviceCosts) -> dict[str, float]:
    stage2: Stage2Options = stage2_options_from_proto(options.reconstruction, defaults=device_defaults(kind))
    area = (VISIBILITY_RESOLUTION.get(kind, 1024) / 1024) ** 2
    bake_s = (stage2.bake_steps or 0) * costs.bake_step_s * (stage2.texture_size / 1024) ** 2
    return {
        "options.reconstruction.steps": stage2.steps * costs.sampler_step_s,
        "options.reconstruction.visibility_views": stage2.visibility_views * costs.view_s * area,
        "options.reconstruction.bake_steps": bake_s,
    }


#: ``(JobOptions, device type, costs) -> seconds per costly option`` (named by its field path).
OptionCosts = Callable[[common_pb2.JobOptions, str, DeviceCosts], dict[str, float]]

#: Stage -> the seconds its costly options add; a stage's fixed cost is in :data:`COSTS`.
STAGE_OPTION_COSTS: dict[int, OptionCosts] = {
    PREPROCESS.stage: lambda options, kind, costs: {},
    MULTIVIEW.stage: _multiview_costs,
    RECONSTRUCTION.stage: _reconstruction_costs,
}


def estimate_s(stage: int, options: common_pb2.JobOptions, device: str) -> tuple[float, str]:
    """Generous seconds one call of ``stage`` takes with ``options`` (unset fields: the stage's defaults on
    that device) on ``device``, and the option that costs most (``""`` when the fixed part dominates)."""
    kind = device_type(device)
    costs = COSTS[(stage, kind)]
    parts: dict[str, float] = {"": costs.fixed_s, **STAGE_OPTION_COSTS[stage](options, kind, costs)}
    return sum(parts.values()), max(parts, key=lambda name: parts[name])


class StageDeadlines:
    """Deadlines of stage calls and the up-front check of a job's options (see the module docstring).

    ``device_of(stage)``: the device string a stage reports (``GetInfo``), or None when it cannot be asked;
    ``ceiling_s``: the longest deadline (``--stage-timeout``).
    """

    def __init__(self, device_of: Callable[[int], str | None], ceiling_s: float) -> None:
        self._device_of = device_of
        self.ceiling_s = ceiling_s
        self._lock = threading.Lock()
        self._devices: dict[int, tuple[float, str | None]] = {}

    def device(self, stage: int) -> str | None:
        """The stage's device (cached for :data:`DEVICE_CACHE_S`; a failed answer is not cached)."""
        now = time.monotonic()
        with self._lock:
            cached = self._devices.get(stage)
        if cached is not None and now - cached[0] < DEVICE_CACHE_S:
            return cached[1]
        device = self._device_of(stage)
        if device is not None:
            with self._lock:
                self._devices[stage] = (now, device)
        return device

    def deadline_s(self, stage: int, options: common_pb2.JobOptions) -> float:
        """Twice the call's estimate plus a minute, at most the ceiling (the ceiling when the device is
        unknown)."""
        device = self.device(stage)
        if device is None:
            return self.ceiling_s
        estimate, _ = estimate_s(stage, options, device)
        return min(self.ceiling_s, 60.0 + 2.0 * estimate)

    def check_fits(self, options: common_pb2.JobOptions) -> None:
        """FAILED_PRECONDITION naming the costliest option when a stage's estimate exceeds the ceiling."""
        for entry in STAGES:
            device = self.device(entry.stage)
            if device is None:
                continue
            estimate, costliest = estimate_s(entry.stage, options, device)
            if estimate > self.ceiling_s:
                field = costliest or f"options.{entry.name}"
                message = (
                    f"these options need about {estimate / 60:.0f} min in the {entry.name} stage on its "
                    f"device "
                    f"({device}), longer than the stage deadline of {self.ceiling_s / 60:.0f} min; lower "
                    f"{field} (unset options use the device's defaults)"
                )
                raise JobError(grpc.StatusCode.FAILED_PRECONDITION, message, bad_request(field, message))
