"""Stopping a pipeline inside its network passes on a CPU.

A pipeline checks its stop flag between sampler steps and phases; on a CPU a single pass of an encoder,
decoder or diffusion model can take seconds, so a stop asked for mid-pass would wait for the pass to end.
:func:`check_before_every_layer` closes that gap by calling the pipeline's check before every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def check_before_every_layer(
    networks: Iterable[object], device: torch.device, check: Callable[[], None]
) -> Iterator[None]:
    """While inside, call ``check()`` (which raises to stop) before the forward of every module of
    ``networks`` (entries that are not :class:`torch.nn.Module`, e.g. ``None``, are skipped).

    Only on a CPU: on GPUs the passes are short and hooks would get in the way of compiled graphs."""
    if device.type != "cpu":
        yield
        return

    def hook(module: torch.nn.Module, args: object) -> None:
        check()

    handles = [
        layer.register_forward_pre_hook(hook)
        for network in networks
        if isinstance(network, torch.nn.Module)
        for layer in network.modules()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
