"""A real stage-1 server process (``serve_forever``) around the fake backend, for signal-handling tests.

Usage: ``python tests/fake_stage_process.py ADDRESS GRACE_S STEP_S [--blob]`` (``--blob``: return an
ellipsoid of voxels that stage 2 can turn into a mesh, instead of four scattered voxels).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_doubles import FakeStage1, voxel_blob  # noqa: E402

from services.common.stage_runtime import StageLimits  # noqa: E402
from services.common.stage_server import StageSpec, serve_forever  # noqa: E402
from services.stage1.service import Stage1Servicer  # noqa: E402
from synchuman.stage_catalog import MULTIVIEW  # noqa: E402
from synchuman.v1 import stage1_pb2_grpc  # noqa: E402

if __name__ == "__main__":
    address, grace_s, step_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    spec = StageSpec(
        stage=MULTIVIEW,
        make_servicer=Stage1Servicer,
        add_servicer=stage1_pb2_grpc.add_Stage1ServiceServicer_to_server,
        load_backend=lambda: FakeStage1(step_s, voxel_blob(9.0) if "--blob" in sys.argv else None),
    )
    sys.exit(serve_forever(spec, address, StageLimits(concurrency=1, max_queue=2, grace_s=grace_s)))
