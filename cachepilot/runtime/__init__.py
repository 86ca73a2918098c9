"""The cache runtime: one mechanism, hooked into a diffusers transformer, used in training and inference."""

from .actions import CFG, FULL, STEP, Action, Kind, step_actions
from .api import CacheStackingError, apply_cache, cache_summary, remove_cache, reset_cache
from .engine import InvalidActionError
from .ledger import CacheSummary
from .policy import Policy
from .signals import Signals

__all__ = ["Action", "Kind", "FULL", "STEP", "CFG", "step_actions", "apply_cache", "remove_cache", "reset_cache",
           "cache_summary", "CacheSummary", "CacheStackingError", "InvalidActionError", "Policy", "Signals"]
