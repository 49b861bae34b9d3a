"""SyncHuman Serve core library: models, pipelines, geometry and checkpoint loading.

Importing this package (or any of its submodules other than the generated ``synchuman.v1``
wire contract) never imports gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SyncHumanPipeline"]

if TYPE_CHECKING:
    from synchuman.pipelines.synchuman import SyncHumanPipeline


def __getattr__(name: str) -> Any:
    """``SyncHumanPipeline`` on first use, so ``import synchuman`` stays free of torch."""
    if name == "SyncHumanPipeline":
        from synchuman.pipelines.synchuman import SyncHumanPipeline

        return SyncHumanPipeline
    raise AttributeError(f"module 'synchuman' has no attribute {name!r}")
