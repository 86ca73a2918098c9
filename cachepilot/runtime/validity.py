"""Which actions a sample may take at a call: what its branches keep, and what the policy's action set allows."""

from __future__ import annotations

from .actions import CFG, FULL, STEP, Action
from .forecaster import Forecaster, When
from .state import BranchState


class Validity:
    """The valid actions of a policy with BLOCK_k at `block_ks` (each also running the `back` trailing blocks),
    probing the first `probe_blocks` blocks (a probing policy reuses blocks only), forecasting as `forecaster` can."""

    def __init__(self, forecaster: Forecaster, block_ks: tuple[int, ...], back: int, probe_blocks: int):
        self.forecaster, self.block_ks, self.back, self.probe = forecaster, block_ks, back, probe_blocks

    def reuses(self, states: list[BranchState], sample: int, now: When) -> list[Action]:
        """STEP and the BLOCK actions, and their forecasts, that `states` can take: a FULL to reuse from, and for a
        forecast of order n, n + 1 of them."""
        plain = [*([] if self.probe else [STEP]),
                 *(Action.block(k, self.back) for k in self.block_ks if k >= max(self.probe, 1))]
        candidates = [a.forecasting(o) for o in range(self.forecaster.order + 1) for a in plain]
        return [a for a in candidates if self.forecaster.can_reuse(states, a, sample, now)]

    def cfg(self, uncond: BranchState, sample: int, now: When) -> list[Action]:
        """CFG and its forecasts that the uncond branch can take (a probing policy takes none)."""
        if self.probe:
            return []
        return [a for a in (CFG.forecasting(o) for o in range(self.forecaster.order + 1))
                if self.forecaster.can_reuse([uncond], a, sample, now)]

    def for_branch(self, branches: dict[str, BranchState], branch: str, sample: int, now: When,
                   cond_computes: bool) -> tuple[Action, ...]:
        """One branch's valid actions; `cond_computes`: the cond branch computed this step or runs in this call
        (what CFG rebuilds the uncond branch from)."""
        state = branches[branch]
        valid = [FULL, *self.reuses([state], sample, now)]
        if branch == "uncond" and cond_computes:
            valid += self.cfg(state, sample, now)
        return tuple(valid)

    def for_step(self, branches: dict[str, BranchState], sample: int, now: When) -> tuple[Action, ...]:
        """The step-level actions a sample may take: a reuse needs what it adds back on both branches, CFG a kept
        (uncond - cond) difference."""
        uncond = branches.get("uncond")
        uncond = uncond if uncond is not None and sample < uncond.size else None
        states = [branches["cond"], *([uncond] if uncond is not None else [])]
        return (FULL, *self.reuses(states, sample, now), *(self.cfg(uncond, sample, now) if uncond is not None else ()))

    @staticmethod
    def within_expert(expert: int, action: Action, valid: tuple[Action, ...]) -> Action:
        """A second expert keeps nothing of the first, so a policy written for one transformer can ask it for more
        history than it has: the same reuse forecast from the history it has, or FULL where it has none."""
        if expert == 0 or action in valid:
            return action
        for order in range(action.forecast - 1, -1, -1) if action.reuses else ():
            if action.forecasting(order) in valid:
                return action.forecasting(order)
        return FULL if valid == (FULL,) else action
