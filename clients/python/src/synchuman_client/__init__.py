"""Python client of SyncHuman Serve: one photo of a person in, a textured 3D human (GLB) out.

:class:`Client` (blocking) and :class:`AsyncClient` (asyncio) speak gRPC to the gateway's
``synchuman.v1.ReconstructionService``; every failure is a :class:`SyncHumanError` with the gRPC code and the
decoded ``google.rpc`` details. The wire messages are the generated ``common_pb2`` / ``reconstruction_pb2``
(re-exported here). See README.md.
"""

from synchuman_client._proto import common_pb2, reconstruction_pb2
from synchuman_client._proto.common_pb2 import (
    BakeMode,
    BlobHeader,
    InputQualityReport,
    JobOptions,
    MultiviewOptions,
    OutputFormat,
    OutputQualityReport,
    PreprocessOptions,
    ReconstructionOptions,
    Stage,
)
from synchuman_client._proto.reconstruction_pb2 import Job, JobState, Profile, WatchJobResponse
from synchuman_client.aio import AsyncClient
from synchuman_client.client import Client
from synchuman_client.errors import ErrorDetails, SyncHumanError
from synchuman_client.jobs import TERMINAL_STATES, JobPage, job_error
from synchuman_client.transfer import CHUNK_BYTES

__all__ = [
    "CHUNK_BYTES",
    "TERMINAL_STATES",
    "AsyncClient",
    "BakeMode",
    "BlobHeader",
    "Client",
    "ErrorDetails",
    "InputQualityReport",
    "Job",
    "JobOptions",
    "JobPage",
    "JobState",
    "MultiviewOptions",
    "OutputFormat",
    "OutputQualityReport",
    "PreprocessOptions",
    "Profile",
    "ReconstructionOptions",
    "Stage",
    "SyncHumanError",
    "WatchJobResponse",
    "common_pb2",
    "job_error",
    "reconstruction_pb2",
]
