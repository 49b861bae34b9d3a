"""Named output profiles (issue 21 item 6): options a job gets by naming a profile in ``JobOptions.profile``.

A :class:`Profile` is a name, a description and the ``JobOptions`` it sets; :class:`Profiles` is the
gateway's set of them, read from one TOML file at start-up (:mod:`gateway.profile_file`). At submission
:meth:`Profiles.apply` lays the job's options over its profile's: every field the job set wins, a set
``outputs`` list replaces the profile's, and ``simplify_ratio`` and ``target_faces`` (two ways to say how
many faces) replace each other. The result, with ``profile`` filled in, is what the job stores and the
stages run. :func:`effective_options` fills in the server defaults (what ``ListProfiles`` shows).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from gateway.errors import JobError
from services.common.conversions import (
    stage1_options_from_proto,
    stage1_options_to_proto,
    stage2_options_from_proto,
    stage2_options_to_proto,
)
from services.common.rpc_status import bad_request
from synchuman.preprocess.segment import DEFAULT_SEGMENTER
from synchuman.v1 import common_pb2, reconstruction_pb2

#: The profile of a job that names none.
DEFAULT_PROFILE = "standard"
#: Where a job names its profile.
PROFILE_FIELD = "options.profile"
#: ``ReconstructionOptions`` fields that say the same thing (the face count) and so replace each other.
_FACE_COUNT_FIELDS = ("simplify_ratio", "target_faces")


@dataclass(frozen=True)
class Profile:
    """A named profile: ``options`` are the ones it sets (``profile`` unset)."""

    name: str
    description: str
    options: common_pb2.JobOptions

    def to_proto(self) -> reconstruction_pb2.Profile:
        """The wire form, with the profile's effective options."""
        return reconstruction_pb2.Profile(
            name=self.name,
            description=self.description,
            options=self.options,
            effective_options=effective_options(self.options, self.name),
        )


def effective_options(options: common_pb2.JobOptions, profile: str = "") -> common_pb2.JobOptions:
    """``options`` with every unset field given its server default (the stage services' defaults on a GPU;
    ``bake_steps``: the bake mode's); ``profile`` names the profile. Out-of-range options raise
    :class:`~services.common.stage_io.InvalidInput` (check them with
    :func:`gateway.option_validation.validate_options` first)."""
    preprocess = common_pb2.PreprocessOptions()
    preprocess.CopyFrom(options.preprocess)
    preprocess.segmenter = preprocess.segmenter or DEFAULT_SEGMENTER
    return common_pb2.JobOptions(
        preprocess=preprocess,
        multiview=stage1_options_to_proto(stage1_options_from_proto(options.multiview)),
        reconstruction=stage2_options_to_proto(stage2_options_from_proto(options.reconstruction)),
        profile=profile,
    )


def lay_over(base: common_pb2.JobOptions, job: common_pb2.JobOptions) -> common_pb2.JobOptions:
    """``job``'s options over ``base``'s: each field ``job`` set wins (a non-empty ``outputs`` replaces the
    list, either face-count field replaces both); ``profile`` is ``job``'s."""
    merged = common_pb2.JobOptions()
    merged.CopyFrom(base)
    if job.reconstruction.outputs:
        del merged.reconstruction.outputs[:]
    if any(job.reconstruction.HasField(name) for name in _FACE_COUNT_FIELDS):
        for name in _FACE_COUNT_FIELDS:
            merged.reconstruction.ClearField(name)
    merged.MergeFrom(job)
    return merged


class Profiles:
    """The gateway's profiles by name, :data:`DEFAULT_PROFILE` among them; ``source`` says where they were
    read from (for messages)."""

    def __init__(self, profiles: Iterable[Profile], source: str = "") -> None:
        self.by_name = {profile.name: profile for profile in profiles}
        self.source = source
        if DEFAULT_PROFILE not in self.by_name:
            raise ValueError(f"no {DEFAULT_PROFILE!r} profile (the profile of jobs that name none)")

    @property
    def names(self) -> tuple[str, ...]:
        """The names, :data:`DEFAULT_PROFILE` first, then in the order they were defined."""
        return (DEFAULT_PROFILE, *(name for name in self.by_name if name != DEFAULT_PROFILE))

    def get(self, name: str) -> Profile:
        """The profile ``name`` ("": :data:`DEFAULT_PROFILE`); INVALID_ARGUMENT on ``options.profile`` naming
        the known ones for a name that is none."""
        profile = self.by_name.get(name or DEFAULT_PROFILE)
        if profile is None:
            known = ", ".join(self.names)
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise JobError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{PROFILE_FIELD}: unknown profile {shown!r}; use one of {known}",
                bad_request(PROFILE_FIELD, f"unknown profile; use one of {known}"),
            )
        return profile

    def apply(self, options: common_pb2.JobOptions) -> common_pb2.JobOptions:
        """The job's options over its profile's, ``profile`` filled in (see :func:`lay_over`)."""
        profile = self.get(options.profile)
        merged = lay_over(profile.options, options)
        merged.profile = profile.name
        return merged

    def to_proto(self) -> reconstruction_pb2.ListProfilesResponse:
        """Every profile, :data:`DEFAULT_PROFILE` first, with its effective options."""
        return reconstruction_pb2.ListProfilesResponse(
            profiles=[self.by_name[name].to_proto() for name in self.names]
        )
