"""Cache methods by name: their knobs with the paper's defaults, the settings their ablation sweep traces, and how
to build each baseline (from the model's calibration where it needs one). Peers (`evaluation.peers`) share the
description."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from cachepilot.errors import CachepilotError

from .adacache import AdaCache, AdaCacheConfig
from .base import NoCache
from .dbcache import DBCache, DBCacheConfig, default_front_blocks
from .first_block import FirstBlockCache, FirstBlockConfig
from .magcache import MagCache, MagCacheConfig
from .mixcache import MixCache, MixCacheConfig
from .static import StaticCache, StaticConfig
from .taylorseer import TaylorSeerCache, TaylorSeerConfig
from .teacache import TeaCache, TeaCacheConfig
from .uniform import UniformCache, UniformConfig


@dataclass(frozen=True)
class Method:
    """A method run by name. `knob` is its main knob (the one `generate --knob` sets); `defaults` every knob it
    takes, at its default; `sweep` the settings an ablation runs, each naming only the knobs it changes, the
    defaults first, then towards less compute."""

    name: str
    knob: str
    defaults: dict[str, float]
    sweep: tuple[dict[str, float], ...]
    calibration: str | None = None  # the section of the model's calibration it is configured from

    @property
    def default(self) -> float | None:
        return self.defaults.get(self.knob)

    def settings(self, **knobs) -> dict[str, float]:
        """Every knob's value: the defaults with `knobs` over them (an unknown name is an error)."""
        unknown = sorted(set(knobs) - set(self.defaults))
        if unknown:
            takes = ", ".join(self.defaults) or "none"
            raise CachepilotError(f"{self.name} takes the knobs {takes}, not {', '.join(unknown)}")
        return self.defaults | knobs


@dataclass(frozen=True)
class Baseline(Method):
    build: Callable[[dict, dict | None, int], object] = field(default=None, compare=False)  # (settings, calibration,
    #                                                                                    num_blocks) -> policy


def _need(calibration: dict | None, name: str) -> dict:
    """The calibration section a method reads ("teacache", "magcache"), or a clear error saying how to get one."""
    if calibration is None or name.lower() not in calibration:
        raise CachepilotError(f"{name} needs a calibration for this model: run `cachepilot calibrate --model <name>` "
                              "(or pass calibration=published_calibration(<model>) for a model with published constants)")
    return calibration


def _each(knob: str, values) -> tuple[dict[str, float], ...]:
    return tuple({knob: v} for v in values)


BASELINES: dict[str, Baseline] = {b.name: b for b in [
    Baseline("none", "-", {}, ({},), build=lambda s, cal, n: NoCache()),
    Baseline("uniform", "fraction", {"fraction": UniformConfig.fraction, "order": UniformConfig.order},
             tuple({"fraction": f, "order": o} for o in (1, 0, 2) for f in (0.25, 0.6, 0.5, 0.35, 0.2, 0.15)),
             build=lambda s, cal, n: UniformCache(fraction=s["fraction"], order=s["order"])),
    Baseline("static", "interval", {"interval": StaticConfig.interval}, _each("interval", (2, 3, 4, 5, 7)),
             build=lambda s, cal, n: StaticCache(**s)),
    Baseline("teacache", "threshold", {"threshold": TeaCacheConfig.threshold},
             _each("threshold", (0.08, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3)), calibration="teacache",
             build=lambda s, cal, n: TeaCache.from_calibration(_need(cal, "TeaCache"), **s)),
    Baseline("magcache", "threshold", {"threshold": MagCacheConfig.threshold, "max_skip_steps": MagCacheConfig.max_skip_steps},
             (*_each("threshold", (0.12, 0.24, 0.36, 0.6)),  # K = 2 (the paper's slow setting) caps skips at 2 in a row
              *({"threshold": t, "max_skip_steps": k} for k in (4, 6, 10) for t in (0.12, 0.24, 0.6))),
             calibration="magcache",
             build=lambda s, cal, n: MagCache(MagCacheConfig.from_calibration(_need(cal, "MagCache"), **s))),
    Baseline("taylorseer", "interval", {"interval": TaylorSeerConfig.interval, "order": TaylorSeerConfig.order,
                                        "warmup": TaylorSeerConfig.warmup},
             (*({"interval": i, "order": o} for o in (1, 2) for i in (5, 2, 3, 4, 6, 8, 12)),
              {"interval": 4, "warmup": 1}, {"interval": 4, "warmup": 6}),
             build=lambda s, cal, n: TaylorSeerCache(**s)),
    Baseline("first-block", "threshold", {"threshold": FirstBlockConfig.threshold},
             _each("threshold", (0.05, 0.1, 0.2, 0.3, 0.5)), build=lambda s, cal, n: FirstBlockCache(**s)),
    Baseline("dbcache", "threshold", {"threshold": DBCacheConfig.threshold},
             _each("threshold", (0.08, 0.12, 0.2, 0.3, 0.5)),
             build=lambda s, cal, n: DBCache(front_blocks=default_front_blocks(n), **s)),
    Baseline("adacache", "threshold_scale", {"threshold_scale": AdaCacheConfig.threshold_scale},
             _each("threshold_scale", (1.0, 0.25, 0.5, 2.0)), build=lambda s, cal, n: AdaCache(**s)),
    Baseline("mixcache", "scale", {"scale": 1.0}, _each("scale", (1.0, 2.0, 3.0, 5.0)),
             build=lambda s, cal, n: MixCache(**s)),
]}


# Each baseline's typed config and the policy it configures: apply_cache(pipe, TeaCacheConfig(threshold=0.1))
CONFIG_POLICIES: dict[type, type] = {StaticConfig: StaticCache, TeaCacheConfig: TeaCache, MagCacheConfig: MagCache,
                                     TaylorSeerConfig: TaylorSeerCache, FirstBlockConfig: FirstBlockCache,
                                     DBCacheConfig: DBCache, AdaCacheConfig: AdaCache, MixCacheConfig: MixCache,
                                     UniformConfig: UniformCache}


def policy_from_config(config, calibration: dict | None = None):
    """The baseline a typed config describes. The model constants it leaves unset (TeaCache's polynomial,
    MagCache's ratios) come from `calibration`, as they do for a baseline given by name."""
    policy = CONFIG_POLICIES.get(type(config))
    if policy is None:
        raise CachepilotError(f"{type(config).__name__} is not a cache config; use one of "
                              f"{', '.join(c.__name__ for c in CONFIG_POLICIES)}")
    if (isinstance(config, TeaCacheConfig) and config.coefficients is None
            and calibration_covers(calibration, BASELINES["teacache"])):
        config = config.calibrated(calibration)
    if isinstance(config, MagCacheConfig) and not config.mag_ratios:
        record = MagCacheConfig.from_calibration(_need(calibration, "MagCache"))
        config = replace(config, mag_ratios=record.mag_ratios)
    return policy(config)


def is_cache_config(value) -> bool:
    return type(value) in CONFIG_POLICIES


def calibration_covers(calibration: dict | None, method) -> bool:
    """Whether a calibration has what a baseline or peer (anything with a `calibration` section name) reads."""
    return method.calibration is None or (calibration is not None and method.calibration in calibration)


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise CachepilotError(f"unknown cache method {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


def make_baseline(name: str, value: float | None = None, calibration: dict | None = None, num_blocks: int = 30,
                  **knobs):
    """A baseline policy at its defaults, with its main knob at `value` and other knobs by name where given."""
    b = get_baseline(name)
    if value is not None:
        knobs[b.knob] = value
    return b.build(b.settings(**knobs), calibration, num_blocks)
