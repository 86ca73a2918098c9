"""The Policy protocol the runtime talks to. Heuristic baselines and learned policies implement it.

The runtime calls `decide` once per transformer call, branch and sample, with the signals of that
moment and the actions that are valid now; it rejects anything else. `probe_blocks` > 0 makes the
runtime run that many leading blocks before asking (First-Block / DB cache need their residual), and
`block_ks` lists the BLOCK_k actions the policy may emit (the runtime caches those tails only).
`signals` names the optional, costlier signals it reads (OPTIONAL_SIGNALS; None = all of them); the
runtime computes only those, so a policy pays only for what it observes.

A policy may also define `decide_batch(signals, valid) -> list[Action]`: the runtime then asks once per
call with every row's signals (a network decides a batch in one forward; the environment hands the
whole batch to the agent). Rows are (branch, sample) pairs in batch order.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .actions import Action
from .signals import Signals

# Signals computed from the residuals at each FULL call; a policy that reads none of them skips that work.
OPTIONAL_SIGNALS = frozenset({"residual_norm_ratio", "mag_accumulated_error", "residual_rel_l1", "motion_energy",
                              "mid_block_change", "cfg_diff_drift"})


@runtime_checkable
class Policy(Protocol):
    name: str
    probe_blocks: int
    block_ks: tuple[int, ...]
    needs_modulated_input: bool
    signals: frozenset[str] | None

    def reset(self) -> None:
        """Forget per-generation state (a new video starts)."""

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        """Choose one of `valid` for this call, branch and sample."""
