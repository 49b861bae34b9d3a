"""Stage deadlines from the options and the stage's device, and jobs refused up front when they cannot finish
(issue 17, finding 4): the gateway no longer gives every call one fixed 30 minutes."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from gateway.errors import JobError
from gateway.stage_deadlines import StageDeadlines, estimate_s
from gateway.stages import StageClients, StageTargets
from services.launcher import free_port
from synchuman.v1 import common_pb2, stage2_pb2, stage2_pb2_grpc

CEILING_S = 1800.0
RECON = common_pb2.STAGE_RECONSTRUCTION


def deadlines(device: str | None) -> StageDeadlines:
    return StageDeadlines(lambda stage: device if stage != common_pb2.STAGE_PREPROCESS else "cpu", CEILING_S)


def recon(**options) -> common_pb2.JobOptions:
    return common_pb2.JobOptions(reconstruction=common_pb2.ReconstructionOptions(**options))


def test_defaults_fit_on_a_cpu_and_get_a_deadline_from_their_cost():
    cpu = deadlines("cpu")
    cpu.check_fits(common_pb2.JobOptions())
    estimate, _ = estimate_s(RECON, common_pb2.JobOptions(), "cpu")
    assert estimate < cpu.deadline_s(RECON, common_pb2.JobOptions()) < CEILING_S


def test_a_gpu_gets_a_much_shorter_deadline_than_the_fixed_30_minutes():
    gpu = deadlines("cuda:0")
    assert gpu.deadline_s(RECON, common_pb2.JobOptions()) < 600
    assert gpu.deadline_s(common_pb2.STAGE_MULTIVIEW, common_pb2.JobOptions()) < 600
    many, few = recon(visibility_views=4000), recon(visibility_views=8)
    assert gpu.deadline_s(RECON, many) > gpu.deadline_s(RECON, few)


def test_options_that_cannot_finish_on_a_cpu_are_refused_naming_the_option():
    with pytest.raises(JobError) as refused:
        deadlines("cpu").check_fits(recon(visibility_views=4000))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "options.reconstruction.visibility_views" in refused.value.message
    assert "cpu" in refused.value.message and "30 min" in refused.value.message
    deadlines("cuda:0").check_fits(recon(visibility_views=4000))  # the same job fits on a GPU
    with pytest.raises(JobError, match="options.multiview.steps"):
        deadlines("cpu").check_fits(common_pb2.JobOptions(multiview=common_pb2.MultiviewOptions(steps=200)))


def test_an_unknown_device_gets_the_ceiling_and_nothing_is_refused():
    unknown = deadlines(None)
    unknown.check_fits(recon(visibility_views=4000))
    assert unknown.deadline_s(RECON, common_pb2.JobOptions()) == CEILING_S


class _Info(stage2_pb2_grpc.Stage2ServiceServicer):
    def GetInfo(self, request, context):
        return stage2_pb2.Stage2ServiceGetInfoResponse(info=common_pb2.ModelInfo(device="cpu"))


def test_stage_clients_ask_the_stage_for_its_device():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    stage2_pb2_grpc.add_Stage2ServiceServicer_to_server(_Info(), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    dead = f"127.0.0.1:{free_port()}"
    clients = StageClients(StageTargets(dead, dead, f"127.0.0.1:{port}"))
    try:
        assert clients.device(RECON) == "cpu"
        assert clients.device(common_pb2.STAGE_MULTIVIEW, timeout_s=0.5) is None  # nobody listens there
        assert clients.device(common_pb2.STAGE_PREPROCESS) == "cpu"
    finally:
        clients.close()
        server.stop(0)


def test_a_cpu_stage_fills_unset_options_with_defaults_that_finish_there():
    from services.common.conversions import stage2_options_from_proto
    from synchuman.options import Stage2Options
    from synchuman.pipelines.stage2_types import device_defaults

    cpu = stage2_options_from_proto(common_pb2.ReconstructionOptions(), defaults=device_defaults("cpu"))
    assert (cpu.visibility_views, cpu.texture_size, cpu.bake_steps) == (64, 512, 100)
    chosen = common_pb2.ReconstructionOptions(visibility_views=1000)  # a request's own value still applies
    assert stage2_options_from_proto(chosen, defaults=device_defaults("cpu")).visibility_views == 1000
    assert device_defaults("cuda") == Stage2Options()  # upstream's on a GPU
