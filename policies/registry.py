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
    calibrated: bool = False  # built from the model's calibration.json


def _need(calibration: dict | None, name: str) -> dict:
    if calibration is None:
        raise CachepilotError(f"{name} needs a calibration for this model: run `cachepilot calibrate --model <name>`")
    return calibration


BASELINES: dict[str, Baseline] = {b.name: b for b in [
    Baseline("none", "-", 0.0, (0.0,), lambda v, cal, n: NoCache()),
    Baseline("static", "interval", StaticConfig.interval, StaticConfig.sweep, lambda v, cal, n: StaticCache(interval=int(v))),
    Baseline("teacache", "threshold", TeaCacheConfig.threshold, TeaCacheConfig.sweep,
             lambda v, cal, n: TeaCache.from_calibration(_need(cal, "TeaCache"), threshold=v), calibrated=True),
    Baseline("magcache", "threshold", MagCacheConfig.threshold, MagCacheConfig.sweep,
             lambda v, cal, n: MagCache(MagCacheConfig.from_calibration(_need(cal, "MagCache"), threshold=v)),
             calibrated=True),
    Baseline("first-block", "threshold", FirstBlockConfig.threshold, FirstBlockConfig.sweep,
             lambda v, cal, n: FirstBlockCache(threshold=v)),
    Baseline("dbcache", "threshold", DBCacheConfig.threshold, DBCacheConfig.sweep,
             lambda v, cal, n: DBCache(threshold=v, front_blocks=default_front_blocks(n))),
    Baseline("adacache", "threshold_scale", AdaCacheConfig.threshold_scale, AdaCacheConfig.sweep,
             lambda v, cal, n: AdaCache(threshold_scale=v)),
    Baseline("mixcache", "scale", 1.0, MixCacheConfig.sweep, lambda v, cal, n: MixCache(scale=v)),
]}


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise CachepilotError(f"unknown cache method {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


def make_baseline(name: str, value: float | None = None, calibration: dict | None = None, num_blocks: int = 30):
    """A baseline policy at its default knob, or at `value`."""
    b = get_baseline(name)
    return b.build(b.default if value is None else value, calibration, num_blocks)
