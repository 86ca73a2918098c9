"""What a reuse adds back, and its forecast: the kept values of a quantity extrapolated to the call in flight."""

from __future__ import annotations

from .actions import Action, Kind
from .forecast import BASES, extrapolate
from .state import BranchState, Streams

When = tuple  # (step, sigma) of a call


def reused(quantity: str) -> bool:
    """Whether a kept quantity is what a reuse adds back (so a forecast extrapolates it)."""
    return quantity in ("residual", "cfg_diff") or quantity.startswith("tail")


def kept_for(action: Action) -> str:
    """The quantity a reuse adds back: the residual (STEP), a tail (BLOCK_k) or the CFG difference (CFG)."""
    return {Kind.STEP: "residual", Kind.CFG: "cfg_diff"}.get(action.kind) or f"tail{action.k}"


class Forecaster:
    """Forecasts of order up to `order` in time `basis` (step or sigma) from what a branch keeps."""

    def __init__(self, order: int, basis: str, name: str = "policy"):
        if order < 0 or basis not in BASES:
            raise ValueError(f"policy {name!r}: forecast order {order} (>= 0) and basis {basis!r} (one of "
                             f"{', '.join(BASES)})")
        self.order, self.basis = int(order), basis

    def depth(self, name: str) -> int:
        """How many values of a quantity a sample keeps: one more per forecast order for what the reuses add back."""
        return 1 + self.order if reused(name) else 1

    def _time(self, when: When) -> float | None:
        step, sigma = when
        return float(step) if self.basis == "step" else sigma

    def times(self, state: BranchState, name: str, sample: int, order: int, now: When):
        """The times of a kept quantity's last `order` + 1 values and of the call at `now`, where a forecast of that
        order from them is defined (that many values kept, at distinct known times); None where it is not."""
        if not state.holds(name, sample, order + 1):
            return None
        times = [self._time(w) for w in state.times[name][sample][: order + 1]]
        at = self._time(now)
        if at is None or None in times or len(set(times)) != order + 1:
            return None
        return times, at

    def extrapolated(self, state: BranchState, name: str, sample: int, order: int, now: When) -> Streams | None:
        """A kept quantity's forecast of order `order` at `now` (None where `times` has none)."""
        found = self.times(state, name, sample, order, now)
        if found is None:
            return None
        history = [state.get(name, sample, ago) for ago in range(order + 1)]
        return tuple(extrapolate([h[i] for h in history], *found) for i in range(len(history[0])))

    def can_reuse(self, states: list[BranchState], action: Action, sample: int, now: When) -> bool:
        """Every branch in `states` keeps what `action` adds back, with the history its forecast needs."""
        name = kept_for(action)
        if not action.forecast:
            return all(s.holds(name, sample) for s in states)
        return all(self.times(s, name, sample, action.forecast, now) is not None for s in states)

    def added_back(self, state: BranchState, sample: int, action: Action, now: When) -> Streams:
        """What a reuse adds back: the kept value of its quantity, or its forecast at `now`."""
        name = kept_for(action)
        return self.extrapolated(state, name, sample, action.forecast, now) if action.forecast else state.get(name, sample)
