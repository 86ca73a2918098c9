"""The settings a learned policy was trained over, and what happens outside them.

A policy runs at the step counts and guidance scales its card records. Outside them it is refused in one line,
unless the user asks it to extrapolate: then it runs, with a warning that says how far outside it is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cachepilot import checks
from cachepilot.errors import InvalidInputError


class ExtrapolationWarning(UserWarning):
    """A learned policy runs at a setting outside the ones it was trained over, as the user asked."""


def span(values: tuple, unit: str = "") -> str:
    lo, hi = values
    return f"{lo:g}{unit}" if lo == hi else f"{lo:g}-{hi:g}{unit}"


@dataclass(frozen=True)
class TrainedRange:
    """Step counts and guidance scales (low, high) a policy was trained over; None: not checked."""

    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None
    extrapolate: bool = False  # run outside them, with an ExtrapolationWarning, instead of refusing

    def __post_init__(self):
        if self.steps is not None:
            object.__setattr__(self, "steps", _bounds(self.steps, lambda v: checks.count("steps", v), "steps"))
        if self.guidance is not None:
            object.__setattr__(self, "guidance", _bounds(self.guidance, checks.guidance, "guidance"))

    def outside(self, steps: int | None, guidance: float | None) -> list[str]:
        """What of a generation's setting lies outside the range, in words (empty: nothing)."""
        found = []
        if self.steps is not None and steps is not None and not self.steps[0] <= steps <= self.steps[1]:
            found.append(f"trained for {span(self.steps)}-step generations and this one has {steps} steps")
        if (self.guidance is not None and guidance is not None
                and not self.guidance[0] - 1e-6 <= guidance <= self.guidance[1] + 1e-6):
            found.append(f"trained at guidance {span(self.guidance)} and this generation runs at {guidance:g}")
        return found

    def check(self, steps: int | None, guidance: float | None) -> None:
        """Refuse a setting outside the range (one line, naming the way to run it anyway), or warn when asked to
        extrapolate."""
        found = self.outside(steps, guidance)
        if not found:
            return
        message = "this policy was " + "; it was ".join(found)
        if not self.extrapolate:
            raise InvalidInputError(f"{message}; run it inside what it was trained for, train one for this setting, "
                                    "or pass extrapolate=True (generate --extrapolate) to run it anyway")
        warnings.warn(f"{message}: extrapolating, as asked; its quality there is not measured", ExtrapolationWarning,
                      stacklevel=2)


def _bounds(values, check, name: str) -> tuple:
    if not isinstance(values, (tuple, list)) or len(values) != 2:
        raise InvalidInputError(f"{name} range must be (low, high), got {values!r}")
    lo, hi = (check(v) for v in values)
    if lo > hi:
        raise InvalidInputError(f"{name} range [{lo:g}, {hi:g}] is empty")
    return lo, hi
