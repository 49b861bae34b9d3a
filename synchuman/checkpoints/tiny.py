"""``synchuman ckpts make-tiny``: a complete tiny random checkpoint tree in exactly the real layout.

Used by the tests, by ``synchuman selftest`` and by ``ckpts ensure`` on machines without network access. The
outputs of models loaded from it are meaningless; the tree only proves that installation, loading and serving
work. A marker file (:data:`~synchuman.checkpoints.verify.TINY_MARKER`) records that the weights are random.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from synchuman.checkpoints.dinov2_config import TINY_DINOV2_CONFIG
from synchuman.checkpoints.layout import CheckpointLayout, default_root
from synchuman.checkpoints.tiny_common import write_model_folder
from synchuman.checkpoints.tiny_stage1 import write_tiny_stage1
from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
from synchuman.checkpoints.verify import TINY_MARKER

TINY_NOTICE = (
    "These checkpoints were written by `synchuman ckpts make-tiny`: tiny models with RANDOM weights in the\n"
    "real layout. Anything generated with them is meaningless; they only prove the installation works.\n"
    "Replace them with the real weights: `synchuman ckpts pull` (needs network access).\n"
)


def find_segmenter(root: Path) -> Path | None:
    """An existing ``u2netp.onnx`` to reuse: in ``root`` itself or in the default checkpoint root."""
    for base in (root, default_root()):
        candidate = CheckpointLayout(base).segmenter
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    return None


def copy_pose_model(layout: CheckpointLayout) -> list[str]:
    """Copy the rig step's pose model files from the default checkpoint root into ``layout`` when missing
    there; returns a warning when they exist nowhere (rigged-GLB requests then end with RIG_FAILED)."""
    from synchuman.rig.pose_files import FETCH_HINT, missing_pose_files

    missing = missing_pose_files(layout.pose)
    source = CheckpointLayout(default_root()).pose
    if not missing or source.resolve() == layout.pose.resolve():
        return [] if not missing else [f"no pose model in {layout.pose}: {FETCH_HINT}"]
    if missing_pose_files(source):
        return [f"no pose model to copy into {layout.pose}: {FETCH_HINT}"]
    layout.pose.mkdir(parents=True, exist_ok=True)
    for target in missing:
        shutil.copyfile(source / target.name, target)
    return []


def write_tiny_tree(root: Path, seed: int = 0) -> list[str]:
    """Write every tiny checkpoint below ``root``; returns warnings (e.g. no segmenter available to copy).

    Existing files of the layout are overwritten; other files are left alone.
    """
    root = Path(root)
    layout = CheckpointLayout(root)
    warnings: list[str] = []
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, seed, layout.dinov2_weights.name, pickle=True)
    dinov2_dim = int(TINY_DINOV2_CONFIG["args"]["embed_dim"])
    write_tiny_stage1(root, seed)
    write_tiny_stage2(root, seed, dinov2_dim)
    segmenter = find_segmenter(root)
    if segmenter is None:
        warnings.append(
            f"no {layout.segmenter.name} to copy into {layout.segmentation}: run scripts/fetch_segmenter.py "
            "(photos without an alpha mask will be refused until then)"
        )
    elif segmenter.resolve() != layout.segmenter.resolve():
        layout.segmentation.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(segmenter, layout.segmenter)
    warnings += copy_pose_model(layout)
    (root / TINY_MARKER).write_text(TINY_NOTICE)
    return warnings
