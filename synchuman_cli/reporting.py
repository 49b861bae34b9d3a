"""What ``synchuman reconstruct`` shows and writes, whichever way the photo is reconstructed (through the
gateway or in this process): a progress bar per phase, the summary lines, and the files beside the GLB
(``<stem>.<extra name>``, ``<stem>.report.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format
from tqdm import tqdm

from services.common.endpoints import STAGE_SERVICES
from synchuman.v1 import common_pb2

#: ``synchuman.v1.Stage`` value -> the label of its progress bars (the stage service's name).
STAGE_NAMES = {stage: name for name, stage in STAGE_SERVICES.items()}


class ProgressBars:
    """One tqdm bar per (stage, phase) of the progress events; nothing when ``enabled`` is False."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.key: tuple[int, str] | None = None
        self.bar: tqdm | None = None

    def update(self, event: common_pb2.ProgressEvent) -> None:
        """Show ``event``: a new bar when its phase differs from the last one, else advance the bar."""
        if not self.enabled:
            return
        key = (event.stage, event.phase)
        if key != self.key:
            self.close()
            self.key = key
            label = f"{STAGE_NAMES.get(event.stage, '?')} {event.phase}".strip()
            if event.message:
                label += f" ({event.message})"
            # A phase without steps shows only its running time, not an empty step counter.
            stepless = {} if event.total_steps else {"bar_format": "{desc}: {elapsed}"}
            self.bar = tqdm(total=event.total_steps or None, desc=label, unit="step", leave=True, **stepless)
        assert self.bar is not None
        if event.total_steps and event.step > self.bar.n:
            self.bar.update(event.step - self.bar.n)  # through update() so the rate shown is right

    def close(self) -> None:
        """End the current bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_lines(
    title: str,
    input_report: common_pb2.InputQualityReport,
    output_report: common_pb2.OutputQualityReport,
    written: list[Path],
) -> list[str]:
    """Human-readable summary: ``title``, the mesh numbers, every finding of both reports, the files."""
    lines = [title]
    if output_report.face_count:
        lines.append(
            f"mesh: {output_report.vertex_count} vertices, {output_report.face_count} faces, "
            f"texture coverage {output_report.texture_coverage:.0%}, "
            f"GLB {output_report.glb_size_bytes / 1e6:.2f} MB"
        )
    for issue in list(input_report.issues) + list(output_report.issues):
        lines.append(f"{common_pb2.Severity.Name(issue.severity)}: {issue.code}: {issue.message}")
    lines += [f"wrote {path}" for path in written]
    return lines


def beside(output: Path, name: str) -> Path:
    """Where the file ``name`` (an extra output, ``report.json``) is written next to the GLB ``output``."""
    return output.with_name(f"{output.stem}.{name}")


def extra_file_names(extras: list[str] | tuple[str, ...], available: set[str]) -> list[str]:
    """The files to write for the requested ``extras`` (file names, or ``multiview``: every generated view),
    in request order, among the ``available`` ones."""
    names: list[str] = []
    for extra in extras:
        if extra == "multiview":
            names += sorted(n for n in available if n.startswith(("color_", "normal_")))
        elif extra in available:
            names.append(extra)
    return names


def write_report(
    output: Path,
    input_report: common_pb2.InputQualityReport,
    output_report: common_pb2.OutputQualityReport,
    **identity: object,
) -> Path:
    """``<stem>.report.json`` beside ``output``: ``identity`` (e.g. the job id) and both reports."""
    path = beside(output, "report.json")
    report = {
        **identity,
        "input_report": json_format.MessageToDict(input_report),
        "output_report": json_format.MessageToDict(output_report),
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
