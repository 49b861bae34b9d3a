"""What a loaded stage runs: reported by the services' GetInfo, logged at start-up, shown by the CLI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineInfo:
    """Description of one loaded stage (pipeline or preprocess segmenter).

    Attributes:
        checkpoint_dir: the folder the weights were loaded from.
        weights: a human-readable label of the weights (e.g. ``"random (tiny)"``, ``"segmenter u2netp
            (u2netp.onnx)"``).
        device: where it runs (``"cuda:0"``, ``"cpu"``, ``"cuda:0 + cuda:1 (CFG-parallel)"``).
        dtype: parameter dtype (``"float16"``, ``"fp16"``, ``"float32"``: as it was requested).
    """

    checkpoint_dir: str
    weights: str
    device: str
    dtype: str
