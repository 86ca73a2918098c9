"""What a policy observes before each transformer call, per branch and sample. Every signal is declared once, here.

A `Signal` says what a number means and in which unit, how the runtime measures it, whether it costs enough to be
computed only for policies that read it, and how an observation normalises it. A `Quantity` is a per-branch
tensor the runtime keeps between calls: what the actions reuse and what the signals are measured on. Adding a
signal on a kept quantity is one `Signal` entry at the end of this module (or one `register_signal` call from
anywhere); a new quantity also needs the line of the executor that captures it (`Executor.capture`).

How a signal is measured (`Signal.source`):
  call     by the runtime from the call itself (step, noise level, compute spent, ...)
  change   rel-L1 change of a quantity captured this call against its kept value (from the branch's previous
           call, or from its last FULL, as the quantity's `refreshed` says)
  refresh  `measure(new, old, gap, frames)` each time the quantity is refreshed (old: its previous value, or with
           `against="forecast"` what the first-order forecast from its last two values predicted; gap: calls since
           the previous FULL); the value holds until the next refresh
  accumulated  the accumulated error of a per-call ratio signal over the calls since the last FULL: the sum over
           those calls of |1 - the running product of the ratio| (MagCache's error estimate)

All "rel-L1" values are mean|x - x_prev| / mean|x_prev| (dimensionless, >= 0). A value is None where it is not
defined yet (no previous call, no FULL so far) or not computed (an optional signal no policy reads).

A `rate` signal is a change divided by the fall in noise level (sigma) over which it was measured: a change per
unit of sigma. A change between consecutive calls grows with the step size, so its raw value shifts with the step
count (3-7x from 10 to 75 steps on toy-wan), while block 0's modulated input and the block-stack residual change
in proportion to sigma (their rates stay within 10-13% from 10 to 75 steps; benchmarks/signal_scaling.py). The
rates, the noise level and the gaps measured in sigma are what an observation reads to mean the same at every
step count. A rate is None where the pipeline passes no sigma (CogVideoX's DDIM scheduler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


def rel_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """TeaCache / First-Block-Cache relative L1 change: mean|cur - prev| / mean|prev|."""
    prev = previous.float()
    return float((current.float() - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))


def norm_ratio(current: torch.Tensor, previous: torch.Tensor) -> float:
    """MagCache magnitude ratio: mean over tokens of ||r_t||_2 / ||r_prev||_2 (norm over channels)."""
    return float((current.float().norm(dim=-1) / previous.float().norm(dim=-1).clamp_min(1e-12)).mean())


def motion_energy(residual: torch.Tensor, frames: int | None) -> float | None:
    """AdaCache MoReg motion score of one sample's residual (tokens, dim), tokens ordered frame-major:
    ||r_f - r_{f-1}||_1 / (||r_f||_1 + ||r_{f-1}||_1), averaged over consecutive frame pairs."""
    if not frames or frames < 2 or residual.shape[0] % frames:
        return None
    per_frame = residual.float().reshape(frames, residual.shape[0] // frames, -1)
    diff = (per_frame[1:] - per_frame[:-1]).abs().sum(dim=(1, 2))
    total = per_frame[1:].abs().sum(dim=(1, 2)) + per_frame[:-1].abs().sum(dim=(1, 2))
    return float((diff / total.clamp_min(1e-12)).mean())


@dataclass(frozen=True)
class Quantity:
    name: str
    refreshed: str  # "call": every call of the branch; "full": each FULL of the branch; "cfg": each step both compute
    doc: str


QUANTITIES: dict[str, Quantity] = {q.name: q for q in (
    Quantity("temb", "call", "the timestep embedding: the adapter's time embedder output, else the blocks' timestep argument"),
    Quantity("temb_proj", "call", "the blocks' timestep argument (Wan: timestep_proj)"),
    Quantity("modulated", "call", "block 0's modulated input norm1(x) * (1 + scale) + shift"),
    Quantity("probe", "full", "the residual of the first `probe_blocks` blocks"),
    Quantity("residual", "full", "the block-stack residual, output - input (STEP adds it to the input)"),
    Quantity("tail", "full", "per k, the residual of blocks k..end, or up to the trailing blocks (BLOCK_k adds it)"),
    Quantity("mid_residual", "full", "the middle block's residual"),
    Quantity("out", "call", "the cond branch's block-stack output of its latest call (CFG rebuilds uncond from it)"),
    Quantity("cfg_diff", "cfg", "(uncond - cond) block-stack outputs at the last step both branches computed (CFG adds it)"),
)}
INDICATOR = "indicator"  # stands for the TeaCache indicator quantity of the model family (its adapter says which)

# measure(new, old, gap, frames) of a refresh signal: new and old are one sample's tensors, gap the calls between
Measure = Callable[[torch.Tensor, "torch.Tensor | None", "int | None", "int | None"], "float | None"]


def _ratio_per_call(new, old, gap, frames):
    return None if old is None else norm_ratio(new, old) ** (1.0 / gap)


def _rel_l1_per_call(new, old, gap, frames):
    return None if old is None else rel_l1(new, old) / gap


def _rel_l1(new, old, gap, frames):
    return None if old is None else rel_l1(new, old)


def _log_norm_ratio(new, old, gap, frames):
    return None if old is None else math.log(max(norm_ratio(new, old), 1e-12))


def _motion(new, old, gap, frames):
    return motion_energy(new, frames)


@dataclass(frozen=True)
class Signal:
    name: str
    doc: str  # meaning and unit
    source: str = "call"  # call | change | refresh | accumulated (module docstring)
    quantity: str | None = None  # the quantity it is measured on (accumulated: the ratio signal it accumulates)
    measure: Measure | None = None  # refresh signals only
    against: str = "last"  # refresh signals: measure against the last value, or its "forecast" at this call
    rate: bool = False  # divided by the fall in sigma since the value it is measured against (module docstring)
    optional: bool = False  # computed only for policies that read it (it costs a pass over a residual)
    # how an observation normalises it: clip((f(x) - center) / scale), f = log10(x + 1e-4) when log; missing: None
    center: float = 0.0
    scale: float = 1.0
    log: bool = False
    missing: float = 0.0


SIGNALS: dict[str, Signal] = {}
OPTIONAL_SIGNALS: set[str] = set()  # computed only for policies that read them
MEASURED: set[str] = set()  # every signal but the call's context


def register_signal(signal: Signal) -> Signal:
    """Declare a signal: the runtime measures it, policies read it by name, observations can include it."""
    if signal.name in SIGNALS:
        raise ValueError(f"a signal named {signal.name!r} exists already")
    if (signal.source == "call") != hasattr(Signals, signal.name):  # the call's context is a Signals attribute
        raise ValueError(f"{signal.name!r}: only the call's context ({', '.join(Signals.__slots__[:-1])}, "
                         "step_fraction) has source 'call'")
    if signal.source not in ("call", "change", "refresh", "accumulated"):
        raise ValueError(f"unknown signal source {signal.source!r}; expected call, change, refresh or accumulated")
    sources = {"change": {*QUANTITIES, INDICATOR}, "refresh": set(QUANTITIES), "accumulated": set(SIGNALS)}
    if signal.source != "call" and signal.quantity not in sources[signal.source]:
        raise ValueError(f"signal {signal.name!r} is measured on unknown {signal.quantity!r}")
    if (signal.source == "refresh") != (signal.measure is not None):
        raise ValueError(f"signal {signal.name!r}: a measure goes with source 'refresh', and only there")
    if signal.against not in ("last", "forecast") or (signal.against != "last" and signal.source != "refresh"):
        raise ValueError(f"signal {signal.name!r}: against is 'last', or 'forecast' for a refresh signal")
    if signal.rate and (signal.source not in ("change", "refresh") or signal.against != "last"):
        raise ValueError(f"signal {signal.name!r}: a rate is a change or refresh signal measured against the last value")
    SIGNALS[signal.name] = signal
    if signal.optional:
        OPTIONAL_SIGNALS.add(signal.name)
    if signal.source != "call":
        MEASURED.add(signal.name)
    return signal


def resolve(wanted: frozenset[str] | None) -> tuple[Signal, ...]:
    """The measured signals a runtime computes for a policy reading `wanted` (None: every one): all the cheap
    ones, the optional ones it reads, and what those depend on."""
    names = OPTIONAL_SIGNALS if wanted is None else frozenset(wanted)
    unknown = names - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; known: {', '.join(SIGNALS)}")
    names = {n for n in MEASURED if not SIGNALS[n].optional} | (names & MEASURED)
    names |= {SIGNALS[n].quantity for n in names if SIGNALS[n].source == "accumulated"}
    return tuple(s for n, s in SIGNALS.items() if n in names)


# The call's context beyond step, step count, branch and sample, with the value it has where it is not given
CONTEXT = {"sigma": None, "timestep": None, "steps_since_full": None, "compute_spent": 0.0, "expert": 0, "guidance": None,
           "sigma_step": None, "sigma_since_full": None}


class Signals:
    """One row's signals: the call's context as attributes, and every measured signal by its name (None where
    not measured). Units and meaning: `SIGNALS`."""

    __slots__ = ("step", "num_steps", "branch", "sample", "sigma", "timestep", "steps_since_full", "compute_spent",
                 "expert", "guidance", "sigma_step", "sigma_since_full", "measured")

    def __init__(self, step: int, num_steps: int | None, branch: str, sample: int, **values: float | None):
        """`values`: the rest of the call's context (`CONTEXT`, with its defaults) and the measured signals."""
        unknown = set(values) - MEASURED - set(CONTEXT)
        if unknown:
            raise TypeError(f"unknown signals {sorted(unknown)}; context: {', '.join(CONTEXT)}; measured signals: "
                            f"{', '.join(sorted(MEASURED))}")
        self.step, self.num_steps, self.branch, self.sample = step, num_steps, branch, sample
        for name, default in CONTEXT.items():  # guidance: the generation's CFG scale, where it is known
            setattr(self, name, values.pop(name, default))
        self.measured = values

    def __getattr__(self, name: str):  # reached only for names that are not context attributes
        if name in MEASURED:
            return self.measured.get(name)
        raise AttributeError(f"Signals has no signal {name!r}")

    @property
    def step_fraction(self) -> float | None:
        """Normalised step in [0, 1]."""
        if not self.num_steps or self.num_steps < 2:
            return None
        return self.step / (self.num_steps - 1)

    def as_dict(self) -> dict:
        context = {name: getattr(self, name) for name in self.__slots__ if name != "measured"}
        return context | {"step_fraction": self.step_fraction} | {name: self.measured.get(name) for name in SIGNALS
                                                                    if name in MEASURED}

    def __eq__(self, other) -> bool:
        return isinstance(other, Signals) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items() if v is not None)
        return f"Signals({shown})"


_REL = dict(center=-2.0, scale=2.0, log=True, missing=-1.0)  # rel-L1 spans decades: 1e-4 .. 1 maps to -1 .. 1
_RATE = dict(center=0.0, scale=1.5, log=True, missing=-1.0)  # rel-L1 per unit sigma: about 0.05 .. 20 on toy-wan
for _signal in (
    Signal("step_fraction", "denoising step / (steps - 1), in [0, 1]", center=0.5, scale=0.5),
    Signal("sigma", "noise level of this step (flow-matching sigma), when the pipeline passes it", center=0.5, scale=0.5),
    Signal("steps_since_full", "calls of this branch since its last FULL (None: never computed)", scale=5.0, missing=-1.0),
    Signal("compute_spent", "fraction of full compute spent so far in this generation (this sample, both branches)",
           center=0.5, scale=0.5),
    Signal("sigma_step", "fall in sigma from this branch's previous call to this one (the step size in noise level)",
           center=0.05, scale=0.05),
    Signal("sigma_since_full", "fall in sigma since this branch's last FULL (None: never computed)", center=0.2,
           scale=0.2, missing=-1.0),
    Signal("guidance", "the generation's classifier-free guidance scale, where the pipeline gives it", center=5.0,
           scale=3.0),
    Signal("expert", "which of the pipeline's transformers runs this call (0; Wan2.2: 0 high noise, 1 low noise)"),
    Signal("temb_rel_l1", "change of the timestep embedding vs this branch's previous call", "change", "temb", **_REL),
    Signal("temb_proj_rel_l1", "change of the blocks' timestep argument vs this branch's previous call (TeaCache's "
           "ret-steps indicator on Wan)", "change", "temb_proj", **_REL),
    Signal("modulated_rel_l1", "change of block 0's modulated input vs this branch's previous call", "change",
           "modulated", optional=True, **_REL),
    Signal("indicator_rel_l1", "change of TeaCache's indicator for this family (the timestep embedding, or block 0's "
           "modulated input)", "change", INDICATOR, **_REL),
    Signal("probe_rel_l1", "change of the probe blocks' residual vs its value at the last FULL (First-Block / DB "
           "cache)", "change", "probe", **_REL),
    Signal("residual_norm_ratio", "||r|| ratio between the last two FULL residuals, per call in between (MagCache)",
           "refresh", "residual", _ratio_per_call, optional=True, center=1.0, scale=0.1),
    Signal("residual_rel_l1", "rel-L1 change of the block-stack residual between the last two FULLs, per call",
           "refresh", "residual", _rel_l1_per_call, optional=True, **_REL),
    Signal("forecast_rel_l1", "rel-L1 error of the first-order forecast of the block-stack residual (the line "
           "through the two FULLs before) against the residual computed at the last FULL", "refresh", "residual",
           _rel_l1, optional=True, against="forecast", **_REL),
    Signal("motion_energy", "MoReg score of the last FULL residual (0 = static, larger = more motion; AdaCache)",
           "refresh", "residual", _motion, optional=True, center=0.5, scale=0.5),
    Signal("mid_block_change", "rel-L1 change of the middle block's residual between the last two FULLs, per call "
           "(AdaCache's distance)", "refresh", "mid_residual", _rel_l1_per_call, optional=True, **_REL),
    Signal("cfg_diff_drift", "rel-L1 change between the last two kept (uncond - cond) differences", "refresh",
           "cfg_diff", _rel_l1, optional=True, **_REL),
    Signal("modulated_rate", "modulated_rel_l1 per unit of sigma since this branch's previous call", "change",
           "modulated", optional=True, rate=True, **_RATE),
    Signal("residual_rate", "rel-L1 change of the block-stack residual between the last two FULLs, per unit of sigma "
           "between them", "refresh", "residual", _rel_l1, optional=True, rate=True, **_RATE),
    Signal("residual_norm_rate", "log of the ||r|| ratio between the last two FULL residuals, per unit of sigma "
           "between them (MagCache's ratio, step-free)", "refresh", "residual", _log_norm_ratio, optional=True,
           rate=True, center=0.0, scale=2.0),
    Signal("cfg_diff_rate", "rel-L1 change between the last two kept (uncond - cond) differences, per unit of sigma "
           "between them", "refresh", "cfg_diff", _rel_l1, optional=True, rate=True, **_RATE),
    Signal("mag_accumulated_error", "sum over calls since the last FULL of |1 - product of residual_norm_ratio| "
           "(MagCache's error estimate)", "accumulated", "residual_norm_ratio", optional=True, **_REL),
):
    register_signal(_signal)
