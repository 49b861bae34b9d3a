"""The wire form (``synchuman.v1`` messages) of the core's options, reports, progress and stage-1 output.

Each conversion exists once here; the stage services, the gateway and the clients use it.

* options: :func:`preprocess_options_from_proto`, :func:`stage1_options_from_proto` /
  :func:`stage1_options_to_proto`, :func:`stage2_options_from_proto` / :func:`stage2_options_to_proto`
  (unset fields take the core defaults; the core's ``validate()`` checks the ranges, and a bad value raises
  :class:`~services.common.stage_io.InvalidInput` naming the request field);
* reports: :func:`quality_issue_to_proto`, :func:`input_report_to_proto`, :func:`output_report_to_proto`;
* a refused photo: :func:`preprocess_error_details` (the preprocess stage and the gateway's upload check);
* progress: :func:`progress_event`;
* stage 1's output: :func:`stage1_output_to_blobs` (PNG views) and :func:`stage1_output_from_wire`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor

from services.common.rpc_status import bad_request, error_info
from services.common.stage_io import (
    InvalidInput,
    decode_images,
    encode_pngs,
    voxels_from_proto,
)
from synchuman.options import OptionError, PreprocessOptions, Stage1Options, Stage2Options
from synchuman.pipelines.handoff import VIEW_FILES, VIEW_SIZE, Stage1Output
from synchuman.pipelines.stage2_types import OutputReport
from synchuman.postprocess.defaults import DEFAULT_SIMPLIFY
from synchuman.preprocess.errors import PreprocessError, QualityGateError
from synchuman.preprocess.quality import QualityReport
from synchuman.v1 import common_pb2

#: Where a stage's options sit in its request.
OPTIONS_FIELD = "start.options"

_SEVERITY = {
    "info": common_pb2.SEVERITY_INFO,
    "warning": common_pb2.SEVERITY_WARNING,
    "error": common_pb2.SEVERITY_ERROR,
}
#: Extra stage-2 output (:data:`~synchuman.options.EXTRA_OUTPUTS`) by wire format; the GLB is always made and
#: the multiview PNGs are stage-1 outputs that the caller already holds.
_EXTRA_BY_FORMAT = {
    common_pb2.OUTPUT_FORMAT_GAUSSIAN_PLY: "gaussians.ply",
    common_pb2.OUTPUT_FORMAT_OBJ: "mesh_obj.zip",
    common_pb2.OUTPUT_FORMAT_USDZ: "person.usdz",
    common_pb2.OUTPUT_FORMAT_PREVIEW: "preview.png",
    common_pb2.OUTPUT_FORMAT_RIGGED_GLB: "person_rigged.glb",
}
_FORMAT_BY_EXTRA = {name: fmt for fmt, name in _EXTRA_BY_FORMAT.items()}
_PASSIVE_FORMATS = (common_pb2.OUTPUT_FORMAT_GLB, common_pb2.OUTPUT_FORMAT_MULTIVIEW_PNG)
#: wire bake mode -> core bake mode ("" = unset: the core default)
_BAKE_MODES = {
    common_pb2.BAKE_MODE_UNSPECIFIED: "",
    common_pb2.BAKE_MODE_FAST: "fast",
    common_pb2.BAKE_MODE_OPTIMIZE: "opt",
}
_STAGE1_FIELDS = ("seed", "steps", "guidance_scale")
#: Fields of the reports that carry over unchanged (the issues are converted one by one).
_INPUT_REPORT_FIELDS = (
    "width",
    "height",
    "mask_source",
    "mask_coverage",
    "bbox_fraction",
    "touched_edges",
    "person_components",
    "mask_confidence",
)
_OUTPUT_REPORT_FIELDS = (
    "vertex_count",
    "face_count",
    "texture_coverage",
    "non_manifold_edge_fraction",
    "glb_size_bytes",
)
_STAGE2_FIELDS = (
    "seed",
    "steps",
    "guidance_scale",
    "texture_size",
    "simplify_ratio",
    "bake_steps",
    "visibility_views",
    "target_faces",
    "quad_remesh",
)


def _values(source: object, names: Iterable[str]) -> dict[str, Any]:
    """``name -> source.name`` for every name."""
    return {name: getattr(source, name) for name in names}


def _wire_value(message: Any, name: str) -> Any:
    """``message.name``; a ``float`` field as the shortest decimal of its float32 value (the number the client
    wrote, e.g. 0.99, not its float32 neighbour 0.9900000095, which a range ending at 0.99 would refuse)."""
    value = getattr(message, name)
    if message.DESCRIPTOR.fields_by_name[name].type == FieldDescriptor.TYPE_FLOAT:
        return float(str(np.float32(value)))
    return value


def _set_fields(message: Any, defaults: object, names: Iterable[str]) -> dict[str, Any]:
    """``name -> value`` of ``message``'s optional fields, the core default where a field is unset."""
    chosen = {name: message.HasField(name) for name in names}
    return {name: _wire_value(message, name) if chosen[name] else getattr(defaults, name) for name in names}


def _validated(options: Any, field: str) -> Any:
    """``options.validate()``; an :class:`OptionError` becomes :class:`InvalidInput` at ``field.<option>``."""
    try:
        return options.validate()
    except OptionError as exc:
        raise InvalidInput(f"{field}.{exc.field}", exc.message) from exc


def preprocess_options_from_proto(
    options: common_pb2.PreprocessOptions, defaults: PreprocessOptions, field: str = OPTIONS_FIELD
) -> PreprocessOptions:
    """One request's preprocess options: its choices over the server's ``defaults`` (segmenter folder and
    input limits stay the server's); :class:`InvalidInput` at ``field.<option>`` for a malformed segmenter
    name."""
    chosen = dataclasses.replace(
        defaults,
        segmenter=options.segmenter or defaults.segmenter,
        ignore_alpha=options.ignore_alpha,
        alpha_matting=options.alpha_matting,
    )
    return _validated(chosen, field)


def stage1_options_from_proto(
    options: common_pb2.MultiviewOptions, field: str = OPTIONS_FIELD
) -> Stage1Options:
    """Stage-1 options with defaults for unset fields; :class:`InvalidInput` at ``field.<option>`` when out
    of range."""
    return _validated(Stage1Options(**_set_fields(options, Stage1Options(), _STAGE1_FIELDS)), field)


def stage1_options_to_proto(options: Stage1Options) -> common_pb2.MultiviewOptions:
    """The effective stage-1 options as sent back in the result."""
    return common_pb2.MultiviewOptions(**_values(options, _STAGE1_FIELDS))


def stage2_options_from_proto(
    options: common_pb2.ReconstructionOptions,
    field: str = OPTIONS_FIELD,
    defaults: Stage2Options = Stage2Options(),
) -> Stage2Options:
    """Stage-2 options with ``defaults`` for unset fields (the pipeline's for its device; ``bake_steps``: the
    bake mode's); :class:`InvalidInput` at ``field.<option>`` for an unknown bake mode or output format or
    an out-of-range value."""
    values = _set_fields(options, defaults, _STAGE2_FIELDS)
    if options.bake_mode not in _BAKE_MODES:
        known = ", ".join(common_pb2.BakeMode.Name(mode) for mode in _BAKE_MODES if mode)
        raise InvalidInput(f"{field}.bake_mode", f"unknown bake mode {options.bake_mode}; use one of {known}")
    values["bake_mode"] = _BAKE_MODES[options.bake_mode] or defaults.bake_mode
    unknown = [f for f in options.outputs if f not in _EXTRA_BY_FORMAT and f not in _PASSIVE_FORMATS]
    if unknown:
        raise InvalidInput(f"{field}.outputs", f"unknown output formats {unknown}")
    values["outputs"] = tuple(sorted({_EXTRA_BY_FORMAT[f] for f in options.outputs if f in _EXTRA_BY_FORMAT}))
    return _validated(Stage2Options(**values), field)


def stage2_options_to_proto(options: Stage2Options) -> common_pb2.ReconstructionOptions:
    """The effective stage-2 options as sent back in the result: ``target_faces`` when the options have a
    polygon budget, else ``simplify_ratio`` (its default when unset): one face count, as a request gives
    it."""
    values = _values(options, _STAGE2_FIELDS)
    if options.target_faces is None and options.simplify_ratio is None:
        values["simplify_ratio"] = DEFAULT_SIMPLIFY
    return common_pb2.ReconstructionOptions(
        **values,
        bake_mode=next(k for k, v in _BAKE_MODES.items() if v == options.bake_mode),
        outputs=[common_pb2.OUTPUT_FORMAT_GLB] + [_FORMAT_BY_EXTRA[name] for name in options.outputs],
    )


def quality_issue_to_proto(severity: str, code: str, message: str) -> common_pb2.QualityIssue:
    """One finding of a quality report; ``severity`` is ``"info"``, ``"warning"`` or ``"error"``."""
    return common_pb2.QualityIssue(severity=_SEVERITY[severity], code=code, message=message)


def input_report_to_proto(report: QualityReport) -> common_pb2.InputQualityReport:
    """The wire form of preprocess's :class:`QualityReport`."""
    issues = [quality_issue_to_proto(i.severity, i.code, i.message) for i in report.issues]
    return common_pb2.InputQualityReport(**_values(report, _INPUT_REPORT_FIELDS), issues=issues)


def preprocess_error_details(error: PreprocessError) -> list[Any]:
    """The ``google.rpc`` details of a refused photo: BadRequest on ``error.field``, ErrorInfo with the stable
    ``error.code`` (e.g. TRUNCATED_IMAGE) and, for the quality gate, the InputQualityReport."""
    details: list[Any] = [bad_request(error.field, str(error)), error_info(error.code)]
    if isinstance(error, QualityGateError):
        details.append(input_report_to_proto(error.report))
    return details


def output_report_to_proto(report: OutputReport) -> common_pb2.OutputQualityReport:
    """The wire form of stage 2's :class:`OutputReport`."""
    issues = [quality_issue_to_proto(f.severity.value, f.code, f.message) for f in report.findings]
    return common_pb2.OutputQualityReport(**_values(report, _OUTPUT_REPORT_FIELDS), issues=issues)


def progress_event(
    stage: int, phase: str, step: int = 0, total: int = 0, elapsed_s: float = 0.0, message: str = ""
) -> common_pb2.ProgressEvent:
    """A progress event: ``step`` of ``total`` (0, 0: a phase without steps) of ``phase`` in ``stage`` (a
    ``synchuman.v1.Stage``), ``elapsed_s`` seconds since the stage's work began."""
    return common_pb2.ProgressEvent(
        stage=stage, phase=phase, step=step, total_steps=total, elapsed_seconds=elapsed_s, message=message
    )


def stage1_output_to_blobs(output: Stage1Output) -> dict[str, bytes]:
    """Stage 1's views as PNG blobs under their :data:`~synchuman.pipelines.handoff.VIEW_FILES` names."""
    views = output.view_files()
    return dict(zip(views, encode_pngs(list(views.values())), strict=True))


def stage1_output_from_wire(
    blobs: dict[str, bytes], structure: common_pb2.VoxelStructure, resolution: int
) -> Stage1Output:
    """Stage 1's output from its PNG views (every ``VIEW_FILES`` name, RGB 768^2) and voxel structure
    (checked against the ``resolution``^3 grid); :class:`InvalidInput` naming what is wrong."""
    coords = voxels_from_proto(structure, resolution)
    views = decode_images({name: blobs[name] for name in VIEW_FILES}, (VIEW_SIZE, VIEW_SIZE), 3)
    return Stage1Output.from_view_files(views, coords)
