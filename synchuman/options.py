"""Every options class of the pipelines, each with the one definition of its allowed ranges.

:class:`PreprocessOptions`, :class:`Stage1Options` and :class:`Stage2Options` are per-request options of the
three stages; they have ``validate()``, which returns the options (defaults resolved) or raises
:class:`OptionError` naming the first out-of-range option. :class:`PostprocessOptions` holds every knob of the
mesh -> GLB post-processing (stage 2 fills it from its :class:`Stage2Options`). The classes are plain data
(no torch, no gRPC, no OpenCV at import), so the gateway, the services and the pipelines all check requests
with the same code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from synchuman.postprocess.defaults import BAKE_STEPS, DEFAULT_SIMPLIFY, TARGET_FACES_RANGE
from synchuman.preprocess.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, MIN_SIDE
from synchuman.preprocess.errors import SegmenterError

if TYPE_CHECKING:
    from synchuman.postprocess.checks import CheckLimits

#: Largest seed: seeds seed ``torch.Generator``, which takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1

#: ``(option name, low, high, allowed range as shown to people)``: inclusive bounds.
Range = tuple[str, float, float, str]


class OptionError(ValueError):
    """An option is out of range or unknown.

    ``field`` names the option relative to its options object (``"steps"``); callers that know where the
    options sit in a request prefix it (:meth:`within`). ``message`` says what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> OptionError:
        """The same error with ``field`` as ``"<prefix>.<field>"`` (e.g. ``"start.options.steps"``)."""
        return OptionError(f"{prefix}.{self.field}", self.message)


def check_ranges(options: object, ranges: Iterable[Range]) -> None:
    """Raise :class:`OptionError` for the first attribute of ``options`` outside its range (``None``: unset,
    not checked)."""
    for name, low, high, allowed in ranges:
        value = getattr(options, name)
        if value is not None and not low <= value <= high:
            raise OptionError(name, f"{name}={value} is out of range ({allowed})")


SEED_RANGE: Range = ("seed", 0, MAX_SEED, "0 to 2^63-1")
STEPS_RANGE: Range = ("steps", 1, 200, "1 to 200")
GUIDANCE_RANGE: Range = ("guidance_scale", 1.0, 20.0, "1 to 20")
SIMPLIFY_RANGE: Range = ("simplify_ratio", 0.0, 0.99, "0 to 0.99")
TARGET_FACES: Range = ("target_faces", *TARGET_FACES_RANGE, "5,000 to 500,000")


@dataclass(frozen=True)
class Stage1Options:
    """Options of the multiview diffusion (stage 1), with the upstream defaults.

    ``seed``: seeds the CPU generator all of stage 1's noise is drawn from; ``steps``: Euler steps;
    ``guidance_scale``: classifier-free guidance weight of both the 2D and the 3D branch.
    """

    seed: int = 43
    steps: int = 50
    guidance_scale: float = 3.0

    #: The allowed ranges (inclusive).
    RANGES: ClassVar[tuple[Range, ...]] = (SEED_RANGE, STEPS_RANGE, GUIDANCE_RANGE)

    def validate(self) -> Stage1Options:
        """Return ``self`` or raise :class:`OptionError` naming the first out-of-range option."""
        check_ranges(self, self.RANGES)
        return self


#: Files of the preview output: a 512x512 front 3/4 thumbnail, a turntable as MP4 (H.264) and animated WebP.
PREVIEW_FILES = ("preview.png", "turntable.mp4", "turntable.webp")
#: The rigged GLB (:mod:`synchuman.pipelines.stage2_rig`, made after the post-processing, not by it).
RIGGED_GLB = "person_rigged.glb"
#: Extra output file names (besides "person.glb") that :class:`Stage2Options.outputs` may request;
#: "preview.png" requests all of :data:`PREVIEW_FILES` (one render of the turntable makes all three).
EXTRA_OUTPUTS = ("gaussians.ply", "mesh_obj.zip", "person.usdz", "preview.png", RIGGED_GLB)
#: Post-processing extra (:attr:`PostprocessOptions.extras`) that makes each extra output file (all but
#: :data:`RIGGED_GLB`).
POSTPROCESS_EXTRAS = {
    "gaussians.ply": "gaussian_ply",
    "mesh_obj.zip": "obj",
    "person.usdz": "usdz",
    "preview.png": "preview",
}
#: Every post-processing extra: the Gaussian PLY, the OBJ files, the generated views, the USDZ, the previews.
POSTPROCESS_EXTRA_NAMES = ("gaussian_ply", "obj", "views", "usdz", "preview")


def check_face_budget(
    simplify: float | None, target_faces: int | None, quad_remesh: object, simplify_field: str
) -> None:
    """Raise :class:`OptionError` for a polygon budget that cannot run: ``target_faces`` outside
    :data:`TARGET_FACES_RANGE` or set together with a decimation ratio (``simplify_field`` names the ratio's
    option), or a ``quad_remesh`` that is not a bool."""
    if not isinstance(quad_remesh, bool):
        raise OptionError("quad_remesh", f"quad_remesh={quad_remesh!r} must be true or false")
    if target_faces is None:
        return
    low, high = TARGET_FACES_RANGE
    if isinstance(target_faces, bool) or not isinstance(target_faces, int) or not low <= target_faces <= high:
        raise OptionError(
            "target_faces", f"target_faces={target_faces!r} is out of range ({low:,} to {high:,} faces)"
        )
    if simplify is not None:
        raise OptionError(
            "target_faces",
            f"target_faces={target_faces} and {simplify_field}={simplify:g} are both set; they are "
            f"alternatives (a face count or a decimation ratio): leave {simplify_field} unset to get "
            f"{target_faces} faces",
        )


@dataclass(frozen=True)
class Stage2Options:
    """Per-request options of stage 2, with the upstream defaults. Ranges are checked by :meth:`validate`."""

    seed: int = 43
    steps: int = 25
    guidance_scale: float = 5.0
    texture_size: int = 1024
    #: Fraction of faces removed by decimation; None: :data:`DEFAULT_SIMPLIFY` (0.7) unless ``target_faces``
    #: is set (the two are alternatives: setting both is an :class:`OptionError` on ``target_faces``).
    simplify_ratio: float | None = None
    bake_mode: str = "fast"  # "fast" | "opt" (upstream); see synchuman.postprocess.bake
    bake_steps: int | None = None  # None: the mode's default (fast 100, opt 1000); validate() fills it
    visibility_views: int = 1000
    outputs: tuple[str, ...] = ()
    #: Polygon budget: faces of the finished mesh (5,000 to 500,000; see PostprocessOptions.target_faces).
    target_faces: int | None = None
    #: Quad-dominant remesh (Instant Meshes) before the UV atlas and the bake; OBJ and USDZ keep the quads.
    quad_remesh: bool = False

    #: The allowed ranges (inclusive); ``bake_mode`` and ``outputs`` are checked against their names,
    #: ``target_faces`` (:data:`TARGET_FACES`; also refused together with ``simplify_ratio``) and
    #: ``quad_remesh`` by :func:`check_face_budget`.
    RANGES: ClassVar[tuple[Range, ...]] = (
        SEED_RANGE,
        STEPS_RANGE,
        GUIDANCE_RANGE,
        ("texture_size", 256, 4096, "256 to 4096"),
        SIMPLIFY_RANGE,
        ("bake_steps", 0, 5000, "0 to 5000"),
        ("visibility_views", 8, 4000, "8 to 4000"),
    )

    def validate(self) -> Stage2Options:
        """Return the options with defaults resolved (``bake_steps``), or raise :class:`OptionError` naming
        the first out-of-range option."""
        if self.bake_mode not in BAKE_STEPS:
            raise OptionError(
                "bake_mode", f"bake_mode={self.bake_mode!r} is unknown; choose one of {sorted(BAKE_STEPS)}"
            )
        if self.bake_steps is None:
            return dataclasses.replace(self, bake_steps=BAKE_STEPS[self.bake_mode]).validate()
        check_ranges(self, self.RANGES)
        check_face_budget(self.simplify_ratio, self.target_faces, self.quad_remesh, "simplify_ratio")
        unknown = [o for o in self.outputs if o not in EXTRA_OUTPUTS]
        if unknown:
            raise OptionError("outputs", f"unknown outputs {unknown}; choose from {EXTRA_OUTPUTS}")
        return self


@dataclass(frozen=True)
class PreprocessOptions:
    """What to do. ``segmenter``: model name in the segmentation folder ("" = the default,
    :data:`~synchuman.preprocess.segment.DEFAULT_SEGMENTER`); ``ignore_alpha``: segment even if the input has
    a usable alpha channel; ``alpha_matting``: refine the segmented mask's edge; ``max_pixels``/``max_bytes``:
    input limits (pixels, bytes); ``segmentation_dir``: model folder (None =
    :func:`~synchuman.preprocess.segment.segmentation_dir`)."""

    segmenter: str = ""
    ignore_alpha: bool = False
    alpha_matting: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    segmentation_dir: Path | None = None

    #: The allowed ranges (inclusive); the segmenter name's form is checked here, its model file when it is
    #: loaded.
    RANGES: ClassVar[tuple[Range, ...]] = (
        ("max_pixels", MIN_SIDE * MIN_SIDE, math.inf, f"at least {MIN_SIDE}x{MIN_SIDE}"),
        ("max_bytes", 1, math.inf, "at least 1"),
    )

    def validate(self) -> PreprocessOptions:
        """Return ``self`` or raise :class:`OptionError` naming the first out-of-range limit or a malformed
        segmenter name."""
        check_ranges(self, self.RANGES)
        if self.segmenter:
            from synchuman.preprocess.segment import segmenter_stem  # OpenCV: imported only when needed

            try:
                segmenter_stem(self.segmenter)
            except SegmenterError as error:
                raise OptionError("segmenter", str(error)) from None
        return self


def _default_check_limits() -> CheckLimits:
    """The post-processing checks' default thresholds (imported here: the checks module needs torch)."""
    from synchuman.postprocess.checks import CheckLimits

    return CheckLimits()


@dataclass(frozen=True)
class PostprocessOptions:
    """Every upstream knob of the mesh -> GLB post-processing (defaults = upstream SyncHuman ``to_glb`` call)
    plus our speed options. Sizes and resolutions are in pixels, ``max_hole_size`` in box units.

    The bake defaults to the ``"fast"`` mode (splat initialisation + 100 full-batch steps), which reaches a
    lower view error than upstream's 1000 single-view steps (``bake_mode="opt"``) in ``bench_postprocess``.
    """

    #: Fraction of faces removed by decimation; None: :data:`DEFAULT_SIMPLIFY` (0.7) unless ``target_faces``.
    simplify: float | None = None
    #: Polygon budget: the finished mesh has this many faces within 2 % (fewer when the surface has fewer:
    #: an info check "face_target", finding FACE_TARGET_UNREACHED). With ``quad_remesh`` it counts the
    #: quads (the GLB then has about twice as many triangles). Alternative to ``simplify``.
    target_faces: int | None = None
    #: Quad remesh (Instant Meshes, pure quads) after the hidden-face removal; the atlas and the bake run on
    #: its triangulation; "obj" and "usdz" extras keep the quads, the GLB is triangulated.
    quad_remesh: bool = False
    fill_holes: bool = True
    max_hole_size: float = 0.04
    max_hole_edges: int | None = None  # None: int(250 * sqrt(1 - simplify)), as upstream
    visibility_views: int = 1000
    visibility_resolution: int = 1024
    texture_size: int = 1024
    bake_mode: str = "fast"  # "fast" (lower error than upstream's, 2.5x faster) or "opt" (upstream)
    bake_steps: int | None = None  # None: BAKE_STEPS of the mode (fast 100, opt 1000)
    bake_lambda_tv: float = 0.01
    gaussian_views: int = 95  # upstream renders 100 views of which the first 5 are replaced by generated ones
    gaussian_resolution: int = 1024
    gaussian_kernel: float = 0.1
    gaussian_backend: str = "auto"
    atlas_fast: bool = True
    metallic: float = 0.0
    limits: CheckLimits = field(default_factory=_default_check_limits)
    extras: tuple[str, ...] = ()  # any of POSTPROCESS_EXTRA_NAMES
    raster_candidates: int = 1 << 25  # candidate pixels per rasteriser chunk (~40 B each; torch backend)
    #: Cap on the faces the expensive phases (visibility, cut + fill, atlas, bake) work on: when ``simplify``
    #: would keep more, the mesh is decimated to about this many instead and the report gets a warning check
    #: ("dense_mesh", finding DENSE_MESH). Bounds their time and memory on the noisy meshes random or broken
    #: weights decode (issue 25: a 616k-face one); the realistic 241,812-face synthetic body works at 72,508.
    #: 0 = no cap.
    max_working_faces: int = 200_000
    raster_backend: str = "torch"  # visibility and bake views: torch | nvdiffrast | open3d | auto
    seed: int = 0
    #: Turntable frames of the "preview" extra (about 3 s at 10 fps) and its thumbnail's edge in pixels.
    preview_frames: int = 30
    preview_size: int = 512

    @property
    def decimation(self) -> float:
        """The decimation ratio ``simplify`` resolves to (its default when unset)."""
        return DEFAULT_SIMPLIFY if self.simplify is None else self.simplify

    def validate(self) -> PostprocessOptions:
        """Return ``self`` or raise :class:`OptionError` naming the option (``simplify``, ``target_faces``,
        ``quad_remesh``, ``extras``, ``preview_frames``) that cannot run."""
        if self.simplify is not None and not 0.0 <= self.simplify <= 0.99:
            raise OptionError("simplify", f"simplify={self.simplify} is out of range (0 to 0.99)")
        check_face_budget(self.simplify, self.target_faces, self.quad_remesh, "simplify")
        unknown = sorted(set(self.extras) - set(POSTPROCESS_EXTRA_NAMES))
        if unknown:
            raise OptionError("extras", f"unknown extras {unknown}; choose from {POSTPROCESS_EXTRA_NAMES}")
        if not 24 <= self.preview_frames <= 360:
            raise OptionError(
                "preview_frames", f"preview_frames={self.preview_frames} is out of range (24 to 360)"
            )
        return self
