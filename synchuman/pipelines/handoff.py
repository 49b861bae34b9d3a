"""What one stage hands to the next, in one form everywhere (pipelines, services, in-process pipeline).

The data walk of one person::

    PreprocessResult (synchuman.preprocess.pipeline)
        framed        uint8 [768, 768, 4]   RGBA, the person centred    -> stage 1
        conditioning  uint8 [518, 518, 3]   RGB crop, premultiplied on black -> stage 1 and stage 2
    Stage1Output (this module)             <- Stage1Pipeline.run, or decoded from the stage-1 service's PNGs
    Stage2Inputs (this module)             <- stage2_inputs_from(stage1_output, conditioning)
                                           -> Stage2Pipeline.run -> GLB

No torch and no gRPC here: services and the gateway import these types freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from synchuman.preprocess.framing import CONDITIONING_SIZE, MULTIVIEW_SIZE

#: Generated views of each kind, in this order.
VIEW_NAMES = ("front", "right", "back", "left", "face")
NUM_VIEWS = len(VIEW_NAMES)
#: Side of a generated view, in pixels.
VIEW_SIZE = MULTIVIEW_SIZE
#: File name of each generated view: ``color_0.png`` .. ``color_4.png``, then ``normal_0.png`` ..
#: ``normal_4.png`` (the names the services and saved results use).
VIEW_FILES = tuple(f"{kind}_{i}.png" for kind in ("color", "normal") for i in range(NUM_VIEWS))


class Stage2InputError(ValueError):
    """An input of stage 2 is malformed or unusable; ``field`` names it and the message says what to send."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Stage1Output:
    """Stage 1's result for one person.

    Attributes:
        colors: uint8 ``[5, 768, 768, 3]`` RGB views in :data:`VIEW_NAMES` order: four orthographic
            body views (cameras: :data:`synchuman.postprocess.pipeline.VIEW_YAWS`), then the face (the framed
            image's face box, upscaled); white background. Colour view 0 is the input photo composited over
            white.
        normals: uint8 ``[5, 768, 768, 3]`` normal maps of the same views (the diffusion model's RGB
            encoding), white background; the face normal is pasted into normal view 0's face box.
        coords: int ``[N, 3]`` (x, y, z) indices of the occupied voxels of the ``64^3`` grid (z up), N >= 0.
        timings: wall seconds per stage-1 phase (``encode``, ``sample``, ``decode``); empty when the output
            was received over the wire.
    """

    colors: np.ndarray
    normals: np.ndarray
    coords: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def view_files(self) -> dict[str, np.ndarray]:
        """Every view under its :data:`VIEW_FILES` name (colours first)."""
        return dict(zip(VIEW_FILES, [*self.colors, *self.normals], strict=True))

    @classmethod
    def from_view_files(cls, views: Mapping[str, np.ndarray], coords: np.ndarray) -> Stage1Output:
        """The inverse of :meth:`view_files`: ``views`` maps every :data:`VIEW_FILES` name to uint8
        ``[768, 768, 3]``; ``coords`` int ``[N, 3]``."""
        missing = [name for name in VIEW_FILES if name not in views]
        if missing:
            raise Stage2InputError("views", f"missing views {missing}; send all of {list(VIEW_FILES)}")
        colors, normals = (
            np.stack([views[name] for name in VIEW_FILES if name.startswith(kind)])
            for kind in ("color", "normal")
        )
        return cls(colors=colors, normals=normals, coords=np.asarray(coords))


@dataclass(frozen=True)
class Stage2Inputs:
    """What stage 2 needs for one person (build it with :func:`stage2_inputs_from`).

    Attributes:
        coords: int ``[N, 3]`` (x, y, z) occupied voxels of the ``64^3`` grid (z up), N >= 1, in
            :func:`sorted_voxels` order (stage 2's noise is drawn per voxel in this order).
        colors / normals: uint8 ``[5, 768, 768, 3]`` each, as in :class:`Stage1Output`.
        conditioning: uint8 ``[518, 518, 3]`` RGB crop, the person premultiplied on black (preprocess).
    """

    coords: np.ndarray
    colors: np.ndarray
    normals: np.ndarray
    conditioning: np.ndarray

    def validate(self, resolution: int) -> Stage2Inputs:
        """Return ``self`` or raise :class:`Stage2InputError` for a wrong shape, dtype or coordinate range."""
        c = self.coords
        if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] == 0:
            raise Stage2InputError("coords", f"coords must be a non-empty [N, 3] array, got shape {c.shape}")
        if not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= resolution:
            raise Stage2InputError("coords", f"coords must be integers in [0, {resolution})")
        for name, views in (("colors", self.colors), ("normals", self.normals)):
            if len(views) != NUM_VIEWS:
                raise Stage2InputError(name, f"{name} must hold {NUM_VIEWS} views, got {len(views)}")
            for i, view in enumerate(views):
                if view.shape != (VIEW_SIZE, VIEW_SIZE, 3) or view.dtype != np.uint8:
                    raise Stage2InputError(
                        f"{name}[{i}]",
                        f"views must be uint8 [{VIEW_SIZE}, {VIEW_SIZE}, 3], got {view.dtype} {view.shape}",
                    )
        size = (CONDITIONING_SIZE, CONDITIONING_SIZE, 3)
        if self.conditioning.shape != size or self.conditioning.dtype != np.uint8:
            raise Stage2InputError(
                "conditioning",
                f"conditioning must be uint8 [{CONDITIONING_SIZE}, {CONDITIONING_SIZE}, 3], got "
                f"{self.conditioning.dtype} {self.conditioning.shape}",
            )
        return self


def sorted_voxels(coords: np.ndarray) -> np.ndarray:
    """``coords`` ``[N, 3]`` in lexicographic (x, y, z) order: the order of the wire's voxel structure, so
    stage 2 draws the same noise per voxel in-process and behind the services."""
    coords = np.asarray(coords)
    return coords[np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))]


def stage2_inputs_from(stage1: Stage1Output, conditioning: np.ndarray) -> Stage2Inputs:
    """Stage 2's inputs from stage 1's output and preprocess's uint8 ``[518, 518, 3]`` conditioning crop (the
    same crop stage 1 was conditioned on); the voxels in :func:`sorted_voxels` order."""
    return Stage2Inputs(
        coords=sorted_voxels(stage1.coords),
        colors=np.asarray(stage1.colors),
        normals=np.asarray(stage1.normals),
        conditioning=conditioning,
    )
