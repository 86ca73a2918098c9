"""What one CFG branch keeps between transformer calls, per sample of its batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Streams = tuple  # (hidden,) or (hidden, encoder_hidden): what flows between blocks


def index(streams: Streams, idx) -> Streams:
    return tuple(s[idx] for s in streams)


def subtract(a: Streams, b: Streams) -> Streams:
    return tuple(x - y for x, y in zip(a, b))


@dataclass
class BranchState:
    """The branch's kept quantities (`signals.QUANTITIES`; batched tensors, one row per sample), which samples hold
    a value of each, the values of the signals measured when a quantity was refreshed, and the FULL bookkeeping."""

    size: int
    cache: dict[str, Streams] = field(default_factory=dict)
    held: dict[str, list[bool]] = field(default_factory=dict)
    values: dict[str, list[float | None]] = field(default_factory=dict)
    accumulated: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)  # magcache: (ratio, error)
    since_full: list[int | None] = field(default_factory=list)  # calls since the last FULL (None: never computed)
    out_step: list[int] = field(default_factory=list)  # step of the kept cond output, per sample
    steps_seen: set = field(default_factory=set)
    calls: int = 0

    def __post_init__(self):
        self.since_full, self.out_step = [None] * self.size, [-1] * self.size

    def holds(self, name: str, sample: int) -> bool:
        held = self.held.get(name)
        return held is not None and held[sample]

    def put(self, name: str, sample: int, values: Streams) -> None:
        """Keep one sample's value (`values` have one row), allocating the batched tensors on first use.

        A plain row copy: much cheaper than index assignment on this hot path."""
        target = self.cache.get(name)
        if target is None:
            target = self.cache[name] = tuple(torch.zeros((self.size, *v.shape[1:]), dtype=v.dtype, device=v.device)
                                              for v in values)
            self.held[name] = [False] * self.size
        for t, v in zip(target, values):
            t[sample].copy_(v[0])
        self.held[name][sample] = True

    def value(self, signal: str, sample: int) -> float | None:
        values = self.values.get(signal)
        return None if values is None else values[sample]

    def set_value(self, signal: str, sample: int, value: float | None) -> None:
        self.values.setdefault(signal, [None] * self.size)[sample] = value
