"""The closed list of progress phase names (``ProgressEvent.phase``) and how often progress is reported.

Every name a service or the gateway sends is listed here: the gateway's own, then each stage's
(:attr:`synchuman.stage_catalog.StageEntry.phases`) in the order the phases run; the protos'
``ProgressEvent`` comment and the README list the same names (a test compares them). Phases with
steps report ``step`` of ``total_steps``; every phase, with steps or not, sends an event at least every
:data:`HEARTBEAT_S` seconds while it runs (the last event repeated with the message
:data:`HEARTBEAT_MESSAGE` when nothing new happened), so a client that hears nothing for several heartbeats
can call the job stalled.
"""

from __future__ import annotations

from collections.abc import Callable

from synchuman.stage_catalog import STAGES

#: ``progress(phase, step, total)``: ``step`` of ``total`` done in ``phase`` (``0, 0`` as a phase starts and
#: for a phase without steps). The one progress callback of the core pipelines and the stage backends.
ProgressCallback = Callable[[str, int, int], None]

#: Longest gap in seconds between two progress events of a running stage call.
HEARTBEAT_S = 4.0
#: ``ProgressEvent.message`` of a heartbeat (the last event repeated with a new ``elapsed_seconds``).
HEARTBEAT_MESSAGE = "heartbeat"

#: Sent by the gateway when it hands the job to a stage (the message names the attempt).
GATEWAY_PHASES = ("start",)

#: Every phase name, in the order a job meets them (each stage's phases are in
#: :data:`synchuman.stage_catalog.STAGES`).
ALL_PHASES = tuple(dict.fromkeys(GATEWAY_PHASES + tuple(p for entry in STAGES for p in entry.phases)))
