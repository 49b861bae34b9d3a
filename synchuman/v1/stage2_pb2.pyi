from synchuman.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconstructRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: ReconstructStart
    chunk: _common_pb2.BlobChunk
    def __init__(self, start: _Optional[_Union[ReconstructStart, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.BlobChunk, _Mapping]] = ...) -> None: ...

class ReconstructStart(_message.Message):
    __slots__ = ("job_id", "options", "structure", "inputs")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    options: _common_pb2.ReconstructionOptions
    structure: _common_pb2.VoxelStructure
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobHeader]
    def __init__(self, job_id: _Optional[str] = ..., options: _Optional[_Union[_common_pb2.ReconstructionOptions, _Mapping]] = ..., structure: _Optional[_Union[_common_pb2.VoxelStructure, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.BlobHeader, _Mapping]]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("progress", "blob", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    blob: _common_pb2.BlobHeader
    chunk: _common_pb2.BlobChunk
    result: ReconstructResult
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., blob: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.BlobChunk, _Mapping]] = ..., result: _Optional[_Union[ReconstructResult, _Mapping]] = ...) -> None: ...

class ReconstructResult(_message.Message):
    __slots__ = ("report", "outputs", "effective_options", "seconds", "phase_seconds")
    class PhaseSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REPORT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    report: _common_pb2.OutputQualityReport
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobHeader]
    effective_options: _common_pb2.ReconstructionOptions
    seconds: float
    phase_seconds: _containers.ScalarMap[str, float]
    def __init__(self, report: _Optional[_Union[_common_pb2.OutputQualityReport, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.BlobHeader, _Mapping]]] = ..., effective_options: _Optional[_Union[_common_pb2.ReconstructionOptions, _Mapping]] = ..., seconds: _Optional[float] = ..., phase_seconds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Stage2ServiceGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stage2ServiceGetInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
