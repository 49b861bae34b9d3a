"""Checks of a job's options before it is accepted, so a bad option fails the submission, not a stage."""

from __future__ import annotations

import grpc

from gateway.errors import JobError
from services.common.stage_runtime import bad_request
from synchuman.v1 import common_pb2


def _check_range(field_name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field_name} is {value:g}; use a value from {low:g} to {high:g}",
            bad_request(field_name, f"must be in [{low:g}, {high:g}]"),
        )


def validate_options(options: common_pb2.JobOptions) -> None:
    """INVALID_ARGUMENT (naming the field and the allowed range) for an out-of-range option."""
    mv, rc = options.multiview, options.reconstruction
    checks = [
        (mv, "multiview", "steps", 1, 200),
        (mv, "multiview", "guidance_scale", 1, 20),
        (rc, "reconstruction", "steps", 1, 200),
        (rc, "reconstruction", "guidance_scale", 1, 20),
        (rc, "reconstruction", "texture_size", 256, 4096),
        (rc, "reconstruction", "simplify_ratio", 0, 0.99),
        (rc, "reconstruction", "bake_steps", 0, 5000),
        (rc, "reconstruction", "visibility_views", 8, 4000),
    ]
    for message, group, name, low, high in checks:
        if message.HasField(name):
            _check_range(f"options.{group}.{name}", getattr(message, name), low, high)
    if rc.bake_mode not in common_pb2.BakeMode.values():
        known = ", ".join(common_pb2.BakeMode.keys()[1:])
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"options.reconstruction.bake_mode {rc.bake_mode} is unknown; use one of {known}",
            bad_request("options.reconstruction.bake_mode", f"must be one of {known}"),
        )
