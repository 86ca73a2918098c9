"""The cache actions, defined once. Every policy (heuristic or learned) emits these and nothing else.

FULL     run every block and refresh the caches of this branch.
STEP     run no block: output = input + the cached residual of the whole block stack (this branch).
CFG      (unconditional branch only) run no block: output = this step's cond output + the cached
         (uncond - cond) difference of the block-stack outputs. As a step-level action (one decision for
         both branches of a step) it means: the cond branch computes, the uncond branch is rebuilt.
BLOCK_k  run blocks 0..k-1, then add the cached residual of blocks k..end (this branch).
BLOCK_k_b  (DBCache's Fn/Bn) run blocks 0..k-1, add the cached residual of blocks k..end-b, then run the
         last b blocks on the result.

Each reuse can instead forecast what it reuses: `<action>_F<n>` (STEP_F1, CFG_F2, BLOCK_2_F1) extrapolates the
kept quantity (residual, tail residual, CFG difference) to this step with the polynomial of degree n through its
last n + 1 values, kept at the branch's FULL steps (`runtime.forecast`). A forecast of order 0 is the plain reuse.

Actions are applied to the hidden states of the block stack (before the output norm / projection).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cachepilot.errors import InvalidInputError


class Kind(enum.Enum):
    FULL = "FULL"
    STEP = "STEP"
    CFG = "CFG"
    BLOCK = "BLOCK"


@dataclass(frozen=True, order=True)
class Action:
    kind: Kind
    k: int = 0  # number of leading blocks that run, for BLOCK only
    back: int = 0  # number of trailing blocks that also run, for BLOCK only (DBCache's Bn)
    forecast: int = 0  # the order of the forecast of what is reused (0: plain reuse); not for FULL

    def __post_init__(self):
        if self.kind is Kind.BLOCK and (self.k < 1 or self.back < 0):
            raise InvalidInputError(f"BLOCK_k_b needs k >= 1 and b >= 0, got k={self.k}, b={self.back}")
        if self.kind is not Kind.BLOCK and (self.k != 0 or self.back != 0):
            raise InvalidInputError(f"{self.kind.value} takes no k")
        if self.forecast < 0 or (self.forecast and self.kind is Kind.FULL):
            raise InvalidInputError(f"a forecast order is >= 0 and only for a reuse, got {self.kind.value} of order {self.forecast}")

    @staticmethod
    def block(k: int, back: int = 0) -> "Action":
        return Action(Kind.BLOCK, int(k), int(back))

    def forecasting(self, order: int) -> "Action":
        """This reuse, forecasting what it reuses with a polynomial of degree `order`."""
        return Action(self.kind, self.k, self.back, int(order))

    @staticmethod
    def parse(text: str) -> "Action":
        """'FULL', 'STEP', 'CFG', 'BLOCK_3' or 'BLOCK_3_1', each reuse optionally with '_F<order>'."""
        if not isinstance(text, str):
            raise InvalidInputError(f"an action is named by a string such as 'BLOCK_2', got {text!r}")
        text = text.strip().upper()
        head, _, order = text.rpartition("_F")
        if head and order.isdigit():
            return Action.parse(head).forecasting(int(order))
        parts = text[6:].split("_") if text.startswith("BLOCK_") else []
        if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
            return Action.block(*map(int, parts))
        try:
            return Action(Kind(text))
        except ValueError:
            raise InvalidInputError(f"unknown action {text!r}; expected FULL, STEP, CFG, BLOCK_<k> or BLOCK_<k>_<b>, a "
                                    "reuse optionally with _F<order>") from None

    def blocks_run(self, num_blocks: int) -> int:
        """How many blocks this action computes."""
        if self.kind is Kind.FULL:
            return num_blocks
        if self.kind is Kind.BLOCK:
            return self.k + self.back
        return 0

    def step_cost(self, num_blocks: int) -> float:
        """Fraction of a full denoising step (both CFG branches) computed when taken at step level."""
        if self.kind is Kind.CFG:  # the cond branch computes, the uncond branch is rebuilt
            return 0.5
        return self.blocks_run(num_blocks) / num_blocks

    def fits(self, num_blocks: int) -> bool:
        """Whether a model with `num_blocks` blocks can take this action: a BLOCK action must leave at least
        one block between its front and back parts to reuse (k + b < num_blocks)."""
        return self.kind is not Kind.BLOCK or self.k + self.back < num_blocks

    def runs_block(self, index: int, num_blocks: int) -> bool:
        if self.kind is Kind.FULL:
            return True
        return self.kind is Kind.BLOCK and (index < self.k or index >= num_blocks - self.back)

    @property
    def reuses(self) -> bool:
        return self.kind is not Kind.FULL

    def for_branch(self, branch: str) -> "Action":
        """What a step-level action does on one branch: CFG computes the cond branch (FULL) and rebuilds the
        uncond one; every other action is the same on both."""
        return FULL if self.kind is Kind.CFG and branch == "cond" else self

    def __str__(self) -> str:
        if self.kind is Kind.BLOCK:
            name = f"BLOCK_{self.k}_{self.back}" if self.back else f"BLOCK_{self.k}"
        else:
            name = self.kind.value
        return f"{name}_F{self.forecast}" if self.forecast else name

    __repr__ = __str__


FULL = Action(Kind.FULL)
STEP = Action(Kind.STEP)
CFG = Action(Kind.CFG)


def step_actions(num_blocks: int, block_ks: tuple[int, ...] = (), forecasts: tuple[int, ...] = ()) -> tuple[Action, ...]:
    """The step-level action set: FULL, STEP, CFG and BLOCK_k for the given k (1 <= k < num_blocks), then each
    reuse again forecasting with each order of `forecasts`."""
    blocks = tuple(Action.block(k) for k in sorted(set(block_ks)))
    for action in blocks:
        if not action.fits(num_blocks):
            raise InvalidInputError(f"block_ks: {action} out of range for a model with {num_blocks} blocks "
                                    f"(1 <= k < {num_blocks})")
    reuses = (STEP, CFG, *blocks)
    return (FULL, *reuses, *(a.forecasting(o) for o in sorted(set(forecasts)) if o > 0 for a in reuses))
