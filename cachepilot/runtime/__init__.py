"""The cache runtime: one mechanism, hooked into a diffusers transformer, used in training and inference.

Users apply caches with `cachepilot.apply_cache`; `attach_runtime` is the layer under it (a Policy object only).
"""

from .actions import CFG, FULL, STEP, Action, Kind, step_actions
from .api import CacheStackingError, attach_runtime, cache_summary, cached, experts_of, remove_cache, reset_cache
from .engine import CacheRuntime, InvalidActionError
from .ledger import CacheSummary
from .policy import NotAPolicyError, Policy
from .signals import OPTIONAL_SIGNALS, SIGNALS, Signal, Signals, register_signal

__all__ = ["Action", "Kind", "FULL", "STEP", "CFG", "step_actions", "attach_runtime", "cached", "remove_cache", "reset_cache",
           "cache_summary", "CacheRuntime", "CacheSummary", "CacheStackingError", "InvalidActionError", "NotAPolicyError",
           "Policy", "OPTIONAL_SIGNALS", "SIGNALS", "Signal", "Signals", "register_signal"]
