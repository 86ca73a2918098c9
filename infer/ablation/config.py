"""What an ablation runs: its config, the kinds of its entries, one entry per (method, knob), one run's scores."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from cachepilot.evaluation.search import SearchConfig


class Kind(str, Enum):
    """What decides an entry's cache (a str, as stored in results.json and the table)."""

    REFERENCE = "reference"  # no cache: what every entry is scored against
    LEARNED = "learned"  # a learned policy at a budget
    ORACLE = "oracle"  # the searched oracle: per-pair schedules searched with real rollouts
    DP = "dp"  # the segment-error DP oracle
    SCHEDULE = "schedule"  # a uniform schedule
    BASELINE = "baseline"  # a training-free cache of cachepilot's runtime
    PEER = "peer"  # another library's cache (diffusers, cache-dit)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Entry:
    """One point of the ablation: a method at one setting of its knobs (a budget for learned policies, the oracle
    and the uniform schedules): its main knob, and the other knobs the setting changes from their defaults."""

    method: str
    knob: float
    kind: Kind
    knob_name: str
    extra: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.method}@{self.knob:g}" + "".join(f",{name}={value:g}" for name, value in self.extra)

    @property
    def settings(self) -> dict[str, float]:
        return {self.knob_name: self.knob, **dict(self.extra)}

    @property
    def label(self) -> str:
        return ", ".join(f"{name}={value:g}" for name, value in self.settings.items())


def sweep_entries(method, kind: Kind, sweeps: bool) -> list[Entry]:
    """A baseline's or peer's settings as entries: its whole sweep, or its defaults only (the sweep's first). An
    entry names the other knobs where they differ from their defaults."""
    entries = []
    for s in method.sweep if sweeps else method.sweep[:1]:
        s = method.settings(**s)
        extra = tuple(sorted((n, float(v)) for n, v in s.items() if n != method.knob and v != method.defaults[n]))
        entries.append(Entry(method.name, float(s[method.knob]), kind, method.knob, extra))
    return entries


# The uniform FULL/STEP schedule, and the same FULL steps with every reuse forecast: what forecasting alone does
UNIFORM = {"uniform": (0, "step"), "uniform-f1": (1, "step"), "uniform-f2": (2, "step"),
           "uniform-f1-sigma": (1, "sigma"), "uniform-f2-sigma": (2, "sigma")}


@dataclass
class AblationConfig:
    model: str = "toy-wan"
    model_path: str | None = None
    device: str | None = None  # e.g. "cuda"; None: where the pipeline loads (the CPU)
    dtype: str | None = None  # float32, bfloat16 or float16; None: as saved
    options: tuple[tuple[str, object], ...] = ()  # how the pipeline is called: height, width, num_frames, ...
    split: str = "test"
    prompts: tuple[str, ...] | None = None  # instead of a toy-wan split (real models)
    pairs: int = 16  # (prompt, seed) pairs: the split's first prompts, seeds 0..pairs-1
    steps: int = 50
    guidance: float = 5.0
    methods: str = "all"  # or a comma list of baseline / peer names, "oracle", "learned", "learned-<name>"
    budgets: tuple[float, ...] = (0.15, 0.2, 0.25, 0.35, 0.5, 0.6)  # learned policies (within each one's range)
    oracle_budgets: tuple[float, ...] = (0.15, 0.25, 0.35, 0.5)  # the oracles' and the uniform schedules'
    oracle_search: SearchConfig = SearchConfig()
    policies: tuple[str, ...] | None = None  # policy folders; default: every policy-* folder beside the weights
    sweeps: bool = True  # False: each baseline and peer at its default knob only
    gif_pairs: int = 2
    gif_budget: float = 0.35  # each method's point closest to this computed fraction goes into the GIF

    @classmethod
    def quick(cls, **overrides) -> "AblationConfig":
        """A smoke run of every method (2 pairs, default knobs, one budget) for tests and first looks."""
        return replace(cls(pairs=2, budgets=(0.35,), oracle_budgets=(0.35,), sweeps=False, gif_pairs=1,
                           oracle_search=SearchConfig(rounds=2, proposals=2)), **overrides)


@dataclass
class Run:
    """A finished run: per-pair scores and the batch's transformer wall time."""

    entry: Entry
    computed_fraction: list[float]
    psnr: list[float]
    ssim: list[float]
    lpips: list[float] | None
    wall: float
