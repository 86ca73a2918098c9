"""The cache runtime: per transformer call, measure the signals, ask the policy, execute, record the cost.

It is driven by three kinds of diffusers hooks (see hooks.py): one on the transformer (call begin/end,
branch and step from the pipeline's cache context), one on the time embedder where the adapter names
one (the TeaCache indicator), and one on every block (skip, run, or run a sub-batch of samples).

The engine wires its parts together and keeps the generation's bookkeeping: what each branch keeps
(`state.BranchState`), the signal meter (`meter`), which actions are valid (`validity`), what a reuse adds back
and its forecast (`forecaster`), and the executor that runs the blocks (`executor`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from cachepilot.errors import CachepilotError, InvalidInputError
from cachepilot.models.adapters import ModelAdapter

from .actions import FULL, Action
from .executor import Executor
from .forecaster import Forecaster, reused
from .ledger import CacheSummary, Decision
from .meter import SignalMeter
from .policy import Policy, check_policy
from .signals import Signals
from .state import BranchState, Streams
from .validity import Validity


class InvalidActionError(CachepilotError):
    pass


def _fall(before: float | None, sigma: float | None) -> float | None:
    """The fall in sigma from `before` to `sigma` (None where either is unknown)."""
    return None if before is None or sigma is None else before - sigma


@dataclass
class Call:
    """One transformer call in flight."""

    step: int
    num_steps: int | None
    guidance: float | None
    sigma: float | None
    timestep: float | None
    rows: list[tuple[str, int]]  # batch row -> (branch, sample)
    frames: int | None
    started: float
    captured: dict[str, torch.Tensor] = field(default_factory=dict)  # quantities captured before the decision
    h_in: Streams | None = None
    h_at: dict[int, Streams] = field(default_factory=dict)
    plan: list[Action] | None = None
    block_flops: float = 0.0

    @property
    def when(self) -> tuple[int, float | None]:
        """(step, sigma): the time of the call, as kept values and forecasts count it."""
        return self.step, self.sigma


class CacheRuntime:
    def __init__(self, transformer: torch.nn.Module, adapter: ModelAdapter, policy: Policy,
                 num_inference_steps: int | None = None, batched_cfg: bool | None = None, pipe=None,
                 experts: tuple[torch.nn.Module, ...] = (), guidance_scale: float | None = None):
        check_policy(policy)
        self.experts = (transformer, *experts)  # a pipeline's transformers (Wan2.2: high-noise, then low-noise)
        self.transformer = transformer
        self.adapter = adapter
        self.policy = policy
        self.num_blocks = len(adapter.blocks(transformer))
        if any(len(adapter.blocks(t)) != self.num_blocks for t in experts):
            raise ValueError("every expert transformer needs the same number of blocks")
        self.expert = 0  # the expert of the call in flight
        self.block_ks = tuple(sorted({*policy.block_ks, *((policy.probe_blocks,) if policy.probe_blocks else ())}))
        self.back = int(policy.back_blocks)  # trailing blocks every BLOCK action also runs (Bn)
        for action in (Action.block(k, self.back) for k in self.block_ks):
            if not action.fits(self.num_blocks):
                raise InvalidInputError(f"policy {policy.name!r}: {action} out of range for "
                                        f"{type(transformer).__name__} with {self.num_blocks} blocks")
        self.meter = SignalMeter(policy.signals, adapter.teacache_indicator)
        self.forecaster = Forecaster(policy.forecast_order, policy.forecast_basis, policy.name)
        self.validity = Validity(self.forecaster, self.block_ks, self.back, policy.probe_blocks)
        self.executor = Executor(self)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batched_cfg = batched_cfg
        self.pipe = pipe
        self.ffn = adapter.ffn_dim(adapter.blocks(transformer)[0])
        self.call: Call | None = None
        self.reset()

    # ---- generation bookkeeping -------------------------------------------------------------
    def reset(self) -> None:
        """Start a new generation: drop every cache and the cost ledger, reset the policy."""
        # per expert, per branch: what is kept between calls. An expert never reuses what another computed.
        self.expert_branches: list[dict[str, BranchState]] = [{} for _ in self.experts]
        self.branches = self.expert_branches[self.expert]  # the current expert's
        self.step_plan: dict[int, tuple[int, Action]] = {}  # sample -> (step, its step-level action)
        self.spent: dict[int, float] = {}
        self.full: dict[int, float] = {}
        self.summary = CacheSummary(self.policy.name, self.num_blocks)
        self._ended = False
        self._guidance: float | None = None  # the generation's guidance scale, read at its first call
        self.policy.reset()

    def snapshot(self) -> tuple:
        """Every cache and ledger entry of the generation so far (a copy), for `restore`: lets a caller fork
        denoising at a step, explore a continuation, and come back (the oracle)."""
        state = (self.expert_branches, self.step_plan, self.spent, self.full, self._ended)
        return copy.deepcopy(state), len(self.summary.decisions), len(self.summary.wall_times), len(self.summary.full_stats)

    def restore(self, snapshot: tuple) -> None:
        state, decisions, walls, stats = snapshot
        self.expert_branches, self.step_plan, self.spent, self.full, self._ended = copy.deepcopy(state)
        self.branches = self.expert_branches[self.expert]
        del self.summary.decisions[decisions:], self.summary.wall_times[walls:], self.summary.full_stats[stats:]

    def graft_history(self, older: tuple, ago: int = 1) -> None:
        """Take the latest kept values of what reuses add back (residual, tails, CFG difference) from an earlier
        `snapshot` as this generation's values `ago` values back: the oracle measures a forecast from FULL steps
        h and i on a trajectory that computed every step."""
        for current, earlier in zip(self.expert_branches, older[0][0]):
            for name, state in current.items():
                for quantity in state.cache:
                    if reused(quantity) and name in earlier:
                        state.graft(quantity, earlier[name], ago)

    def end_generation(self) -> None:
        """The generation is over: the next call starts a new one (the summary stays until then)."""
        self._ended = True

    def _branch(self, name: str, size: int) -> BranchState:
        state = self.branches.get(name)
        if state is None or state.size != size:
            state = self.branches[name] = BranchState(size)
        return state

    def _rows(self, context_name: str | None, batch: int) -> list[tuple[str, int]]:
        batched = self.adapter.cfg_layout == "batched" and context_name in (None, "cond_uncond")
        if batched:
            cfg = self.batched_cfg
            if cfg is None and self.pipe is not None:
                cfg = getattr(self.pipe, "do_classifier_free_guidance", None)
                if cfg is None:  # CogVideoX's pipeline has no such property: guidance_scale > 1 decides
                    cfg = float(getattr(self.pipe, "_guidance_scale", None) or 1.0) > 1.0
            if cfg:
                half = batch // 2
                return [("uncond", i) for i in range(half)] + [("cond", i) for i in range(half)]
        branch = context_name if context_name in ("cond", "uncond") else "cond"
        return [(branch, i) for i in range(batch)]

    def begin_call(self, context, args: tuple, kwargs: dict, expert: int = 0) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if self._ended:
            self.reset()
        self.expert, self.branches = expert, self.expert_branches[expert]
        rows = self._rows(getattr(context, "name", None), hidden.shape[0])
        branches = sorted({b for b, _ in rows})
        step = getattr(context, "step_index", None)
        if step is None:  # count this branch's calls (per generation)
            step = self.branches[branches[0]].calls if branches[0] in self.branches else 0
        if any(step in self.branches[b].steps_seen for b in branches if b in self.branches) or any(
            step < max(s.steps_seen, default=-1) for states in self.expert_branches for s in states.values()
        ):
            self.reset()  # a step seen again: a new generation started
            self.branches = self.expert_branches[expert]
        for b in branches:
            self._branch(b, sum(1 for r in rows if r[0] == b)).steps_seen.add(step)
        if self._guidance is None:
            self._guidance = self.guidance_scale if self.guidance_scale is not None else self._pipeline_guidance()
        self.call = Call(
            step=step,
            num_steps=getattr(context, "num_inference_steps", None) or self._pipeline_steps() or self.num_inference_steps,
            guidance=self._guidance,
            sigma=getattr(context, "sigma", None),
            timestep=float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else timestep,
            rows=rows,
            frames=self.adapter.latent_frames(self.transformer, args, kwargs) if self.adapter.latent_frames else None,
            started=time.perf_counter(),
        )

    def _pipeline_steps(self) -> int | None:
        """The step count the pipeline set for this generation (diffusers pipelines keep `_num_timesteps`)."""
        steps = getattr(self.pipe, "_num_timesteps", None)
        return steps if isinstance(steps, int) and steps > 0 else None

    def _pipeline_guidance(self) -> float | None:
        """The guidance scale the pipeline set for this generation, read at its first call (CogVideoX's dynamic CFG
        changes it from step to step after that)."""
        scale = getattr(self.pipe, "_guidance_scale", None)
        return float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else None

    def end_call(self) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        for b in {b for b, _ in call.rows}:
            self.branches[b].calls += 1
            self.branches[b].last_sigma = call.sigma
        if call.plan is None:  # the model ran no block at all (should not happen); count a full call
            call.plan = [FULL] * len(call.rows)
        device = next(self.experts[self.expert].parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.summary.wall_times.append(time.perf_counter() - call.started)
        for b in {b for b, _ in call.rows}:
            self.summary.kept_bytes[b if self.expert == 0 else f"{b}@expert{self.expert}"] = self.branches[b].kept_bytes()
        for (branch, sample), action in zip(call.rows, call.plan):
            ran = max(action.blocks_run(self.num_blocks), self.policy.probe_blocks)
            flops, full = ran * call.block_flops, self.num_blocks * call.block_flops
            self.spent[sample] = self.spent.get(sample, 0.0) + flops
            self.full[sample] = self.full.get(sample, 0.0) + full
            self.summary.decisions.append(Decision(call.step, branch, sample, str(action), ran, flops, full, self.expert))

    # ---- decisions ------------------------------------------------------------------------
    def _cond_computes(self, sample: int) -> bool:
        cond = self.branches.get("cond")
        return (cond is not None and sample < cond.size
                and (cond.out_step[sample] == self.call.step or ("cond", sample) in self.call.rows))

    def valid_actions(self, branch: str, sample: int) -> tuple[Action, ...]:
        return self.validity.for_branch(self.branches, branch, sample, self.call.when,
                                        branch == "uncond" and self._cond_computes(sample))

    def valid_step_actions(self, sample: int) -> tuple[Action, ...]:
        return self.validity.for_step(self.branches, sample, self.call.when)

    def _signals(self, row: int) -> Signals:
        call, (branch, sample) = self.call, self.call.rows[row]
        state = self.branches[branch]
        measured = self.meter.measure(state, sample, call.captured, row, call.sigma)
        full = self.full.get(sample, 0.0)
        return Signals(call.step, call.num_steps, branch, sample, sigma=call.sigma, timestep=call.timestep,
                       expert=self.expert, guidance=call.guidance, steps_since_full=state.since_full[sample],
                       sigma_step=_fall(state.last_sigma, call.sigma),
                       sigma_since_full=_fall(state.full_sigma(sample), call.sigma),
                       compute_spent=self.spent.get(sample, 0.0) / full if full else 0.0, **measured)

    def decide(self) -> None:
        """Ask the policy for this call's actions (per row, or per sample at step level), check them, plan."""
        call, policy = self.call, self.policy
        asked = [r for r, (b, _) in enumerate(call.rows) if b == "cond" or not policy.step_level]
        valid = [self.valid_step_actions(call.rows[r][1]) if policy.step_level else self.valid_actions(*call.rows[r])
                 for r in asked]
        choices = list(policy.decide_batch([self._signals(r) for r in asked], valid)) if asked else []
        if len(choices) != len(asked):
            raise InvalidActionError(f"policy {policy.name!r} returned {len(choices)} actions for {len(asked)} rows")
        choices = [self.validity.within_expert(self.expert, action, ok) for action, ok in zip(choices, valid)]
        for row, action, ok in zip(asked, choices, valid):
            if action not in ok:
                self._refuse(action, row, ok)
        if policy.step_level:
            for row, action in zip(asked, choices):
                self.step_plan[call.rows[row][1]] = (call.step, action)
            plan = []
            for row, (branch, sample) in enumerate(call.rows):
                step, action = self.step_plan.get(sample, (None, FULL))  # uncond alone, without a decision: FULL
                action = action.for_branch(branch) if step == call.step else FULL
                if action not in (ok := self.valid_actions(branch, sample)):
                    self._refuse(action, row, ok)
                plan.append(action)
        else:
            plan = choices
        call.plan = plan
        self.executor.keep_captured()

    def _refuse(self, action: Action, row: int, valid) -> None:
        branch, sample = self.call.rows[row]
        raise InvalidActionError(f"policy {self.policy.name!r} chose {action} at step {self.call.step}, branch "
                                 f"{branch!r}, sample {sample}; valid now: {', '.join(map(str, valid))}")

    # ---- execution (the hooks' entry points) ---------------------------------------------------
    def run_block(self, index_: int, block: torch.nn.Module, forward, args: tuple, kwargs: dict):
        return self.executor.run_block(index_, block, forward, args, kwargs)

    def capture_temb(self, output) -> None:
        self.executor.capture_temb(output)
