"""Flat memory per request: nothing a request computed may outlive it through a reference cycle.

Objects in a reference cycle are freed only by the cyclic garbage collector, which CPython runs rarely on a
long-lived service; GPU tensors held that way made stage 2's allocated memory grow by ~0.36 GiB per request
until a full collection happened (issue 16). These tests run with the collector saving what it finds
(``gc.DEBUG_SAVEALL``) and fail when a request's tensors are only reachable from cycles.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from test_stage2_pipeline import SMALL, WIDTH, FakeDinoV2, person_inputs

from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
from synchuman.pipelines.stage2 import PipelineInfo, Stage2Pipeline
from synchuman.pipelines.stage2_models import load_stage2_models
from synchuman.pipelines.stage2_types import Stage2Cancelled
from synchuman.sparse import SparseTensor
from synchuman.sparse.spatial import downsample, subdivide, upsample


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
            pipeline.reconstruct(person_inputs(), SMALL, lambda *e: None, should_stop)
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
