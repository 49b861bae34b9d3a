"""The closed list of progress phase names (``ProgressEvent.phase``) and how often progress is reported.

Every name a service or the gateway sends is listed here, per stage, in the order the phases run; the
protos' ``ProgressEvent`` comment and the README list the same names (a test compares them). Phases with
steps report ``step`` of ``total_steps``; every phase, with steps or not, sends an event at least every
:data:`HEARTBEAT_S` seconds while it runs (the last event repeated with the message
:data:`HEARTBEAT_MESSAGE` when nothing new happened), so a client that hears nothing for several heartbeats
can call the job stalled.
"""

from __future__ import annotations

#: Longest gap in seconds between two progress events of a running stage call.
HEARTBEAT_S = 4.0
#: ``ProgressEvent.message`` of a heartbeat (the last event repeated with a new ``elapsed_seconds``).
HEARTBEAT_MESSAGE = "heartbeat"

#: Sent by the gateway when it hands the job to a stage (the message names the attempt).
GATEWAY_PHASES = ("start",)

#: Phases of the preprocess stage: decoding the photo, the person mask and quality gate, framing and crop.
PREPROCESS_PHASES = ("decode", "segment", "frame")

#: Phases of stage 1 (multiview diffusion): the sampler's steps (the view decoding reports as its last step).
STAGE1_PHASES = ("sampling",)

#: Phases of stage 2: image conditioning, sampler steps, view features, the decoders, then post-processing.
STAGE2_PHASES = (
    "condition",
    "sampling",
    "multiview_features",
    "decode",
    "decimate",
    "visibility",
    "cut_fill",
    "uv_atlas",
    "gaussian_render",
    "bake",
    "export",
)

#: Every phase name, in the order a job meets them.
ALL_PHASES = GATEWAY_PHASES + PREPROCESS_PHASES + STAGE1_PHASES + tuple(
    name for name in STAGE2_PHASES if name not in STAGE1_PHASES
)
