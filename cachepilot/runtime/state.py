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
    """The branch's kept quantities (`signals.QUANTITIES`), the values of the signals measured when a quantity was
    refreshed, and the FULL bookkeeping.

    A quantity keeps its last `depth` values per sample (a forecast of order n needs n + 1; most keep one) in a
    ring: `cache[name]` holds tensors shaped (depth, samples, ...), `heads[name][s]` the slot of sample s's latest
    value, and `times[name][s]` the (step, sigma) of each value it holds, most recent first."""

    size: int
    cache: dict[str, Streams] = field(default_factory=dict)
    heads: dict[str, list[int]] = field(default_factory=dict)
    times: dict[str, list[list[tuple[int, float | None]]]] = field(default_factory=dict)
    values: dict[str, list[float | None]] = field(default_factory=dict)
    accumulated: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)  # accumulated signals: (ratio, error)
    since_full: list[int | None] = field(default_factory=list)  # calls since the last FULL (None: never computed)
    out_step: list[int] = field(default_factory=list)  # step of the kept cond output, per sample
    steps_seen: set = field(default_factory=set)
    calls: int = 0
    last_sigma: float | None = None  # sigma of the branch's previous call

    def __post_init__(self):
        self.since_full, self.out_step = [None] * self.size, [-1] * self.size

    def holds(self, name: str, sample: int, count: int = 1) -> bool:
        """Whether the sample has at least `count` values of the quantity."""
        times = self.times.get(name)
        return times is not None and len(times[sample]) >= count

    def put(self, name: str, sample: int, values: Streams, when: tuple[int, float | None] = (0, None),
            depth: int = 1) -> None:
        """Keep one sample's new value (`values` have one row) of a quantity that keeps `depth` values, at `when`
        (step, sigma); the tensors are allocated on first use. A plain row copy: cheap on this hot path."""
        target = self.cache.get(name)
        if target is None:
            target = self.cache[name] = tuple(
                torch.zeros((depth, self.size, *v.shape[1:]), dtype=v.dtype, device=v.device) for v in values)
            self.heads[name], self.times[name] = [depth - 1] * self.size, [[] for _ in range(self.size)]
        depth = target[0].shape[0]
        slot = self.heads[name][sample] = (self.heads[name][sample] + 1) % depth
        for t, v in zip(target, values):
            t[slot, sample].copy_(v[0])
        self.times[name][sample] = [when, *self.times[name][sample][: depth - 1]]

    def full_sigma(self, sample: int) -> float | None:
        """Sigma at the sample's last FULL (when its residual was kept; None: never computed, or no sigma)."""
        return self.times["residual"][sample][0][1] if self.holds("residual", sample) else None

    def get(self, name: str, sample: int, ago: int = 0) -> Streams:
        """The sample's value kept `ago` values before its latest (0: the latest), one tensor per stream."""
        slot = (self.heads[name][sample] - ago) % self.cache[name][0].shape[0]
        return tuple(t[slot, sample] for t in self.cache[name])

    def kept_bytes(self) -> int:
        """Bytes this branch keeps per sample."""
        return sum(t[:, 0].nelement() * t.element_size() for streams in self.cache.values() for t in streams)

    def value(self, signal: str, sample: int) -> float | None:
        values = self.values.get(signal)
        return None if values is None else values[sample]

    def set_value(self, signal: str, sample: int, value: float | None) -> None:
        self.values.setdefault(signal, [None] * self.size)[sample] = value

    def graft(self, name: str, older: "BranchState", ago: int = 1) -> None:
        """Make `older`'s latest value of a quantity this branch's value `ago` values back, for every sample: forks
        a trajectory that computed at every step as if the FULL before its latest had been at another step."""
        depth = self.cache[name][0].shape[0]
        if ago >= depth:
            raise ValueError(f"{name} keeps {depth} values; there is no value {ago} back")
        for sample in range(self.size):
            slot = (self.heads[name][sample] - ago) % depth
            for kept, value in zip(self.cache[name], older.get(name, sample)):
                kept[slot, sample].copy_(value)
            times = self.times[name][sample]
            self.times[name][sample] = [*times[:ago], older.times[name][sample][0], *times[ago + 1:]]

