"""torch.compile's on-disk caches for a restarting stage-1 service.

Inductor keeps its compiled graphs and Triton kernels under ``TORCHINDUCTOR_CACHE_DIR`` (the stage-1 image
points it at a directory that compose mounts as a volume), so a restart with that directory present skips
Inductor's code generation and kernel compilation; Dynamo still traces the model. With
``TORCH_CACHING_PRECOMPILE=1`` (experimental in PyTorch) the traced graphs and their guards are saved there
too (:func:`save_after_warm_up`), so a restart also skips the tracing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheState:
    """Where the compile caches live and whether they hold anything yet."""

    directory: Path
    files: int
    precompile: bool

    @property
    def warm(self) -> bool:
        return self.files > 0


def cache_state() -> CacheState:
    """The cache directory torch uses in this process (``TORCHINDUCTOR_CACHE_DIR`` or its default)."""
    import torch
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    directory = Path(cache_dir())
    files = sum(1 for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
    return CacheState(directory, files, bool(torch._dynamo.config.caching_precompile))


def log_cache_state(state: CacheState) -> None:
    """Say at start-up whether this start reuses compiled code or compiles from scratch (minutes)."""
    fields = {"cache_dir": str(state.directory), "files": state.files, "precompile": state.precompile}
    if state.warm:
        log.info("compile cache present: start-up reuses the compiled model", extra=fields)
    else:
        log.warning(
            "compile cache empty: this first start compiles the model (minutes); keep this directory (a "
            "volume) so that later starts reuse it",
            extra=fields,
        )


def save_after_warm_up() -> None:
    """With precompile on, write the traced graphs of the warm-up to the cache (no-op otherwise: Inductor
    writes its own cache entries as it compiles)."""
    import torch

    if torch._dynamo.config.caching_precompile:
        torch.compiler.save_cache_artifacts()
        state = cache_state()
        log.info(
            "compile cache: traced graphs saved for the next start",
            extra={"cache_dir": str(state.directory), "files": state.files},
        )
