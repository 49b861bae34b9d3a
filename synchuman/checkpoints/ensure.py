"""``synchuman ckpts ensure`` (run by ``make serve``): make sure a usable checkpoint tree exists.

1. The tree verifies and holds real weights: nothing to do. A verified tree of full-size random benchmark
   weights (``make-random``) is kept and named as such in a warning.
2. Otherwise pull the real weights.
3. Offline: write tiny random checkpoints (unless ``allow_tiny`` is false) and print a loud banner saying that
   outputs will be meaningless. A tree holding (partial) real weights is never overwritten with tiny ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.pull import OfflineError, Sources, pull
from synchuman.checkpoints.verify import Finding, is_tiny, verify_tree, weights_kind

BANNER = """
################################################################################################
##  WARNING: serving TINY RANDOM checkpoints.                                                 ##
##  The real weights could not be downloaded (no network). Every output will be MEANINGLESS:   ##
##  this installation only proves that the services start and answer.                        ##
##  Get the real weights with `synchuman ckpts pull` on a machine with network access.        ##
################################################################################################
"""

RANDOM_BANNER = """
WARNING: {root} holds FULL-SIZE RANDOM weights (written by `synchuman ckpts make-random` for benchmarks).
Every output will be MEANINGLESS. Replace them with `synchuman ckpts pull --force --root {root}`.
"""


class EnsureError(Exception):
    """No usable checkpoint tree could be put in place (the message says why and what to do)."""


def _errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.fatal]


def _has_real_files(root: Path) -> bool:
    """True when ``root`` holds model folders that are not the tiny ones (a partial real download)."""
    layout = CheckpointLayout(root)
    present = any(p.exists() for p in (layout.stage1, layout.stage2, layout.dinov2_weights))
    return present and not is_tiny(root)


def ensure(
    root: Path,
    allow_tiny: bool = True,
    sources: Sources | None = None,
    connect_timeout_s: float = 5.0,
    say: Callable[[str], None] = print,
) -> str:
    """Make ``root`` hold a verified tree; returns ``"real"``, ``"random"`` or ``"tiny"``. Raises
    :class:`EnsureError`."""
    root = Path(root)
    errors = _errors(verify_tree(root))
    kind = weights_kind(root)
    if not errors and kind == "real":
        say(f"checkpoints in {root} verified")
        return "real"
    if not errors and kind == "full-size random":
        say(RANDOM_BANNER.format(root=root))
        return "random"
    try:
        warnings = pull(root, sources, connect_timeout_s, say=say)
    except OfflineError as exc:
        if not errors:  # already tiny and still offline
            say(BANNER)
            return "tiny"
        if not allow_tiny:
            raise EnsureError(f"{exc} (--no-tiny: not writing tiny random checkpoints)") from exc
        if _has_real_files(root):
            listing = "\n  ".join(str(e) for e in errors[:20])
            raise EnsureError(
                f"{root} holds incomplete real checkpoints and the network is unreachable ({exc}); "
                f"not overwriting them with tiny ones. Problems:\n  {listing}"
            ) from exc
        say(f"offline ({exc}); writing tiny random checkpoints into {root}")
        from synchuman.checkpoints.tiny import write_tiny_tree

        for warning in write_tiny_tree(root):
            say(f"warning: {warning}")
        errors = _errors(verify_tree(root))
        if errors:
            raise EnsureError("tiny checkpoints do not verify:\n  " + "\n  ".join(map(str, errors))) from exc
        say(BANNER)
        return "tiny"
    for warning in warnings:
        say(f"warning: {warning}")
    errors = _errors(verify_tree(root))
    if errors:
        raise EnsureError("downloaded checkpoints do not verify:\n  " + "\n  ".join(map(str, errors)))
    say(f"checkpoints in {root} downloaded and verified")
    return "real"
