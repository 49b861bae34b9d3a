"""The preprocess backend: :func:`synchuman.preprocess.pipeline.preprocess` with the server's default
segmenter loaded, as a :class:`~services.common.backend.StageBackend`: the photo's bytes and
:class:`~synchuman.options.PreprocessOptions` in,
:class:`~synchuman.preprocess.pipeline.PreprocessResult` out (the same code ``synchuman preprocess`` runs).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.backend import StopCheck
from synchuman.options import PreprocessOptions
from synchuman.pipelines.info import PipelineInfo
from synchuman.preprocess.pipeline import PreprocessResult, preprocess
from synchuman.preprocess.segment import DEFAULT_SEGMENTER, load_segmenter, segmentation_dir
from synchuman.progress_phases import ProgressCallback


class StoppedBetweenPhases(Exception):
    """The request was stopped before ``phase`` began (the runtime turns this into the matching status)."""


class PreprocessBackend:
    """The server's defaults (segmenter, model folder, input limits) with the default segmenter loaded."""

    def __init__(self, defaults: PreprocessOptions, info: PipelineInfo) -> None:
        self.defaults = defaults
        self._info = info

    @classmethod
    def load(cls, defaults: PreprocessOptions) -> PreprocessBackend:
        """Load the default segmenter; raises SegmenterError (with what to do) when its file is missing."""
        folder = defaults.segmentation_dir or segmentation_dir()
        name = defaults.segmenter or DEFAULT_SEGMENTER
        segmenter = load_segmenter(name, folder)
        info = PipelineInfo(
            checkpoint_dir=str(folder),
            weights=f"segmenter {segmenter.name} ({segmenter.path.name})",
            device="cpu",
            dtype="float32",
        )
        return cls(dataclasses.replace(defaults, segmentation_dir=folder, segmenter=name), info)

    def info(self) -> PipelineInfo:
        """The default segmenter and its folder."""
        return self._info

    def warm_up(self) -> None:
        """One inference, so the first request does not pay for onnxruntime's lazy initialisation."""
        load_segmenter(self.defaults.segmenter, self.defaults.segmentation_dir).predict(
            np.full((64, 48, 3), 128, np.uint8)
        )

    def run(
        self, inputs: bytes, options: PreprocessOptions, progress: ProgressCallback, should_stop: StopCheck
    ) -> PreprocessResult:
        """Preprocess the photo ``inputs`` (encoded image bytes); ``progress(phase, 0, 0)`` as each phase
        begins; the remaining phases are skipped (raising) once ``should_stop()``."""

        def phase_started(phase: str) -> None:
            if should_stop():  # cancelled, past the deadline or shutting down
                raise StoppedBetweenPhases(phase)
            progress(phase, 0, 0)

        return preprocess(inputs, options, progress=phase_started)

    def close(self) -> None:
        """Nothing to free: segmenters run on the CPU and are cached by :func:`load_segmenter`."""
