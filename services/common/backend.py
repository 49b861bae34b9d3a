"""The one shape of a stage backend: what a stage service loads, warms up, runs per request and frees.

Every service has ``services/<stage>/backend.py`` with a class implementing :class:`StageBackend`; the
servicer only converts the wire format to the backend's core inputs and options and back, and
:class:`~services.common.stage_server.StageServer` drives the lifecycle: ``load`` (the backend's
classmethod, verifying checkpoints with :func:`verified_checkpoints`), :meth:`~StageBackend.warm_up` before
SERVING, :meth:`~StageBackend.run` per request (through :meth:`services.common.servicer.StageCall.run`),
:meth:`~StageBackend.close` after the drain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from synchuman.checkpoints.layout import CheckpointLayout, default_root
from synchuman.pipelines.info import PipelineInfo
from synchuman.progress_phases import ProgressCallback

InputsT = TypeVar("InputsT", contravariant=True)
OptionsT = TypeVar("OptionsT", contravariant=True)
OutputT = TypeVar("OutputT", covariant=True)

#: ``should_stop()``: true once the request was cancelled, passed its deadline or the server shuts down.
StopCheck = Callable[[], bool]


class StageBackend(Protocol[InputsT, OptionsT, OutputT]):
    """A loaded stage (models or segmenter) as its service uses it."""

    def info(self) -> PipelineInfo:
        """What is loaded, from where, on which device (GetInfo, the start-up log)."""
        ...

    def warm_up(self) -> None:
        """Run one small job so the first request does not pay for lazy initialisation (kernels, caches)."""
        ...

    def run(
        self, inputs: InputsT, options: OptionsT, progress: ProgressCallback, should_stop: StopCheck
    ) -> OutputT:
        """One request: core ``inputs`` and validated ``options`` -> core output. Calls ``progress`` as it
        goes and stops between steps (raising) once ``should_stop()`` is true."""
        ...

    def close(self) -> None:
        """Release the models and the accelerator memory they hold (called once drained; no run follows)."""
        ...


def verified_checkpoints(root: Path | None, sections: tuple[str, ...]) -> CheckpointLayout:
    """The checkpoint tree under ``root`` (None: ``$SYNCHUMAN_CKPTS`` or ``./ckpts``) after checking
    ``sections`` of it; raises :class:`~synchuman.checkpoints.loading.CheckpointError` listing every problem
    and the fix, so a stage refuses to start with a bad tree instead of failing at the first missing key.
    """
    from synchuman.checkpoints.verify import require_verified

    layout = CheckpointLayout(root or default_root())
    require_verified(layout.root, sections)
    return layout
