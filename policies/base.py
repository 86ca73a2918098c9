"""Shared policy plumbing: the defaults of the runtime's Policy protocol, and the policy that never caches."""

from __future__ import annotations

from collections.abc import Iterable

from cachepilot.runtime import FULL, Action, Kind, Signals


def block_layout(actions: Iterable[Action]) -> tuple[tuple[int, ...], int, int]:
    """The runtime's `block_ks`, `back_blocks` and `forecast_order` for a set of actions (their BLOCK_k_b share
    one b)."""
    actions = list(actions)
    blocks = [a for a in actions if a.kind is Kind.BLOCK]
    backs = {a.back for a in blocks}
    if len(backs) > 1:
        raise ValueError(f"BLOCK actions of one policy share one number of trailing blocks; got {sorted(backs)}")
    return tuple(sorted({a.k for a in blocks})), (backs.pop() if backs else 0), max((a.forecast for a in actions), default=0)


class BasePolicy:
    """Defaults of the Policy protocol (`cachepilot.runtime.policy`): decides per branch, one row at a time
    (`decide`), with no probe blocks, no BLOCK_k, no forecasts, and every optional signal computed unless it says
    otherwise."""

    name = "base"
    step_level = False
    probe_blocks = 0
    block_ks: tuple[int, ...] = ()
    back_blocks = 0
    forecast_order = 0  # no forecasts: reuses add back the kept value itself
    forecast_basis = "step"
    signals: frozenset[str] | None = None  # optional signals read (None: all); see runtime.OPTIONAL_SIGNALS

    def reset(self) -> None:
        pass

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        raise NotImplementedError

    def decide_batch(self, signals: list[Signals], valid: list[tuple[Action, ...]]) -> list[Action]:
        return [self.decide(s, v) for s, v in zip(signals, valid)]


class NoCache(BasePolicy):
    """Always FULL: the uncached model, through the runtime (measures its overhead)."""

    name = "none"
    signals = frozenset()

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        return FULL
