"""Stage 1 beside stage-2 work on one GPU: a lone stage-1 request timed alone and while realistic stage-2
requests run (what stage 2 yielding the GPU to stage 1, ``services/common/gpu_share.py``, buys)."""

from __future__ import annotations

import sys
import threading

import grpc

from benchlib.inputs import stage1_inputs, stage2_inputs
from benchlib.stage_calls import Metadata, call_stage, stage2_requests
from services.launcher import EmbeddedConfig
from synchuman.v1 import stage2_pb2_grpc


def stage_metadata(config: EmbeddedConfig) -> Metadata:
    """The bearer token the deployment's stages require of direct calls."""
    return [("authorization", f"Bearer {config.stage_token}")]


def stage1_request_s(config: EmbeddedConfig, steps: int, job_id: str) -> float:
    """One stage-1 request (:func:`~benchlib.inputs.stage1_inputs`, ``steps`` sampler steps, 0: the
    service's default) sent straight to the deployment's stage-1 service: a lone job's stage 1. Returns the
    service's own seconds for it."""
    address = config.address("stage1")
    return call_stage(1, address, stage1_inputs(), steps, job_id, stage_metadata(config), 600.0)["service_s"]


class StickFigureStage2:
    """Realistic stage-2 work on the GPU: requests on the human-shaped voxel set
    (:func:`~benchlib.inputs.human_occupancy`; a person's stage 1 gives such a compact set, random stage-1
    weights a scattered one) sent straight to the stage-2 service at ``address`` back to back, service
    defaults, until :meth:`stop` cancels the one running. ``sampling`` is set at the first sampler step."""

    def __init__(self, config: EmbeddedConfig, address: str, voxels: int = 20000) -> None:
        self.config = config
        self.address = address
        self.inputs = stage2_inputs(voxels)
        self.sampling = threading.Event()
        self._stopped = threading.Event()
        self._call: object = None
        self._thread = threading.Thread(target=self._loop, name="stick-figure-stage2", daemon=True)

    def __enter__(self) -> StickFigureStage2:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Cancel the running request and end the loop."""
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()  # type: ignore[attr-defined]
        self._thread.join(30)

    def _loop(self) -> None:
        blobs, structure = self.inputs
        with grpc.insecure_channel(self.address) as channel:
            stub = stage2_pb2_grpc.Stage2ServiceStub(channel)
            number = 0
            while not self._stopped.is_set():
                number += 1
                self._call = stub.Reconstruct(
                    stage2_requests(blobs, structure, job_id=f"stick-figure-{number}"),
                    timeout=600,
                    metadata=stage_metadata(self.config),
                )
                try:
                    for message in self._call:  # type: ignore[attr-defined]
                        kind = message.WhichOneof("payload")
                        if kind == "progress" and message.progress.phase == "sampling":
                            self.sampling.set()
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.CANCELLED:
                        print(f"stick-figure stage 2: {exc.code().name}: {exc.details()}", file=sys.stderr)
                        self.sampling.set()  # do not leave the bench waiting
                        return


def stage1_interference(config: EmbeddedConfig, stage2_address: str, steps: int) -> dict[str, float]:
    """A lone stage-1 request's seconds alone (``alone_s``), then while stick-figure stage-2 requests run on
    the same GPU (``during_stage2_s``; at ``stage2_address``; stage 1 sent once stage 2 samples)."""
    alone = stage1_request_s(config, steps, "lone-stage1-alone")
    with StickFigureStage2(config, stage2_address) as stage2:
        if not stage2.sampling.wait(120):
            raise RuntimeError("the stick-figure stage-2 request did not start sampling within 120 s")
        during = stage1_request_s(config, steps, "lone-stage1-during-stage2")
    return {"alone_s": alone, "during_stage2_s": during}
