"""The progress phase names are one closed list (issue 17, finding 3): the protos' ``ProgressEvent`` comment,
the README and every phase name the code sends agree with :mod:`synchuman.progress_phases`."""

from __future__ import annotations

import re
from pathlib import Path

from synchuman.progress_phases import ALL_PHASES, GATEWAY_PHASES
from synchuman.stage_catalog import STAGES
from synchuman.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[1]
COMMON_PROTO = ROOT / "protos" / "synchuman" / "v1" / "common.proto"


def _proto_phase_comment() -> str:
    text = COMMON_PROTO.read_text()
    block = text[text.index("message ProgressEvent {") : text.index("string phase = 2;")]
    return " ".join(line.strip().removeprefix("//").strip() for line in block.splitlines())


def _quoted(text: str) -> list[str]:
    return re.findall(r'"([a-z_]+)"', text)


def test_the_proto_lists_every_phase_per_stage_in_order():
    comment = _proto_phase_comment()
    for entry in STAGES:
        label = f"{common_pb2.Stage.Name(entry.stage)}:"
        listed = comment[comment.index(label) + len(label) :].split(".")[0]
        assert tuple(_quoted(listed)) == entry.phases, label
    gateway = comment[comment.index("Sent by the gateway") :].split("STAGE_PREPROCESS")[0]
    assert tuple(_quoted(gateway)) == GATEWAY_PHASES
    assert set(_quoted(comment)) == set(ALL_PHASES)


def test_the_readme_lists_the_same_phases():
    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("- Progress phases") :].split("\n- ")[0]
    assert set(re.findall(r"`([a-z_]+)`", bullet)) >= set(ALL_PHASES)
    listed = [name for name in re.findall(r"`([a-z_]+)`", bullet) if name in ALL_PHASES]
    assert listed == [*GATEWAY_PHASES, *(phase for entry in STAGES for phase in entry.phases)]


def test_every_phase_name_the_code_sends_is_listed():
    """Literal phase names given to progress callbacks, post-processing timers and the gateway's events."""
    sent: set[str] = set()
    patterns = (
        r'progress\(\s*"([a-z_]+)"',  # progress("decode", 0, 0)
        r'report_progress\(\s*"([a-z_]+)"',
        r'phase="([a-z_]+)"',  # ProgressEvent(phase="start")
        r'timer\.run\(\s*"([a-z_]+)"',  # post-processing phases
    )
    for folder in ("synchuman", "services", "gateway"):
        for path in (ROOT / folder).rglob("*.py"):
            if "/v1/" in str(path):
                continue
            text = path.read_text()
            for pattern in patterns:
                sent.update(re.findall(pattern, text))
    from synchuman.postprocess.pipeline import _Phases

    sent.update(_Phases.names)
    assert sent, "no phase names found: the patterns no longer match the code"
    assert sent <= set(ALL_PHASES), sorted(sent - set(ALL_PHASES))
    assert {"start", "decode", "segment", "frame", "sampling", "condition", "visibility", "bake"} <= sent


def test_a_phase_that_reports_nothing_is_covered_by_heartbeats():
    """stream_work repeats the last report as a Heartbeat while the work is silent."""
    import time

    from test_stage_worker import Context

    from services.common.worker import Heartbeat, StopSignal, stream_work

    def work(report, should_stop):
        report(("uv_atlas", 0, 0))
        time.sleep(1.0)  # one long native call
        return "done"

    items = []
    gen = stream_work(work, StopSignal(Context()), heartbeat_s=0.3)
    try:
        while True:
            items.append(next(gen))
    except StopIteration as finished:
        assert finished.value == "done"
    assert items[0] == ("uv_atlas", 0, 0)
    assert len(items) >= 3 and all(item == Heartbeat(("uv_atlas", 0, 0)) for item in items[1:])
