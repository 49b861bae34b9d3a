"""Check a checkpoint tree: every expected file, and every key and shape of every model.

Each model is built on the meta device from the ``config.json`` found on disk and its state dict is compared
with the weights file's header, so one code path checks the tiny random checkpoints and the real ones.
Nothing is loaded into memory except JSON files and tensor headers.

    findings = verify_tree(Path("ckpts"))
    errors = [f for f in findings if f.fatal]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synchuman.checkpoints.layout import (
    DINOV2_HUB_ID,
    SEGMENTER_NAME,
    WEIGHT_CANDIDATES,
    CheckpointLayout,
)
from synchuman.checkpoints.loading import CONFIG_NAME, CheckpointError
from synchuman.checkpoints.shapes import build_meta_model, compare_shapes, file_shapes, model_shapes

#: Marker file written by ``make-tiny``: its presence means the weights are random.
TINY_MARKER = "TINY_RANDOM_WEIGHTS.txt"
#: Marker file written by ``make-random`` (full-size models, random weights, for benchmarks).
RANDOM_MARKER = "RANDOM_WEIGHTS.json"
LATENT_CHANNELS = 8
PROMPT_VIEWS = 7


@dataclass(frozen=True)
class Finding:
    """One line of the verify report. ``fatal`` findings make verification fail; others are warnings/info."""

    path: str
    message: str
    fatal: bool = True
    ok: bool = False

    def __str__(self) -> str:
        tag = "ok     " if self.ok else ("ERROR  " if self.fatal else "warning")
        return f"{tag} {self.path}: {self.message}"


class _Checker:
    """Collects findings for one checkpoint root; remembers facts needed by cross-file checks."""

    def __init__(self, root: Path) -> None:
        self.layout = CheckpointLayout(root)
        self.root = self.layout.root
        self.findings: list[Finding] = []
        self.dinov2_dim: int | None = None

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def error(self, path: Path, message: str) -> None:
        self.findings.append(Finding(self.rel(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.findings.append(Finding(self.rel(path), message, fatal=False))

    def good(self, path: Path, message: str) -> None:
        self.findings.append(Finding(self.rel(path), message, fatal=False, ok=True))

    def json_file(self, path: Path) -> Any:
        """Parsed JSON, or ``None`` after recording why it could not be read."""
        if not path.is_file():
            self.error(path, "missing")
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.error(path, f"not valid JSON: {exc}")
            return None

    def model(
        self, folder: Path, weights_names: tuple[str, ...] = WEIGHT_CANDIDATES
    ) -> dict[str, Any] | None:
        """Check one model folder; returns its config (or ``None`` when the folder is unusable)."""
        config = self.json_file(folder / CONFIG_NAME)
        weights = next((folder / n for n in weights_names if (folder / n).is_file()), None)
        if weights is None:
            self.error(folder / weights_names[0], "missing (weights file)")
        if config is None or weights is None:
            return None
        try:
            name, model = build_meta_model(folder)
            found = file_shapes(weights)
        except CheckpointError as exc:
            self.error(weights, str(exc))
            return None
        problems = compare_shapes(found, model_shapes(model))
        if problems:
            self.error(weights, f"does not match {name} built from {CONFIG_NAME}: " + "; ".join(problems))
            return None
        self.good(weights, f"{name}, {len(found)} keys match")
        return config


def _args(config: dict[str, Any] | None) -> dict[str, Any]:
    """Constructor arguments of a TRELLIS (``args``) or diffusers (top-level) config."""
    if not config:
        return {}
    return dict(config.get("args", config))


def _check_dinov2(c: _Checker) -> None:
    folder = c.layout.dinov2
    if c.model(folder, (c.layout.dinov2_weights.name,)) is None:
        return
    shapes = file_shapes(c.layout.dinov2_weights)
    c.dinov2_dim = shapes.get("cls_token", (0,))[-1] or None


def _check_dim(c: _Checker, path: Path, what: str, value: Any) -> None:
    if c.dinov2_dim is not None and value is not None and value != c.dinov2_dim:
        c.error(path, f"{what} = {value} but the DINOv2 checkpoint has width {c.dinov2_dim}")


def _check_stage1(c: _Checker) -> None:
    lay = c.layout
    pipeline = c.json_file(lay.stage1_pipeline_config)
    if isinstance(pipeline, dict):
        for name, meta in dict(pipeline.get("metadata", {})).items():
            sub = lay.stage1 / str(meta.get("subdir", name))
            if not sub.is_dir() and sub != lay.text_encoder:
                c.error(lay.stage1_pipeline_config, f"{name!r} points at missing folder {c.rel(sub)}")
    diffusion = c.model(lay.diffusion_2d3d)
    _check_dim(c, lay.diffusion_2d3d / CONFIG_NAME, "cond_channels", _args(diffusion).get("cond_channels"))
    c.model(lay.vae)
    c.model(lay.image_encoder)
    if lay.text_encoder.is_dir():
        c.model(lay.text_encoder)
    processor = c.json_file(lay.feature_extractor_config)
    if isinstance(processor, dict) and "crop_size" not in processor:
        c.error(lay.feature_extractor_config, "no 'crop_size' (not a CLIPImageProcessor config?)")
    c.model(lay.ss_decoder)
    width = _args(diffusion).get("cross_attention_dim")
    computable = lay.text_encoder.is_dir() and lay.tokenizer.is_dir() and any(lay.tokenizer.iterdir())
    for path in (lay.normal_prompt_embeds, lay.color_prompt_embeds):
        if not path.is_file() and computable:
            encoder = c.rel(lay.text_encoder)
            c.warn(path, f"missing; computed at start-up from the view prompts with {encoder}")
            continue
        if not path.is_file():
            c.error(
                path,
                "missing (fixed prompt embeddings): copy them from PSHuman's "
                "mvdiffusion/data/fixed_prompt_embeds_7view (`synchuman ckpts pull` does), or provide "
                f"{c.rel(lay.tokenizer)} and {c.rel(lay.text_encoder)} so they can be computed",
            )
            continue
        try:
            shape = file_shapes(path).get("")
        except CheckpointError as exc:
            c.error(path, str(exc))
            continue
        if shape is None or len(shape) != 3 or shape[0] != PROMPT_VIEWS or (width and shape[2] != width):
            c.error(path, f"expected a tensor [{PROMPT_VIEWS}, tokens, {width or 'D'}], found {shape}")
        else:
            c.good(path, f"prompt embeddings {list(shape)}")


def _check_stage2_pipeline(c: _Checker, flow: dict[str, Any] | None) -> None:
    path = c.layout.stage2_pipeline
    config = c.json_file(path)
    if not isinstance(config, dict):
        return
    args = config.get("args", {})
    for key, ref in dict(args.get("models", {})).items():
        if not (c.layout.stage2 / ref).is_dir():
            c.error(path, f"models.{key} points at missing folder {ref!r}")
    sampler = args.get("slat_sampler", {})
    params = sampler.get("params", {})
    missing = [k for k in ("steps", "cfg_strength", "cfg_interval", "rescale_t") if k not in params]
    if "sigma_min" not in sampler.get("args", {}):
        missing.append("sigma_min")
    if missing:
        c.error(path, "slat_sampler lacks " + ", ".join(missing))
    norm = args.get("slat_normalization", {})
    channels = _args(flow).get("out_channels", LATENT_CHANNELS)
    mean, std = norm.get("mean", []), norm.get("std", [])
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        c.error(path, f"slat_normalization needs {channels} means and {channels} positive stds")
    ref = args.get("image_cond_model")
    if ref == DINOV2_HUB_ID:
        c.error(path, f"image_cond_model is the hub id {ref!r}; `synchuman ckpts pull` resolves it locally")
    elif not isinstance(ref, str) or (c.layout.stage2 / ref).resolve() != c.layout.dinov2.resolve():
        c.error(path, f"image_cond_model {ref!r} does not point at {c.rel(c.layout.dinov2)}")


def _check_stage2(c: _Checker) -> None:
    lay = c.layout
    flow = c.model(lay.slat_flow)
    _check_dim(c, lay.slat_flow / CONFIG_NAME, "cond_channels", _args(flow).get("cond_channels"))
    for folder in (lay.decoder_gs, lay.decoder_mesh):
        decoder = c.model(folder)
        if decoder is not None:
            _check_dim(c, folder / CONFIG_NAME, "mv_dim", _args(decoder).get("mv_dim", 1024))
    _check_stage2_pipeline(c, flow)


def _check_segmenter(c: _Checker) -> None:
    path = c.layout.segmenter
    if path.is_file() and path.stat().st_size > 0:
        c.good(path, "segmenter present")
    else:
        c.warn(path, f"no {SEGMENTER_NAME}: photos without an alpha mask will be refused "
                     "(run scripts/fetch_segmenter.py or `synchuman ckpts pull`)")


def _check_pose_model(c: _Checker) -> None:
    from synchuman.rig.pose_files import FETCH_HINT, missing_pose_files

    missing = missing_pose_files(c.layout.pose)
    if not missing:
        c.good(c.layout.pose, "pose model present")
    for path in missing:
        c.warn(path, f"missing: rigged-GLB requests will end with RIG_FAILED ({FETCH_HINT})")


SECTIONS: dict[str, Callable[[_Checker], None]] = {
    "dinov2": _check_dinov2,
    "stage1": _check_stage1,
    "stage2": _check_stage2,
    "segmentation": _check_segmenter,
    "pose": _check_pose_model,
}


def verify_tree(root: Path, sections: tuple[str, ...] = tuple(SECTIONS)) -> list[Finding]:
    """All findings for the checkpoint tree at ``root`` (``ok`` lines included), in a stable order.

    ``sections`` restricts the check to parts of the tree (``dinov2`` runs first when requested because the
    stage checks compare widths with it).
    """
    checker = _Checker(Path(root))
    if not checker.root.is_dir():
        return [Finding(str(root), "checkpoint folder does not exist")]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown verify sections {sorted(unknown)}; use {list(SECTIONS)}")
    for name, check in SECTIONS.items():
        if name in sections:
            check(checker)
    return checker.findings


def is_tiny(root: Path) -> bool:
    """True when ``root`` holds the random tiny checkpoints written by ``make-tiny``."""
    return (Path(root) / TINY_MARKER).is_file()


def weights_kind(root: Path) -> str:
    """``"tiny random"`` (``make-tiny``), ``"full-size random"`` (``make-random``) or ``"real"``."""
    if is_tiny(root):
        return "tiny random"
    if (Path(root) / RANDOM_MARKER).is_file():
        return "full-size random"
    return "real"


def weights_label(root: Path) -> str:
    """What a service reports as its weights (``ServiceInfo``, logs), random trees named as such."""
    return {
        "tiny random": "tiny random weights (selftest; outputs are meaningless)",
        "full-size random": "full-size random weights (benchmark; outputs are meaningless)",
    }.get(weights_kind(root), "SyncHuman (xishushu/SyncHuman)")



def require_verified(root: Path, sections: tuple[str, ...] = tuple(SECTIONS)) -> list[Finding]:
    """Verify ``sections`` of the tree at ``root``; raise one :class:`CheckpointError` listing every problem.

    Services call this before loading so a bad tree fails with the full list (and the fix) instead of the
    first key error. Returns the non-fatal warnings.
    """
    findings = verify_tree(root, sections)
    errors = [f for f in findings if f.fatal]
    if errors:
        listing = "\n  ".join(str(e) for e in errors)
        raise CheckpointError(
            f"checkpoints in {root} are incomplete or inconsistent ({len(errors)} problem(s)):\n  {listing}\n"
            "Fix: `synchuman ckpts pull` (online), or `synchuman ckpts make-tiny DIR` for a test tree; "
            "`synchuman ckpts verify` repeats this check."
        )
    return [f for f in findings if not f.ok]
