"""Checks of the values a user gives, one rule per kind of value, shared by the CLI, the Python API and the
environments. Each failure is an `InvalidInputError` (also a ValueError) naming the value and what is allowed."""

from __future__ import annotations

import math
import numbers
import tempfile
from pathlib import Path

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


def device(value: str | None) -> str | None:
    """A torch device this machine has (cpu, cuda, cuda:1, mps, ...); None: where the pipeline loads."""
    if value is None:
        return None
    import torch  # only where a device is named: listing models needs no torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidInputError(f"device {value!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return value
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise InvalidInputError(f"device {value!r}: this machine has no {dev.type} device that torch "
                                f"{torch.__version__} can use; run on cpu, or install a torch build for it")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise InvalidInputError(f"device {value!r}: this machine has {count()} {dev.type} device(s)")
    return value


def folder(value) -> Path:
    """A folder to write into: it may not exist yet, but neither it nor any folder above it may be a file."""
    path = Path(value)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise InvalidInputError(f"{value} cannot be a folder: {part} is a file")
            break
    return path


def output_file(value) -> Path:
    """A file to write, in folders that may not exist yet: not a folder, and nothing above it a file."""
    path = Path(value)
    if path.is_dir():
        raise InvalidInputError(f"{value} is a folder; name a file")
    folder(path.parent)
    return path


def writable_file(value) -> Path:
    """A file that can really be written (tried now: permission bits say nothing for root, and /proc or a
    read-only mount refuse anyway), in a folder that exists."""
    path = Path(value)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"cannot write to {path}: the folder {parent} does not exist")
    if path.is_dir():
        raise InvalidInputError(f"cannot write to {path}: it is a folder")
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.stem}.", suffix=path.suffix):
                pass
    except OSError as err:
        raise InvalidInputError(f"cannot write to {path}: {(err.strerror or str(err)).lower()}") from None
    return path
