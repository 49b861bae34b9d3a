from synchuman.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateViewsRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: GenerateViewsStart
    chunk: _common_pb2.BlobChunk
    def __init__(self, start: _Optional[_Union[GenerateViewsStart, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.BlobChunk, _Mapping]] = ...) -> None: ...

class GenerateViewsStart(_message.Message):
    __slots__ = ("job_id", "options", "inputs")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    options: _common_pb2.MultiviewOptions
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobHeader]
    def __init__(self, job_id: _Optional[str] = ..., options: _Optional[_Union[_common_pb2.MultiviewOptions, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.BlobHeader, _Mapping]]] = ...) -> None: ...

class GenerateViewsResponse(_message.Message):
    __slots__ = ("progress", "blob", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    blob: _common_pb2.BlobHeader
    chunk: _common_pb2.BlobChunk
    result: GenerateViewsResult
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., blob: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.BlobChunk, _Mapping]] = ..., result: _Optional[_Union[GenerateViewsResult, _Mapping]] = ...) -> None: ...

class GenerateViewsResult(_message.Message):
    __slots__ = ("structure", "views", "effective_options", "seconds")
    STRUCTURE_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    structure: _common_pb2.VoxelStructure
    views: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobHeader]
    effective_options: _common_pb2.MultiviewOptions
    seconds: float
    def __init__(self, structure: _Optional[_Union[_common_pb2.VoxelStructure, _Mapping]] = ..., views: _Optional[_Iterable[_Union[_common_pb2.BlobHeader, _Mapping]]] = ..., effective_options: _Optional[_Union[_common_pb2.MultiviewOptions, _Mapping]] = ..., seconds: _Optional[float] = ...) -> None: ...

class Stage1ServiceGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stage1ServiceGetInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.ModelInfo
    def __init__(self, info: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
