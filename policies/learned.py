"""The learned policy: a small MLP from the observation vector (signals + budget) to step-level action logits.

One network serves every budget in its trained range: the budget is part of the observation. At
inference a budget guard masks any action that would take the generation past its budget (step 0 always
computes), so the measured computed fraction never exceeds the budget asked for.

`PolicyNet` has the layout of stable-baselines3's actor (an MLP `body` with tanh, then a linear `head`),
so a distilled network warm-starts PPO and a PPO actor exports to the same file.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cachepilot import checks
from cachepilot.errors import InvalidInputError
from cachepilot.runtime import Action, Signals

from .observation import ObservationSpec
from .step_level import StepLevelPolicy
from .trained_range import TrainedRange, span


class PolicyNet(nn.Module):
    def __init__(self, obs_size: int, num_actions: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        layers, width = [], obs_size
        for size in hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        self.hidden = tuple(int(h) for h in hidden)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_actions)
        self._linears = tuple(layers[::2])  # the body's Linear modules, looked up once (not registered twice)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # the same ops as body + head, without nn.Module call overhead: this runs once per denoising step
        x = obs
        for layer in self._linears:
            x = torch.tanh(F.linear(x, layer.weight, layer.bias))
        return F.linear(x, self.head.weight, self.head.bias)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@functools.lru_cache(maxsize=64)
def _step_costs(actions: tuple[Action, ...], num_blocks: int) -> np.ndarray:
    costs = np.array([a.step_cost(num_blocks) for a in actions])
    costs.setflags(write=False)
    return costs


def budget_mask(actions: Sequence[Action], num_blocks: int, step: int, spent: float, budget: float,
                steps: int) -> np.ndarray:
    """Actions whose cost keeps the generation within `budget` (a fraction of full compute over `steps` steps),
    given `spent` full steps' worth already computed; step 0 may do anything, and the cheapest action is
    always left."""
    costs = _step_costs(tuple(actions), num_blocks)
    if step == 0:
        return np.ones(len(actions), dtype=bool)
    allowed = spent + costs <= budget * steps + 1e-6
    return allowed if allowed.any() else costs <= costs.min()


def within_budget(valid: np.ndarray, actions: Sequence[Action], num_blocks: int, step: int, spent: float,
                  budget: float, steps: int) -> np.ndarray:
    """The valid actions that `budget_mask` allows; all valid ones where it allows none of them."""
    kept = valid & budget_mask(actions, num_blocks, step, spent, budget, steps)
    return kept if kept.any() else valid


def lowest_budget(steps: int) -> float:
    """The least a `steps`-step generation can spend under a learned policy: its first step computes in full."""
    return 1.0 / steps


def masked_argmax(logits: torch.Tensor | np.ndarray, masks: np.ndarray) -> list[int]:
    """The best allowed action per row (first one on ties)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    return np.where(np.asarray(masks, dtype=bool), logits, -np.inf).argmax(-1).tolist()


class LearnedPolicy(StepLevelPolicy):
    """Decides with `net` for a target `budget`; `budget_guard` keeps the measured compute within it. `trained`: the
    step counts and guidance scales it was trained over; a generation outside them is refused at its first decision
    (or runs with a warning, when the range says to extrapolate), as is a budget under what the step count allows
    (`lowest_budget`)."""

    name = "learned"

    def __init__(self, net: PolicyNet, spec: ObservationSpec, actions: Sequence[Action], num_blocks: int,
                 budget: float, budget_guard: bool = True, trained: TrainedRange | None = None):
        super().__init__(actions)
        self.net, self.spec, self.num_blocks = net.eval(), spec, int(num_blocks)
        self.budget, self.budget_guard = checks.budget(budget), budget_guard
        self.trained = trained or TrainedRange()
        if self.trained.steps is not None and not self.trained.extrapolate:
            self._check_budget(self.trained.steps[1])
        self.signals = spec.signals_read
        # the network's weights as numpy arrays, read once: at batch 1 a numpy forward of this small MLP takes a
        # fraction of torch's per-op dispatch time, and it runs once per denoising step
        self._layers = tuple((layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy().copy())
                             for layer in (*net._linears, net.head))

    def observe(self, signals: list[Signals]) -> np.ndarray:
        return np.stack([self.spec.build(s, self.budget) for s in signals])

    def allowed(self, signals: list[Signals], masks: list[np.ndarray]) -> np.ndarray:
        valid = [np.asarray(m, dtype=bool) for m in masks]
        if not self.budget_guard:
            return np.stack(valid)
        return np.stack([within_budget(m, self.actions, self.num_blocks, s.step, s.compute_spent * s.step, self.budget,
                                       s.num_steps) for m, s in zip(valid, signals)])

    def _check_budget(self, steps: int) -> None:
        if self.budget < lowest_budget(steps) - 1e-9:
            raise InvalidInputError(f"budget {self.budget:g} cannot be kept in a {steps}-step generation: its first step "
                                    f"computes in full, {lowest_budget(steps):.3g} of the compute; ask for at least that, "
                                    "or run more steps")

    def check_generation(self, signals: Signals) -> None:
        """Refuse a generation whose step count is unknown (the budget is spread over it), outside the trained ones
        (unless extrapolating), or too short for the budget, and one outside the trained guidance scales."""
        steps = signals.num_steps
        if steps is None:
            raise InvalidInputError("a learned policy needs the generation's step count, and this pipeline does not "
                                    "say it: pass num_inference_steps to apply_cache")
        self.trained.check(steps, signals.guidance)
        self._check_budget(steps)
        if self.trained.guidance is not None and signals.guidance is None:
            raise InvalidInputError(f"this policy was trained at guidance {span(self.trained.guidance)} and this "
                                    "pipeline does not say its own: pass guidance_scale to apply_cache")

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """The network's forward (`PolicyNet.forward`) on the weights read at construction."""
        x = obs
        for weight, bias in self._layers[:-1]:
            x = np.tanh(x @ weight + bias)
        weight, bias = self._layers[-1]
        return x @ weight + bias

    def choose(self, signals, masks):
        self.check_generation(signals[0])
        return masked_argmax(self.logits(self.observe(signals)), self.allowed(signals, masks))
