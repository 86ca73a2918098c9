"""The Policy protocol: everything the runtime reads from a policy. Baselines and learned policies implement it
(`cachepilot.policies.base.BasePolicy` holds the defaults).

Once per transformer call the runtime calls `decide_batch(signals, valid)` with one `Signals` per row it asks
about and the actions valid for that row now, and rejects any other answer. Which rows it asks about depends on
`step_level`:
- False: every (branch, sample) row of the call, each branch deciding for itself (TeaCache, MagCache, ...).
- True: the cond rows only, with the step-level actions valid for both branches; the uncond branch of the same
  step then follows the decision (`Action.for_branch`: CFG computes cond and rebuilds uncond). Learned policies
  and the gym environment decide this way.
`probe_blocks` > 0 makes the runtime run that many leading blocks before asking (First-Block / DB cache read
their residual); `block_ks` lists the BLOCK_k the policy may emit and `back_blocks` the trailing blocks every
BLOCK action also runs (the runtime keeps those tails only); `forecast_order` is the highest forecast order it
may emit (the runtime keeps that many more FULL values of what the reuses add back, and no more) and
`forecast_basis` the time its forecasts run in ("step" or "sigma"); `signals` names the optional signals it
reads (`signals.OPTIONAL_SIGNALS`; None: all), so a policy pays only for what it observes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cachepilot.errors import CachepilotError

from .actions import Action
from .signals import Signals


@runtime_checkable
class Policy(Protocol):
    name: str
    step_level: bool
    probe_blocks: int
    block_ks: tuple[int, ...]
    back_blocks: int
    forecast_order: int
    forecast_basis: str
    signals: frozenset[str] | None

    def reset(self) -> None:
        """Forget per-generation state (a new video starts)."""

    def decide_batch(self, signals: list[Signals], valid: list[tuple[Action, ...]]) -> list[Action]:
        """One action per row asked about, each among that row's `valid` actions."""


class NotAPolicyError(CachepilotError):
    pass


def check_policy(policy) -> None:
    """Refuse an object that lacks part of the protocol, naming what is missing."""
    if not isinstance(policy, Policy):
        missing = [name for name in (*Policy.__annotations__, "reset", "decide_batch") if not hasattr(policy, name)]
        raise NotAPolicyError(f"{type(policy).__name__} is not a cache policy: it lacks {', '.join(missing)} "
                              "(subclass cachepilot.policies.base.BasePolicy for the defaults)")
