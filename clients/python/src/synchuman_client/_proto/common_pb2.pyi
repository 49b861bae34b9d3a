from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_PREPROCESS: _ClassVar[Stage]
    STAGE_MULTIVIEW: _ClassVar[Stage]
    STAGE_RECONSTRUCTION: _ClassVar[Stage]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_ERROR: _ClassVar[Severity]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_GLB: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_GAUSSIAN_PLY: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_OBJ: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_MULTIVIEW_PNG: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_USDZ: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PREVIEW: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_RIGGED_GLB: _ClassVar[OutputFormat]

class BakeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAKE_MODE_UNSPECIFIED: _ClassVar[BakeMode]
    BAKE_MODE_FAST: _ClassVar[BakeMode]
    BAKE_MODE_OPTIMIZE: _ClassVar[BakeMode]
STAGE_UNSPECIFIED: Stage
STAGE_PREPROCESS: Stage
STAGE_MULTIVIEW: Stage
STAGE_RECONSTRUCTION: Stage
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_WARNING: Severity
SEVERITY_ERROR: Severity
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_GLB: OutputFormat
OUTPUT_FORMAT_GAUSSIAN_PLY: OutputFormat
OUTPUT_FORMAT_OBJ: OutputFormat
OUTPUT_FORMAT_MULTIVIEW_PNG: OutputFormat
OUTPUT_FORMAT_USDZ: OutputFormat
OUTPUT_FORMAT_PREVIEW: OutputFormat
OUTPUT_FORMAT_RIGGED_GLB: OutputFormat
BAKE_MODE_UNSPECIFIED: BakeMode
BAKE_MODE_FAST: BakeMode
BAKE_MODE_OPTIMIZE: BakeMode

class BlobHeader(_message.Message):
    __slots__ = ("name", "media_type", "size_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., media_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("name", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("stage", "phase", "step", "total_steps", "elapsed_seconds", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    phase: str
    step: int
    total_steps: int
    elapsed_seconds: float
    message: str
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class QualityIssue(_message.Message):
    __slots__ = ("severity", "code", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: Severity
    code: str
    message: str
    def __init__(self, severity: _Optional[_Union[Severity, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class InputQualityReport(_message.Message):
    __slots__ = ("width", "height", "mask_source", "mask_coverage", "bbox_fraction", "touched_edges", "person_components", "mask_confidence", "issues")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MASK_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_EDGES_FIELD_NUMBER: _ClassVar[int]
    PERSON_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    MASK_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    mask_source: str
    mask_coverage: float
    bbox_fraction: float
    touched_edges: _containers.RepeatedScalarFieldContainer[str]
    person_components: int
    mask_confidence: float
    issues: _containers.RepeatedCompositeFieldContainer[QualityIssue]
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., mask_source: _Optional[str] = ..., mask_coverage: _Optional[float] = ..., bbox_fraction: _Optional[float] = ..., touched_edges: _Optional[_Iterable[str]] = ..., person_components: _Optional[int] = ..., mask_confidence: _Optional[float] = ..., issues: _Optional[_Iterable[_Union[QualityIssue, _Mapping]]] = ...) -> None: ...

class OutputQualityReport(_message.Message):
    __slots__ = ("vertex_count", "face_count", "texture_coverage", "non_manifold_edge_fraction", "glb_size_bytes", "issues")
    VERTEX_COUNT_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    NON_MANIFOLD_EDGE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    GLB_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    vertex_count: int
    face_count: int
    texture_coverage: float
    non_manifold_edge_fraction: float
    glb_size_bytes: int
    issues: _containers.RepeatedCompositeFieldContainer[QualityIssue]
    def __init__(self, vertex_count: _Optional[int] = ..., face_count: _Optional[int] = ..., texture_coverage: _Optional[float] = ..., non_manifold_edge_fraction: _Optional[float] = ..., glb_size_bytes: _Optional[int] = ..., issues: _Optional[_Iterable[_Union[QualityIssue, _Mapping]]] = ...) -> None: ...

class PreprocessOptions(_message.Message):
    __slots__ = ("segmenter", "ignore_alpha", "alpha_matting")
    SEGMENTER_FIELD_NUMBER: _ClassVar[int]
    IGNORE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    ALPHA_MATTING_FIELD_NUMBER: _ClassVar[int]
    segmenter: str
    ignore_alpha: bool
    alpha_matting: bool
    def __init__(self, segmenter: _Optional[str] = ..., ignore_alpha: _Optional[bool] = ..., alpha_matting: _Optional[bool] = ...) -> None: ...

class MultiviewOptions(_message.Message):
    __slots__ = ("seed", "steps", "guidance_scale")
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    seed: int
    steps: int
    guidance_scale: float
    def __init__(self, seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ...) -> None: ...

class ReconstructionOptions(_message.Message):
    __slots__ = ("seed", "steps", "guidance_scale", "texture_size", "simplify_ratio", "bake_steps", "visibility_views", "outputs", "bake_mode", "target_faces", "quad_remesh")
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIMPLIFY_RATIO_FIELD_NUMBER: _ClassVar[int]
    BAKE_STEPS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_VIEWS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BAKE_MODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FACES_FIELD_NUMBER: _ClassVar[int]
    QUAD_REMESH_FIELD_NUMBER: _ClassVar[int]
    seed: int
    steps: int
    guidance_scale: float
    texture_size: int
    simplify_ratio: float
    bake_steps: int
    visibility_views: int
    outputs: _containers.RepeatedScalarFieldContainer[OutputFormat]
    bake_mode: BakeMode
    target_faces: int
    quad_remesh: bool
    def __init__(self, seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., texture_size: _Optional[int] = ..., simplify_ratio: _Optional[float] = ..., bake_steps: _Optional[int] = ..., visibility_views: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., bake_mode: _Optional[_Union[BakeMode, str]] = ..., target_faces: _Optional[int] = ..., quad_remesh: _Optional[bool] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("preprocess", "multiview", "reconstruction", "profile")
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    MULTIVIEW_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    preprocess: PreprocessOptions
    multiview: MultiviewOptions
    reconstruction: ReconstructionOptions
    profile: str
    def __init__(self, preprocess: _Optional[_Union[PreprocessOptions, _Mapping]] = ..., multiview: _Optional[_Union[MultiviewOptions, _Mapping]] = ..., reconstruction: _Optional[_Union[ReconstructionOptions, _Mapping]] = ..., profile: _Optional[str] = ...) -> None: ...

class VoxelStructure(_message.Message):
    __slots__ = ("resolution", "count", "coords_xyz_u16le")
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    COORDS_XYZ_U16LE_FIELD_NUMBER: _ClassVar[int]
    resolution: int
    count: int
    coords_xyz_u16le: bytes
    def __init__(self, resolution: _Optional[int] = ..., count: _Optional[int] = ..., coords_xyz_u16le: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("checkpoint_dir", "weights", "device", "dtype", "concurrency", "max_queue")
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    checkpoint_dir: str
    weights: str
    device: str
    dtype: str
    concurrency: int
    max_queue: int
    def __init__(self, checkpoint_dir: _Optional[str] = ..., weights: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., concurrency: _Optional[int] = ..., max_queue: _Optional[int] = ...) -> None: ...
