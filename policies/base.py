"""Shared policy plumbing: defaults every policy has, and the policy that never caches."""

from __future__ import annotations

from cachepilot.runtime import FULL, Action, Signals


class BasePolicy:
    """Defaults of the runtime's Policy protocol: no probe blocks, no BLOCK_k, cheap signals only."""

    name = "base"
    probe_blocks = 0
    block_ks: tuple[int, ...] = ()
    needs_modulated_input = False
    signals: frozenset[str] | None = None  # optional signals read (None: all); see runtime.policy.OPTIONAL_SIGNALS

    def reset(self) -> None:
        pass

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        raise NotImplementedError


class NoCache(BasePolicy):
    """Always FULL: the uncached model, through the runtime (measures its overhead)."""

    name = "none"
    signals = frozenset()

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        return FULL
