"""Flat memory per request: nothing a request computed may outlive it through a reference cycle.

Objects in a reference cycle are freed only by the cyclic garbage collector, which CPython runs rarely on a
long-lived service; GPU tensors held that way made stage 2's allocated memory grow by ~0.36 GiB per request
until a full collection happened (issue 16). These tests run with the collector saving what it finds
(``gc.DEBUG_SAVEALL``) and fail when a request's tensors are only reachable from cycles.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
import torch
from stage_doubles import FakeStage2, channel, stage2_requests, start_server
from test_stage2_pipeline import SMALL, WIDTH, FakeDinoV2, person_inputs
from test_stage_services import STRUCTURE, stage2_inputs

from services.common.stage_runtime import StageLimits
from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
from synchuman.pipelines.handoff import Stage2InputError
from synchuman.pipelines.stage2 import PipelineInfo, Stage2Pipeline
from synchuman.pipelines.stage2_models import load_stage2_models
from synchuman.pipelines.stage2_types import Stage2Cancelled
from synchuman.sparse import SparseTensor
from synchuman.sparse.spatial import downsample, subdivide, upsample
from synchuman.v1 import common_pb2, stage2_pb2_grpc


@contextmanager
def cyclic_garbage() -> Iterator[list]:
    """Collect first, then yield the list that receives every object found only in reference cycles after
    the block (the collector saves instead of freeing them); restore the collector afterwards."""
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


def tensors_in(objects: list) -> list[torch.Tensor]:
    return [o for o in objects if isinstance(o, torch.Tensor)]


def test_pooled_and_subdivided_levels_are_freed_without_the_garbage_collector() -> None:
    coords = torch.tensor(
        [[0, x, y, z] for x in range(4) for y in range(4) for z in range(2)], dtype=torch.int32
    )
    with cyclic_garbage() as garbage:
        fine = SparseTensor(torch.randn(len(coords), 3), coords)
        coarse = downsample(fine, 2)
        back = upsample(coarse, 2)
        finer = subdivide(back)
        assert back.cache is fine.cache  # the round trip lands on the fine level's cache
        caches = [weakref.ref(t.cache) for t in (fine, coarse, finer)]
        del fine, coarse, back, finer
        assert [c() for c in caches] == [None, None, None]  # freed by reference counting alone
    assert tensors_in(garbage) == []


def test_upsample_still_works_when_the_fine_tensor_is_gone() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 2, 2]], dtype=torch.int32)
    coarse = downsample(SparseTensor(torch.ones(3, 2), coords), 2)
    fine = upsample(coarse, 2)
    assert torch.equal(fine.coords, coords) and fine.feats.shape == (3, 2)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Stage2Pipeline:
    root = tmp_path_factory.mktemp("ckpts")
    write_tiny_stage2(root, seed=0, dinov2_dim=WIDTH)
    models = load_stage2_models(CheckpointLayout(root))
    return Stage2Pipeline(
        models, FakeDinoV2(), PipelineInfo(str(root), "tiny", "cpu", "float32"), render_views=0
    )


def run_requests(pipeline: Stage2Pipeline, count: int, should_stop: Callable[[], bool]) -> None:
    for _ in range(count):
        try:
            pipeline.run(person_inputs(), SMALL, lambda *e: None, should_stop)
        except Stage2Cancelled:
            pass


def test_stage2_requests_leave_no_tensors_in_reference_cycles(pipeline: Stage2Pipeline) -> None:
    run_requests(pipeline, 1, lambda: False)  # first-use state (lazy tables) stays out
    with cyclic_garbage() as garbage:
        run_requests(pipeline, 1, lambda: False)
    assert tensors_in(garbage) == [], f"{len(tensors_in(garbage))} tensors only reachable from cycles"


def test_a_cancelled_stage2_request_leaves_no_tensors_in_reference_cycles(pipeline: Stage2Pipeline) -> None:
    calls = iter(range(100))
    with cyclic_garbage() as garbage:
        run_requests(pipeline, 1, lambda: next(calls) >= 2)  # stopped before the third sampler step
    assert tensors_in(garbage) == []


class TensorHoldingStage2(FakeStage2):
    """The fake stage-2 backend, holding a tensor in its frame and in its progress callback; ``fail`` makes
    the call raise an input error after the first step (INVALID_ARGUMENT; an unexpected error would do, but
    its logged traceback stays in pytest's log capture)."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[weakref.ref] = []
        self.fail = False

    def run(self, inputs, options, progress, should_stop):  # type: ignore[no-untyped-def]
        work = torch.zeros(1000)
        self.tensors.append(weakref.ref(work))

        def report(phase: str, step: int, total: int) -> None:
            work.add_(1)
            progress(phase, step, total)

        if self.fail:
            report("sampling", 1, options.steps)
            raise Stage2InputError("coords", "the test backend refuses these voxels")
        return super().run(inputs, options, report, should_stop)


def test_finished_and_failed_service_calls_leave_no_tensors_in_reference_cycles() -> None:
    backend = TensorHoldingStage2()
    server = start_server("stage2", backend, StageLimits(concurrency=1, max_queue=1, grace_s=0.5))
    stub = stage2_pb2_grpc.Stage2ServiceStub(channel(server))
    options = common_pb2.ReconstructionOptions(steps=2)
    try:
        with cyclic_garbage() as garbage:
            for fail in (False, True, False):
                backend.fail = fail
                try:
                    list(stub.Reconstruct(stage2_requests(stage2_inputs(), STRUCTURE, options), timeout=30))
                except grpc.RpcError as error:
                    assert fail and error.code() == grpc.StatusCode.INVALID_ARGUMENT
            deadline = time.monotonic() + 5.0  # the server's handler ends just after the client's call
            while any(ref() is not None for ref in backend.tensors) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert [ref() for ref in backend.tensors] == [None, None, None]
    finally:
        server.stop()
    assert tensors_in(garbage) == []
