"""The on-disk compile caches of a restarting stage-1 service.

``--compile --compiler aot`` (experimental, opt-in) keeps an ahead-of-time compiled package of the diffusion
model (:mod:`synchuman.pipelines.compiled_model`) in :func:`aot_package_dir`, a folder of the cache directory:
the first start builds and verifies it, later starts load it and trace nothing. With ``--compiler
torch.compile`` (the default; also with CFG-parallel or CUDA graphs, which the package does not serve),
Inductor keeps its compiled graphs and Triton
kernels under ``TORCHINDUCTOR_CACHE_DIR`` (the stage-1 image points it at a directory that compose mounts as a
volume), so a restart with that directory present skips Inductor's code generation and kernel compilation;
Dynamo still traces the model (bench/RESULTS.md: 40-43 s to SERVING instead of ~150 s on an H200). PyTorch's
experimental ``TORCH_CACHING_PRECOMPILE=1``, which would also skip the tracing, is not used: with torch 2.11 a
restart could not load the guards it had saved.
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

    @property
    def warm(self) -> bool:
        return self.files > 0


def cache_state() -> CacheState:
    """The cache directory torch uses in this process (``TORCHINDUCTOR_CACHE_DIR`` or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    directory = Path(cache_dir())
    files = sum(1 for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
    return CacheState(directory, files)


def aot_package_dir(state: CacheState) -> Path:
    """Where ahead-of-time compiled packages live: ``aot-packages`` in the cache directory (the volume)."""
    return state.directory / "aot-packages"


def log_cache_state(state: CacheState) -> None:
    """Say at start-up whether this start reuses compiled code or compiles from scratch (minutes)."""
    fields = {"cache_dir": str(state.directory), "files": state.files}
    if state.warm:
        log.info("compile cache present: start-up reuses the compiled model", extra=fields)
    else:
        log.warning(
            "compile cache empty: this first start compiles the model (minutes); keep this directory (a "
            "volume) so that later starts reuse it",
            extra=fields,
        )
