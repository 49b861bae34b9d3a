"""Stage1Service: multiview diffusion behind the synchuman.v1 protocol.

The servicer only speaks the wire format; the work is done by a :class:`Stage1Backend` (the real one wraps
:mod:`synchuman.pipelines.stage1`, see :mod:`services.stage1.backend`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from services.common.stage_io import (
    InvalidInput,
    blob_chunks,
    blob_header,
    decode_image,
    encode_pngs,
    receive_blobs,
    upload_chunks,
    voxels_to_proto,
)
from services.common.stage_runtime import BackendInfo, StageRuntime, guard
from synchuman.v1 import common_pb2, stage1_pb2, stage1_pb2_grpc

FRAMED = "framed.png"
CONDITIONING = "conditioning.png"
MAX_INPUT_BYTES = 16 << 20


@dataclass(frozen=True)
class MultiviewSettings:
    """Resolved multiview options (defaults filled in, ranges checked)."""

    seed: int = 43
    steps: int = 50
    guidance_scale: float = 3.0

    @classmethod
    def from_proto(cls, options: common_pb2.MultiviewOptions) -> MultiviewSettings:
        """Fill defaults for unset fields; raise :class:`InvalidInput` for out-of-range values."""
        settings = cls(
            seed=options.seed if options.HasField("seed") else cls.seed,
            steps=options.steps if options.HasField("steps") else cls.steps,
            guidance_scale=options.guidance_scale
            if options.HasField("guidance_scale")
            else cls.guidance_scale,
        )
        if not 1 <= settings.steps <= 200:
            raise InvalidInput("start.options.steps", f"steps={settings.steps} is out of range (1 to 200)")
        if not 1.0 <= settings.guidance_scale <= 20.0:
            raise InvalidInput(
                "start.options.guidance_scale",
                f"guidance_scale={settings.guidance_scale} is out of range (1 to 20)",
            )
        if settings.seed >= 2**63:
            raise InvalidInput("start.options.seed", "seed must be below 2^63")
        return settings

    def to_proto(self) -> common_pb2.MultiviewOptions:
        """The effective options as sent back in the result."""
        return common_pb2.MultiviewOptions(
            seed=self.seed, steps=self.steps, guidance_scale=self.guidance_scale
        )


@dataclass(frozen=True)
class GeneratedViews:
    """Stage-1 output: 5 colour and 5 normal views uint8 ``[768, 768, 3]``, voxel coords ``[N, 3]`` (x, y,
    z).
    """

    colors: tuple[np.ndarray, ...]
    normals: tuple[np.ndarray, ...]
    coords: np.ndarray


class Stage1Backend(Protocol):
    """The loaded stage-1 pipeline as the service uses it."""

    info: BackendInfo
    voxel_resolution: int

    def generate(
        self,
        framed: np.ndarray,
        conditioning: np.ndarray,
        settings: MultiviewSettings,
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedViews:
        """Run stage 1 on framed RGBA uint8 ``[768, 768, 4]`` and the conditioning crop ``[518, 518, 3]``.

        Calls ``progress(step, total)`` after every sampler step; stops (raising) when ``should_stop()``.
        """
        ...


class Stage1Servicer(stage1_pb2_grpc.Stage1ServiceServicer):
    """Receives the framed photo and conditioning crop, streams progress, the 10 views and the voxels."""

    def __init__(self, runtime: StageRuntime) -> None:
        self._runtime = runtime

    def GetInfo(
        self, request: stage1_pb2.Stage1ServiceGetInfoRequest, context: grpc.ServicerContext
    ) -> stage1_pb2.Stage1ServiceGetInfoResponse:
        return stage1_pb2.Stage1ServiceGetInfoResponse(
            info=self._runtime.model_info(self._runtime.backend(context).info)
        )

    def GenerateViews(
        self, request_iterator: Iterator[stage1_pb2.GenerateViewsRequest], context: grpc.ServicerContext
    ) -> Iterator[stage1_pb2.GenerateViewsResponse]:
        return guard("stage1", context, self._generate(request_iterator, context))

    def _generate(
        self, requests: Iterator[stage1_pb2.GenerateViewsRequest], context: grpc.ServicerContext
    ) -> Iterator[stage1_pb2.GenerateViewsResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "start":
            raise InvalidInput("start", "the first message must be `start` (job id, options, input headers)")
        start = first.start
        backend: Stage1Backend = self._runtime.backend(context)
        settings = MultiviewSettings.from_proto(start.options)
        blobs = receive_blobs(start.inputs, upload_chunks(requests), (FRAMED, CONDITIONING), MAX_INPUT_BYTES)
        framed = decode_image(FRAMED, blobs[FRAMED], (768, 768), 4)
        conditioning = decode_image(CONDITIONING, blobs[CONDITIONING], (518, 518), 3)
        started = time.monotonic()  # the request's server-side wall time (queue included)

        def work(report: Callable[[Any], None], should_stop: Callable[[], bool]) -> GeneratedViews:
            return backend.generate(
                framed, conditioning, settings, lambda step, total: report((step, total)), should_stop
            )

        def progress(item: tuple[int, int], elapsed_s: float) -> stage1_pb2.GenerateViewsResponse:
            step, total = item
            return stage1_pb2.GenerateViewsResponse(
                progress=common_pb2.ProgressEvent(
                    stage=common_pb2.STAGE_MULTIVIEW,
                    phase="sampling",
                    step=step,
                    total_steps=total,
                    elapsed_seconds=elapsed_s,
                )
            )

        views = yield from self._runtime.run_job(context, start.job_id, work, progress)
        names = [f"{kind}_{i}.png" for kind in ("color", "normal") for i in range(len(views.colors))]
        headers = []
        for name, data in zip(names, encode_pngs([*views.colors, *views.normals]), strict=True):
            header = blob_header(name, "image/png", data)
            headers.append(header)
            yield stage1_pb2.GenerateViewsResponse(blob=header)
            for chunk in blob_chunks(name, data):
                yield stage1_pb2.GenerateViewsResponse(chunk=chunk)
        yield stage1_pb2.GenerateViewsResponse(
            result=stage1_pb2.GenerateViewsResult(
                structure=voxels_to_proto(views.coords, backend.voxel_resolution),
                views=headers,
                effective_options=settings.to_proto(),
                seconds=time.monotonic() - started,
            )
        )
