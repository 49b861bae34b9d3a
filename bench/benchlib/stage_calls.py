"""One request sent straight to a stage service (no gateway): the upload streams and a timed call."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from services.common.stage_io import blob_header, upload_messages
from synchuman.v1 import common_pb2, stage1_pb2, stage1_pb2_grpc, stage2_pb2, stage2_pb2_grpc

#: gRPC call metadata, e.g. ``[("authorization", "Bearer TOKEN")]``.
Metadata = Sequence[tuple[str, str]]


def _headers(blobs: dict[str, bytes]) -> list[common_pb2.BlobHeader]:
    return [blob_header(name, "image/png", data) for name, data in blobs.items()]


def stage1_requests(
    blobs: dict[str, bytes], options: common_pb2.MultiviewOptions | None = None, job_id: str = "job"
) -> Iterator[stage1_pb2.GenerateViewsRequest]:
    """The GenerateViews upload of the PNG ``blobs`` (``framed.png``, ``conditioning.png``)."""
    start = stage1_pb2.GenerateViewsStart(job_id=job_id, options=options, inputs=_headers(blobs))
    return upload_messages(stage1_pb2.GenerateViewsRequest, start, blobs)


def stage2_requests(
    blobs: dict[str, bytes],
    structure: common_pb2.VoxelStructure,
    options: common_pb2.ReconstructionOptions | None = None,
    job_id: str = "job",
) -> Iterator[stage2_pb2.ReconstructRequest]:
    """The Reconstruct upload of the PNG ``blobs`` (crop and views) and the voxel ``structure``."""
    start = stage2_pb2.ReconstructStart(
        job_id=job_id, options=options, structure=structure, inputs=_headers(blobs)
    )
    return upload_messages(stage2_pb2.ReconstructRequest, start, blobs)


def call_stage(
    stage: int,
    address: str,
    inputs: Any,
    steps: int,
    job_id: str,
    metadata: Metadata = (),
    timeout_s: float = 900.0,
) -> dict[str, float]:
    """One request to the stage-``stage`` service at ``address`` with ``steps`` sampler steps (0: the
    service's default). ``inputs``: :func:`~benchlib.inputs.stage1_inputs`' blobs for stage 1,
    :func:`~benchlib.inputs.stage2_inputs`' ``(blobs, structure)`` for stage 2.

    Returns ``{"wall_s": client seconds from upload to the last message, "service_s": the service's own}``;
    ``RuntimeError`` when the stream ends without a result."""
    started = time.perf_counter()
    result = None
    with grpc.insecure_channel(address) as channel:
        if stage == 1:
            options = common_pb2.MultiviewOptions(steps=steps) if steps else None
            stream = stage1_pb2_grpc.Stage1ServiceStub(channel).GenerateViews(
                stage1_requests(inputs, options, job_id), timeout=timeout_s, metadata=metadata
            )
        else:
            blobs, structure = inputs
            options2 = common_pb2.ReconstructionOptions(steps=steps) if steps else None
            stream = stage2_pb2_grpc.Stage2ServiceStub(channel).Reconstruct(
                stage2_requests(blobs, structure, options2, job_id), timeout=timeout_s, metadata=metadata
            )
        for message in stream:
            if message.WhichOneof("payload") == "result":
                result = message.result
    if result is None:
        raise RuntimeError(f"{job_id}: stage {stage} sent no result")
    return {"wall_s": time.perf_counter() - started, "service_s": float(result.seconds)}
