"""``synchuman reconstruct --in-process``: the photo -> GLB pipeline of the core
(:class:`synchuman.SyncHumanPipeline`) in this process, without servers.

It takes the same wire options as a served job (laid over the same named profile, from the gateway's
profiles file, and converted and range-checked by the same functions the services use), shows the same
progress bars and writes the same files: the GLB, the requested extras beside it and ``<stem>.report.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.profile_file import load_profiles
from services.common.conversions import (
    input_report_to_proto,
    output_report_to_proto,
    progress_event,
    stage1_options_from_proto,
    stage1_output_to_blobs,
    stage2_options_from_proto,
)
from services.common.stage_server import resolve_device
from synchuman.stage_catalog import STAGES
from synchuman.v1 import common_pb2
from synchuman_cli.reporting import ProgressBars, beside, extra_file_names, summary_lines, write_report

#: Catalog stage name -> its ``synchuman.v1.Stage`` value (the in-process pipeline reports by name).
STAGE_VALUES = {entry.name: entry.stage for entry in STAGES}


@dataclass
class InProcessOutcome:
    """The reports of one in-process reconstruction and the files written."""

    input_report: common_pb2.InputQualityReport
    output_report: common_pb2.OutputQualityReport
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """Human-readable summary: files, output report, warnings (as for a served job)."""
        title = f"in-process reconstruction: SUCCEEDED in {self.seconds:.1f} s"
        return summary_lines(title, self.input_report, self.output_report, self.written)


def reconstruct_in_process(
    photo: bytes,
    options: common_pb2.JobOptions,
    output: Path,
    extras: list[str] | tuple[str, ...] = (),
    ckpts: Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> InProcessOutcome:
    """Load the pipeline from ``ckpts`` on ``device`` (``auto``: CUDA when present, float16 there, float32
    on the CPU), reconstruct ``photo`` with ``options`` and write the GLB to ``output``, and beside it the
    ``extras`` (``gaussians.ply``, ``mesh_obj.zip``, ``multiview``: the generated views) and the report.

    ``options.profile`` names a profile of the gateway's profiles file (``$SYNCHUMAN_GATEWAY_PROFILES``, else
    the shipped one); the options set override its options, as for a served job.

    Raises :class:`~services.common.stage_io.InvalidInput` for an out-of-range option,
    :class:`~gateway.errors.JobError` for an unknown profile,
    :class:`~gateway.profile_file.ProfileFileError` for a wrong profiles file, and what
    :class:`~synchuman.SyncHumanPipeline` raises for missing checkpoints or an unusable photo or result.
    """
    from synchuman import SyncHumanPipeline

    options = load_profiles().apply(options)
    stage1_options = stage1_options_from_proto(options.multiview, "options.multiview")
    stage2_options = stage2_options_from_proto(options.reconstruction, "options.reconstruction")
    device, dtype = resolve_device(device, "auto")
    started = time.monotonic()
    pipeline = SyncHumanPipeline.from_pretrained(
        ckpts, device=device, dtype=dtype, segmenter=options.preprocess.segmenter
    )
    bars = ProgressBars(progress)
    try:
        result = pipeline(
            photo,
            callback=lambda p: bars.update(progress_event(STAGE_VALUES[p.stage], p.phase, p.step, p.total)),
            stage1_options=stage1_options,
            stage2_options=stage2_options,
        )
    finally:
        bars.close()
    outcome = InProcessOutcome(
        input_report_to_proto(result.input_report), output_report_to_proto(result.stage2.report)
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    outcome.written.append(result.save_glb(output))
    files = dict(result.stage2.extra_files)
    if "multiview" in extras:
        files.update(stage1_output_to_blobs(result.stage1))
    for name in extra_file_names(extras, set(files)):
        path = beside(output, name)
        path.write_bytes(files[name])
        outcome.written.append(path)
    outcome.written.append(write_report(output, outcome.input_report, outcome.output_report))
    outcome.seconds = time.monotonic() - started
    return outcome
