"""Baselines by name, with their knob, built from a model's calibration where they need one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cachepilot.errors import CachepilotError

from .adacache import AdaCache, AdaCacheConfig
from .base import NoCache
from .dbcache import DBCache, DBCacheConfig, default_front_blocks
from .first_block import FirstBlockCache, FirstBlockConfig
from .magcache import MagCache, MagCacheConfig
from .mixcache import MixCache, MixCacheConfig
from .static import StaticCache, StaticConfig
from .teacache import TeaCache, TeaCacheConfig


@dataclass(frozen=True)
class Baseline:
    name: str
    knob: str
    default: float
    sweep: tuple[float, ...]
    build: Callable[[float, dict | None, int], object]  # (knob value, calibration, num_blocks) -> policy
    calibration: str | None = None  # the section of the model's calibration it is built from


def _need(calibration: dict | None, name: str) -> dict:
    """The calibration section a method reads ("teacache", "magcache"), or a clear error saying how to get one."""
    if calibration is None or name.lower() not in calibration:
        raise CachepilotError(f"{name} needs a calibration for this model: run `cachepilot calibrate --model <name>` "
                              "(or pass calibration=published_calibration(<model>) for a model with published constants)")
    return calibration


BASELINES: dict[str, Baseline] = {b.name: b for b in [
    Baseline("none", "-", 0.0, (0.0,), lambda v, cal, n: NoCache()),
    Baseline("static", "interval", StaticConfig.interval, StaticConfig.sweep, lambda v, cal, n: StaticCache(interval=v)),
    Baseline("teacache", "threshold", TeaCacheConfig.threshold, TeaCacheConfig.sweep,
             lambda v, cal, n: TeaCache.from_calibration(_need(cal, "TeaCache"), threshold=v), calibration="teacache"),
    Baseline("magcache", "threshold", MagCacheConfig.threshold, MagCacheConfig.sweep,
             lambda v, cal, n: MagCache(MagCacheConfig.from_calibration(_need(cal, "MagCache"), threshold=v)),
             calibration="magcache"),
    Baseline("first-block", "threshold", FirstBlockConfig.threshold, FirstBlockConfig.sweep,
             lambda v, cal, n: FirstBlockCache(threshold=v)),
    Baseline("dbcache", "threshold", DBCacheConfig.threshold, DBCacheConfig.sweep,
             lambda v, cal, n: DBCache(threshold=v, front_blocks=default_front_blocks(n))),
    Baseline("adacache", "threshold_scale", AdaCacheConfig.threshold_scale, AdaCacheConfig.sweep,
             lambda v, cal, n: AdaCache(threshold_scale=v)),
    Baseline("mixcache", "scale", 1.0, MixCacheConfig.sweep, lambda v, cal, n: MixCache(scale=v)),
]}


def calibration_covers(calibration: dict | None, method) -> bool:
    """Whether a calibration has what a baseline or peer (anything with a `calibration` section name) reads."""
    return method.calibration is None or (calibration is not None and method.calibration in calibration)


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise CachepilotError(f"unknown cache method {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


def make_baseline(name: str, value: float | None = None, calibration: dict | None = None, num_blocks: int = 30):
    """A baseline policy at its default knob, or at `value`."""
    b = get_baseline(name)
    return b.build(b.default if value is None else value, calibration, num_blocks)
