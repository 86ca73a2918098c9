"""The Policy protocol the runtime talks to. Heuristic baselines and learned policies implement it.

The runtime calls `decide` once per transformer call, branch and sample, with the signals of that
moment and the actions that are valid now; it rejects anything else. `probe_blocks` > 0 makes the
runtime run that many leading blocks before asking (First-Block / DB cache need their residual), and
`block_ks` lists the BLOCK_k actions the policy may emit (the runtime caches those tails only).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .actions import Action
from .signals import Signals


@runtime_checkable
class Policy(Protocol):
    name: str
    probe_blocks: int
    block_ks: tuple[int, ...]
    needs_modulated_input: bool

    def reset(self) -> None:
        """Forget per-generation state (a new video starts)."""

    def decide(self, signals: Signals, valid: tuple[Action, ...]) -> Action:
        """Choose one of `valid` for this call, branch and sample."""
