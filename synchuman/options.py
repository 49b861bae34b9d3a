"""Per-request options of the three stages, each with the one definition of its allowed ranges.

Every option class has ``validate()``, which returns the options (defaults resolved) or raises
:class:`OptionError` naming the first out-of-range option. The classes are plain data (no torch, no gRPC), so
the gateway, the services and the pipelines all check requests with the same code.

:class:`PreprocessOptions` lives with the preprocess stage (:mod:`synchuman.preprocess.pipeline`) and
:class:`Stage2Options` with stage 2's types (:mod:`synchuman.pipelines.stage2_types`); both use
:func:`check_ranges`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

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
    """Raise :class:`OptionError` for the first attribute of ``options`` outside its range."""
    for name, low, high, allowed in ranges:
        value = getattr(options, name)
        if not low <= value <= high:
            raise OptionError(name, f"{name}={value} is out of range ({allowed})")


SEED_RANGE: Range = ("seed", 0, MAX_SEED, "0 to 2^63-1")
STEPS_RANGE: Range = ("steps", 1, 200, "1 to 200")
GUIDANCE_RANGE: Range = ("guidance_scale", 1.0, 20.0, "1 to 20")


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
