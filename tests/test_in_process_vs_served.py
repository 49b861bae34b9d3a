"""The in-process pipeline (``synchuman.SyncHumanPipeline``) and the served chain (preprocess, stage 1,
stage 2 and the gateway as separate processes over gRPC) give the same result for the same seed: the same
voxels and a mesh with the same number of vertices. CPU, tiny random checkpoints, free ports, one thread
each side (the float sums then add up in the same order).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from synchuman_client import Client

from services.common.stage_io import voxels_from_proto
from services.launcher import EmbeddedConfig, start_embedded
from synchuman.options import Stage1Options, Stage2Options
from synchuman.v1 import common_pb2, reconstruction_pb2
from synchuman_cli.gateway_client import reconstruct_photo

pytestmark = pytest.mark.slow

SEED = 7
GRID = 64
STAGE1 = Stage1Options(steps=2)
STAGE2 = Stage2Options(steps=2, texture_size=256, bake_steps=5, visibility_views=8, simplify_ratio=0.95)


def served_options() -> common_pb2.JobOptions:
    """The wire form of :data:`STAGE1` / :data:`STAGE2` with :data:`SEED` for both stages."""
    options = common_pb2.JobOptions()
    options.multiview.seed = SEED
    options.multiview.steps = STAGE1.steps
    reconstruction = options.reconstruction
    reconstruction.seed = SEED
    reconstruction.steps = STAGE2.steps
    reconstruction.texture_size = STAGE2.texture_size
    reconstruction.bake_steps = STAGE2.bake_steps
    reconstruction.visibility_views = STAGE2.visibility_views
    reconstruction.simplify_ratio = STAGE2.simplify_ratio
    return options


def sorted_rows(coords: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``[N, 3]`` in lexicographic order (the order is not part of the result)."""
    coords = np.asarray(coords, dtype=np.int64)
    return coords[np.lexsort(coords.T[::-1])]


@pytest.fixture(scope="module")
def served(tiny_ckpts: Path, small_photo: bytes, tmp_path_factory) -> tuple[np.ndarray, int]:
    """(voxels, mesh vertex count) of one job through the four services."""
    work = tmp_path_factory.mktemp("served")
    config = EmbeddedConfig.with_free_ports(
        ckpts=tiny_ckpts,
        device="cpu",
        dtype="float32",
        data_dir=work / "jobs",
        log_level="WARNING",
        env={"OMP_NUM_THREADS": "1"},
    )
    supervisor = start_embedded(config, ready_timeout_s=300)
    try:
        outcome = reconstruct_photo(
            config.address("gateway"), small_photo, served_options(), work / "person.glb", progress=False,
            timeout_s=600,
        )
        assert outcome.error == ""
        assert outcome.job.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
        with Client(config.address("gateway")) as client:
            structure = common_pb2.VoxelStructure.FromString(client.download(outcome.job.id, "voxels.bin"))
    finally:
        supervisor.stop()
    return voxels_from_proto(structure, GRID), outcome.job.output_report.vertex_count


@pytest.fixture(scope="module")
def pipeline(tiny_ckpts: Path):
    from synchuman import SyncHumanPipeline

    return SyncHumanPipeline.from_pretrained(tiny_ckpts, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_in_process_equals_served_for_the_same_seed(pipeline, small_photo, served, one_thread) -> None:
    served_voxels, served_vertices = served
    result = pipeline(
        small_photo,
        generator=torch.Generator().manual_seed(SEED),
        stage1_options=STAGE1,
        stage2_options=STAGE2,
    )
    assert len(served_voxels) > 0 and served_vertices > 0
    np.testing.assert_array_equal(sorted_rows(result.voxels), sorted_rows(served_voxels))
    assert result.stage2.report.vertex_count == served_vertices


def test_the_voxels_depend_on_the_seed(pipeline, small_photo, served, one_thread) -> None:
    """The comparison above can fail: another seed gives other voxels."""
    from synchuman.preprocess.pipeline import preprocess

    served_voxels, _ = served
    framed = preprocess(small_photo, pipeline.preprocess_options)
    options = dataclasses.replace(STAGE1, seed=SEED + 1)
    other = pipeline.stage1.run(framed.framed, framed.conditioning, options)
    assert not np.array_equal(sorted_rows(other.coords), sorted_rows(served_voxels))
