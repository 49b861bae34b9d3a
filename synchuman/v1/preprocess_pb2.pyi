from synchuman.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreprocessRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: PreprocessStart
    chunk: _common_pb2.BlobChunk
    def __init__(self, start: _Optional[_Union[PreprocessStart, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.BlobChunk, _Mapping]] = ...) -> None: ...

class PreprocessStart(_message.Message):
    __slots__ = ("request_id", "options", "image")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    options: _common_pb2.PreprocessOptions
    image: _common_pb2.BlobHeader
    def __init__(self, request_id: _Optional[str] = ..., options: _Optional[_Union[_common_pb2.PreprocessOptions, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ...) -> None: ...

class PreprocessResponse(_message.Message):
    __slots__ = ("progress", "report", "blob", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    report: _common_pb2.InputQualityReport
    blob: _common_pb2.BlobHeader
    chunk: _common_pb2.BlobChunk
    result: PreprocessResult
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., report: _Optional[_Union[_common_pb2.InputQualityReport, _Mapping]] = ..., blob: _Optional[_Union[_common_pb2.BlobHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.BlobChunk, _Mapping]] = ..., result: _Optional[_Union[PreprocessResult, _Mapping]] = ...) -> None: ...

class PreprocessResult(_message.Message):
    __slots__ = ("report", "blobs", "seconds")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    report: _common_pb2.InputQualityReport
    blobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobHeader]
    seconds: float
    def __init__(self, report: _Optional[_Union[_common_pb2.InputQualityReport, _Mapping]] = ..., blobs: _Optional[_Iterable[_Union[_common_pb2.BlobHeader, _Mapping]]] = ..., seconds: _Optional[float] = ...) -> None: ...
