"""The signal meter: measures, at their place in a transformer call, the signals a policy reads.

What each signal means and how it is measured is declared once, in `signals` (SIGNALS, QUANTITIES); the meter
applies the declarations to what a branch keeps (`state.BranchState`).
"""

from __future__ import annotations

import torch

from .forecaster import Forecaster, When
from .signals import INDICATOR, Signal, rel_l1, resolve
from .state import BranchState, Streams


def per_sigma(change: float | None, state: BranchState, name: str, sample: int, sigma: float | None) -> float | None:
    """A change against the kept value of a quantity, per unit of the fall in sigma since that value was kept."""
    if change is None or sigma is None or not state.holds(name, sample):
        return None
    kept = state.times[name][sample][0][1]
    return None if kept is None or kept - sigma <= 0 else change / (kept - sigma)


class SignalMeter:
    """The change, refresh and accumulated signals of a policy reading `wanted` (None: every one), on a model whose
    adapter names its TeaCache indicator."""

    def __init__(self, wanted: frozenset[str] | None, indicator: str):
        self.signals = resolve(wanted)
        self.indicator = indicator
        self.change = [s for s in self.signals if s.source == "change"]
        self.refreshed: dict[str, list[Signal]] = {}
        for s in self.signals:
            if s.source == "refresh":
                self.refreshed.setdefault(s.quantity, []).append(s)
        self.accumulated = [s for s in self.signals if s.source == "accumulated"]
        self.captures = frozenset(self.quantity(s.quantity) for s in self.change)  # per-call quantities to capture
        self.want_mid = "mid_residual" in self.refreshed

    def quantity(self, name: str) -> str:
        """A signal's quantity on this model (the TeaCache indicator is the family's own)."""
        return self.indicator if name == INDICATOR else name

    def measure(self, state: BranchState, sample: int, captured: dict[str, torch.Tensor], row: int,
                sigma: float | None) -> dict:
        """Every measured signal of one row before the decision (at noise level `sigma`): changes of what this call
        captured against what the branch keeps, the values its last refreshes measured, and the accumulated errors."""
        measured = {}
        for signal in self.change:
            name = self.quantity(signal.quantity)
            now = captured.get(name)
            if now is not None and now.shape[0] > row and state.holds(name, sample):
                change = rel_l1(now[row], state.get(name, sample)[0])
                measured[signal.name] = per_sigma(change, state, name, sample, sigma) if signal.rate else change
        for signals in self.refreshed.values():
            for signal in signals:
                measured[signal.name] = state.value(signal.name, sample)
        for signal in self.accumulated:
            ratio = state.value(signal.quantity, sample)
            if ratio is not None and state.since_full[sample] is not None:
                acc_ratio, acc_err = state.accumulated.get(signal.name, {}).get(sample, (1.0, 0.0))
                measured[signal.name] = acc_err + abs(1 - acc_ratio * ratio)
        return measured

    def refresh(self, state: BranchState, name: str, sample: int, value: Streams, gap: int | None, now: When,
                frames: int | None, forecaster: Forecaster) -> None:
        """Keep a new value of a quantity, measuring the signals declared on its refresh first."""
        for signal in self.refreshed.get(name, ()):
            if signal.against == "forecast":
                forecast = forecaster.extrapolated(state, name, sample, 1, now)
                old = forecast[0] if forecast is not None else None
            else:
                old = state.get(name, sample)[0] if state.holds(name, sample) else None
            measured = signal.measure(value[0][0], old, gap, frames)
            state.set_value(signal.name, sample, per_sigma(measured, state, name, sample, now[1]) if signal.rate
                            else measured)
        state.put(name, sample, value, now, forecaster.depth(name))

    def accumulate(self, state: BranchState, sample: int) -> None:
        """One reused call further: each accumulated signal's running product of ratios, and its error."""
        for signal in self.accumulated:
            ratio = state.value(signal.quantity, sample)
            if ratio is not None:
                acc_ratio, acc_err = state.accumulated.setdefault(signal.name, {}).get(sample, (1.0, 0.0))
                acc_ratio *= ratio
                state.accumulated[signal.name][sample] = (acc_ratio, acc_err + abs(1 - acc_ratio))

    def restart(self, state: BranchState, sample: int) -> None:
        """A FULL: the accumulated errors start again."""
        for signal in self.accumulated:
            state.accumulated.setdefault(signal.name, {})[sample] = (1.0, 0.0)
