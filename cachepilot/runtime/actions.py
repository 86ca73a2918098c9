"""The cache actions, defined once. Every policy (heuristic or learned) emits these and nothing else.

FULL     run every block and refresh the caches of this branch.
STEP     run no block: output = input + the cached residual of the whole block stack (this branch).
CFG      (unconditional branch only) run no block: output = this step's cond output + the cached
         (uncond - cond) difference of the block-stack outputs.
BLOCK_k  run blocks 0..k-1, then add the cached residual of blocks k..end (this branch).

Actions are applied to the hidden states of the block stack (before the output norm / projection).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    FULL = "FULL"
    STEP = "STEP"
    CFG = "CFG"
    BLOCK = "BLOCK"


@dataclass(frozen=True, order=True)
class Action:
    kind: Kind
    k: int = 0  # number of leading blocks that run, for BLOCK only

    def __post_init__(self):
        if self.kind is Kind.BLOCK and self.k < 1:
            raise ValueError(f"BLOCK_k needs k >= 1, got {self.k}")
        if self.kind is not Kind.BLOCK and self.k != 0:
            raise ValueError(f"{self.kind.value} takes no k")

    @staticmethod
    def block(k: int) -> "Action":
        return Action(Kind.BLOCK, int(k))

    @staticmethod
    def parse(text: str) -> "Action":
        """'FULL', 'STEP', 'CFG' or 'BLOCK_3'."""
        text = text.strip().upper()
        if text.startswith("BLOCK_") and text[6:].isdigit():
            return Action.block(int(text[6:]))
        try:
            return Action(Kind(text))
        except ValueError:
            raise ValueError(f"unknown action {text!r}; expected FULL, STEP, CFG or BLOCK_<k>") from None

    def blocks_run(self, num_blocks: int) -> int:
        """How many blocks this action computes."""
        if self.kind is Kind.FULL:
            return num_blocks
        if self.kind is Kind.BLOCK:
            return self.k
        return 0

    @property
    def reuses(self) -> bool:
        return self.kind is not Kind.FULL

    def __str__(self) -> str:
        return f"BLOCK_{self.k}" if self.kind is Kind.BLOCK else self.kind.value

    __repr__ = __str__


FULL = Action(Kind.FULL)
STEP = Action(Kind.STEP)
CFG = Action(Kind.CFG)


def step_actions(num_blocks: int, block_ks: tuple[int, ...] = ()) -> tuple[Action, ...]:
    """The step-level action set: FULL, STEP, CFG and BLOCK_k for the given k (1 <= k < num_blocks)."""
    for k in block_ks:
        if not 1 <= k < num_blocks:
            raise ValueError(f"BLOCK_{k} out of range for a model with {num_blocks} blocks (1 <= k < {num_blocks})")
    return (FULL, STEP, CFG, *(Action.block(k) for k in sorted(set(block_ks))))
