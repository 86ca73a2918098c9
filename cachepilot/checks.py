"""Checks of the values a user gives, one rule per kind of value, shared by the CLI, the Python API and the
environments. Each failure is an `InvalidInputError` (also a ValueError) naming the value and what is allowed."""

from __future__ import annotations

import math
import numbers

from cachepilot.errors import InvalidInputError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; generation adds the sample index


def number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           integral: bool = False):
    """`value` as a finite number in [low, high] ((low, high] when `low_open`), an int when `integral`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value}")
    if integral:
        if value != int(value):
            raise InvalidInputError(f"{name} must be a whole number, got {value}")
        value = int(value)
    if low is not None and (value <= low if low_open else value < low) or high is not None and value > high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {_shown(low)}"
        hi = "" if high is None else f"<= {_shown(high)}"
        raise InvalidInputError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value}")
    return value


def _shown(bound) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def count(name: str, value, low: int = 1, high: int | None = None) -> int:
    """A whole number of things (steps, pairs, frames per second, ...): at least `low`."""
    return number(name, value, low=low, high=high, integral=True)


def budget(value, name: str = "budget") -> float:
    """A fraction of full compute: in (0, 1]."""
    return float(number(name, value, low=0.0, high=1.0, low_open=True))


def guidance(value) -> float:
    """The classifier-free guidance scale (above 1 the pipeline runs both branches): finite, at least 0."""
    return float(number("guidance", value, low=0.0))


def seed(value, samples: int = 1) -> int:
    """A generator seed; sample i of a batch uses seed + i, which must fit too."""
    return number("seed", value, low=0, high=SEED_MAX - (samples - 1), integral=True)


def threshold(name: str, value) -> float:
    """A baseline's threshold on a change or an error estimate: finite, at least 0."""
    return float(number(name, value, low=0.0))


def positive(name: str, value) -> float:
    """A scale factor: finite, above 0."""
    return float(number(name, value, low=0.0, low_open=True))


def choice(name: str, value, options: tuple[str, ...]) -> str:
    """One of a few named options."""
    if value not in options:
        raise InvalidInputError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def prompt(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"the prompt is empty ({text!r}); say what the video should show")
    return text
