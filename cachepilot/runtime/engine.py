"""The cache runtime: per transformer call, compute signals, ask the policy, execute, record the cost.

It is driven by three kinds of diffusers hooks (see hooks.py): one on the transformer (call begin/end,
branch and step from the pipeline's cache context), one on the time embedder where the adapter names
one (the TeaCache indicator), and one on every block (skip, run, or run a sub-batch of samples).
Blocks are never reimplemented: a block that runs is the model's own forward with the model's own
arguments, which is why FULL is bit-identical to the uncached transformer.

What the runtime keeps and measures is declared in `signals` (QUANTITIES, SIGNALS); this module captures the
quantities at their place in the call and applies the declarations.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from cachepilot.errors import CachepilotError, InvalidInputError
from cachepilot.models.adapters import ModelAdapter

from .actions import CFG, FULL, STEP, Action, Kind
from .forecast import BASES, extrapolate
from .ledger import CacheSummary, Decision
from .policy import Policy, check_policy
from .signals import INDICATOR, QUANTITIES, Signal, Signals, rel_l1, resolve
from .state import BranchState, Streams, index, subtract


class InvalidActionError(CachepilotError):
    pass


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
        self.mid_block = self.num_blocks // 2  # the middle block whose residual is the quantity "mid_residual"
        self.signals = resolve(policy.signals)
        self.change_signals = [s for s in self.signals if s.source == "change"]
        self.refresh_signals: dict[str, list[Signal]] = {}
        for s in self.signals:
            if s.source == "refresh":
                self.refresh_signals.setdefault(s.quantity, []).append(s)
        self.magcache_signals = [s for s in self.signals if s.source == "magcache"]
        self.captures = frozenset(self._quantity(s.quantity) for s in self.change_signals)
        self.want_mid = "mid_residual" in self.refresh_signals
        self.block_ks = tuple(sorted({*policy.block_ks, *((policy.probe_blocks,) if policy.probe_blocks else ())}))
        self.back = int(policy.back_blocks)  # trailing blocks every BLOCK action also runs (Bn)
        for action in (Action.block(k, self.back) for k in self.block_ks):
            if not action.fits(self.num_blocks):
                raise InvalidInputError(f"policy {policy.name!r}: {action} out of range for "
                                        f"{type(transformer).__name__} with {self.num_blocks} blocks")
        self.back_start = self.num_blocks - self.back  # first trailing block (== num_blocks when back == 0)
        self.forecast_order = int(policy.forecast_order)  # the residuals, tails and CFG difference keep this many more
        self.forecast_basis = policy.forecast_basis
        if self.forecast_order < 0 or self.forecast_basis not in BASES:
            raise ValueError(f"policy {policy.name!r}: forecast order {self.forecast_order} (>= 0) and basis "
                             f"{self.forecast_basis!r} (one of {', '.join(BASES)})")
        self.capture_at = frozenset(self.block_ks) | ({self.back_start} if self.back else frozenset())
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batched_cfg = batched_cfg
        self.pipe = pipe
        self._ffn = adapter.ffn_dim(adapter.blocks(transformer)[0])
        self.call: Call | None = None
        self.reset()

    def _quantity(self, name: str) -> str:
        """A signal's quantity on this model (the TeaCache indicator is the family's own)."""
        return self.adapter.teacache_indicator if name == INDICATOR else name

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
                    if _reused(quantity) and name in earlier:
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

    # ---- what is valid --------------------------------------------------------------------
    @staticmethod
    def _kept_for(action: Action) -> str:
        """The quantity a reuse adds back: the residual (STEP), a tail (BLOCK_k) or the CFG difference (CFG)."""
        return {Kind.STEP: "residual", Kind.CFG: "cfg_diff"}.get(action.kind) or f"tail{action.k}"

    def _depth(self, name: str) -> int:
        """How many values of a quantity a sample keeps: one more per forecast order for what the reuses add back."""
        return 1 + self.forecast_order if _reused(name) else 1

    def _time(self, when: tuple[int, float | None]) -> float | None:
        step, sigma = when
        return float(step) if self.forecast_basis == "step" else sigma

    def _can_reuse(self, states: list[BranchState], action: Action, sample: int) -> bool:
        """Every branch in `states` keeps what `action` adds back, with the history its forecast needs."""
        name = self._kept_for(action)
        if not action.forecast:
            return all(s.holds(name, sample) for s in states)
        return all(self._forecast_times(s, name, sample, action.forecast) is not None for s in states)

    def _reuses(self, states: list[BranchState], sample: int) -> list[Action]:
        """STEP and the BLOCK actions (a probing policy reuses blocks only), and their forecasts, that `states` can
        take: a FULL to reuse from, and for a forecast of order n, n + 1 of them."""
        probe = self.policy.probe_blocks
        plain = [*([] if probe else [STEP]), *(Action.block(k, self.back) for k in self.block_ks if k >= max(probe, 1))]
        candidates = [a.forecasting(o) for o in range(self.forecast_order + 1) for a in plain]
        return [a for a in candidates if self._can_reuse(states, a, sample)]

    def _cfg(self, uncond: BranchState, sample: int) -> list[Action]:
        """CFG and its forecasts that the uncond branch can take (a probing policy takes none)."""
        if self.policy.probe_blocks:
            return []
        return [a for a in (CFG.forecasting(o) for o in range(self.forecast_order + 1))
                if self._can_reuse([uncond], a, sample)]

    def valid_actions(self, branch: str, sample: int) -> tuple[Action, ...]:
        state = self.branches[branch]
        valid = [FULL, *self._reuses([state], sample)]
        cond = self.branches.get("cond")
        if (branch == "uncond" and cond is not None and sample < cond.size
                and (cond.out_step[sample] == self.call.step or ("cond", sample) in self.call.rows)):
            valid += self._cfg(state, sample)
        return tuple(valid)

    def valid_step_actions(self, sample: int) -> tuple[Action, ...]:
        """The step-level actions this sample may take at this step: a reuse needs what it adds back on both
        branches, CFG a kept (uncond - cond) difference."""
        uncond = self.branches.get("uncond")
        uncond = uncond if uncond is not None and sample < uncond.size else None
        states = [self.branches["cond"], *([uncond] if uncond is not None else [])]
        return (FULL, *self._reuses(states, sample), *(self._cfg(uncond, sample) if uncond is not None else ()))

    # ---- decisions ------------------------------------------------------------------------
    def _signals(self, row: int) -> Signals:
        call, (branch, sample) = self.call, self.call.rows[row]
        state = self.branches[branch]
        measured = {}
        for signal in self.change_signals:
            name = self._quantity(signal.quantity)
            now = call.captured.get(name)
            if now is not None and now.shape[0] > row and state.holds(name, sample):
                measured[signal.name] = rel_l1(now[row], state.get(name, sample)[0])
        for signals in self.refresh_signals.values():
            for signal in signals:
                measured[signal.name] = state.value(signal.name, sample)
        for signal in self.magcache_signals:
            ratio = state.value(signal.quantity, sample)
            if ratio is not None and state.since_full[sample] is not None:
                acc_ratio, acc_err = state.accumulated.get(signal.name, {}).get(sample, (1.0, 0.0))
                measured[signal.name] = acc_err + abs(1 - acc_ratio * ratio)
        full = self.full.get(sample, 0.0)
        return Signals(call.step, call.num_steps, branch, sample, sigma=call.sigma, timestep=call.timestep, expert=self.expert,
                       guidance=call.guidance,
                       steps_since_full=state.since_full[sample],
                       compute_spent=self.spent.get(sample, 0.0) / full if full else 0.0, **measured)

    def _decide(self) -> None:
        call, policy = self.call, self.policy
        asked = [r for r, (b, _) in enumerate(call.rows) if b == "cond" or not policy.step_level]
        valid = [self.valid_step_actions(call.rows[r][1]) if policy.step_level else self.valid_actions(*call.rows[r])
                 for r in asked]
        choices = list(policy.decide_batch([self._signals(r) for r in asked], valid)) if asked else []
        if len(choices) != len(asked):
            raise InvalidActionError(f"policy {policy.name!r} returned {len(choices)} actions for {len(asked)} rows")
        choices = [self._within_expert(action, ok) for action, ok in zip(choices, valid)]
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
        for row, ((branch, sample), action) in enumerate(zip(call.rows, plan)):
            state = self.branches[branch]
            for name, value in call.captured.items():  # per-call quantities: kept every call, or at each FULL
                if QUANTITIES[name].refreshed == "call" or action.kind is Kind.FULL:
                    self._refresh(state, name, sample, (value[row : row + 1],), None)
        call.plan = plan

    def _within_expert(self, action: Action, valid: tuple[Action, ...]) -> Action:
        """A second expert keeps nothing of the first, so a policy written for one transformer can ask it for more
        history than it has: the same reuse forecast from the history it has, or FULL where it has none."""
        if self.expert == 0 or action in valid:
            return action
        for order in range(action.forecast - 1, -1, -1) if action.reuses else ():
            if action.forecasting(order) in valid:
                return action.forecasting(order)
        return FULL if valid == (FULL,) else action

    def _refuse(self, action: Action, row: int, valid) -> None:
        branch, sample = self.call.rows[row]
        raise InvalidActionError(f"policy {self.policy.name!r} chose {action} at step {self.call.step}, branch "
                                 f"{branch!r}, sample {sample}; valid now: {', '.join(map(str, valid))}")

    def _refresh(self, state: BranchState, name: str, sample: int, value: Streams, gap: int | None) -> None:
        """Keep a new value of a quantity, measuring the signals declared on its refresh first."""
        for signal in self.refresh_signals.get(name, ()):
            if signal.against == "forecast":
                forecast = self._extrapolated(state, name, sample, 1)
                old = forecast[0] if forecast is not None else None
            else:
                old = state.get(name, sample)[0] if state.holds(name, sample) else None
            state.set_value(signal.name, sample, signal.measure(value[0][0], old, gap, self.call.frames))
        state.put(name, sample, value, (self.call.step, self.call.sigma), self._depth(name))

    def _forecast_times(self, state: BranchState, name: str, sample: int, order: int) -> tuple[list[float], float] | None:
        """The times of a kept quantity's last `order` + 1 values and of this call, where a forecast of that order
        from them is defined (that many values kept, at distinct known times); None where it is not."""
        if not state.holds(name, sample, order + 1):
            return None
        times = [self._time(w) for w in state.times[name][sample][: order + 1]]
        at = self._time((self.call.step, self.call.sigma))
        if at is None or None in times or len(set(times)) != order + 1:
            return None
        return times, at

    def _extrapolated(self, state: BranchState, name: str, sample: int, order: int) -> Streams | None:
        """A kept quantity's forecast of order `order` at this call (None where `_forecast_times` has none)."""
        found = self._forecast_times(state, name, sample, order)
        if found is None:
            return None
        history = [state.get(name, sample, ago) for ago in range(order + 1)]
        return tuple(extrapolate([h[i] for h in history], *found) for i in range(len(history[0])))

    def _added_back(self, state: BranchState, sample: int, action: Action) -> Streams:
        """What a reuse adds back: the kept value of its quantity, or its forecast at this step."""
        name = self._kept_for(action)
        return self._extrapolated(state, name, sample, action.forecast) if action.forecast else state.get(name, sample)

    # ---- execution ------------------------------------------------------------------------
    def _capture(self, block: torch.nn.Module, args: tuple, kwargs: dict, hidden: torch.Tensor) -> None:
        """Block 0's inputs: the per-call quantities its signals compare (`signals.QUANTITIES`)."""
        call, adapter = self.call, self.adapter
        temb = adapter.temb(args, kwargs)  # the block's timestep-embedding argument (Wan: timestep_proj)
        if temb is not None and temb.shape[0] == hidden.shape[0]:
            temb = temb.detach().reshape(temb.shape[0], -1)
            call.captured["temb_proj"] = temb
            call.captured.setdefault("temb", temb)  # no time embedder hook: the block argument is the embedding
        if "modulated" in self.captures and adapter.modulated_input is not None:
            call.captured["modulated"] = adapter.modulated_input(block, args, kwargs).detach()

    def run_block(self, index_: int, block: torch.nn.Module, forward, args: tuple, kwargs: dict):
        call = self.call
        if call is None:  # a block called outside a transformer forward: leave it alone
            return forward(*args, **kwargs)
        adapter = self.adapter
        hidden, encoder = adapter.hidden(args, kwargs), adapter.encoder(args, kwargs)
        current: Streams = (hidden, encoder) if adapter.returns_encoder else (hidden,)
        if index_ == 0:
            call.h_in = current
            if call.block_flops == 0.0:
                text = encoder.shape[1] if encoder is not None else 0
                call.block_flops = adapter.block_flops(hidden.shape[1], text, hidden.shape[-1], self._ffn)
            self._capture(block, args, kwargs, hidden)
        if index_ == self.policy.probe_blocks:
            if self.policy.probe_blocks:
                call.captured["probe"] = (current[0] - call.h_in[0]).detach()
            self._decide()
        if index_ in self.capture_at or (self.want_mid and index_ in (self.mid_block, self.mid_block + 1)):
            call.h_at[index_] = current
        if self.back and index_ == self.back_start and call.plan is not None:
            args, kwargs, current = self._add_middle(args, kwargs, current)
        out = self._run(index_, forward, args, kwargs, current)
        if self.want_mid and index_ == self.mid_block == self.num_blocks - 1:  # one block: mid block is the last
            call.h_at[index_ + 1] = out if isinstance(out, tuple) else (out,)
        if index_ == self.num_blocks - 1:
            out = self._finish(out if isinstance(out, tuple) else (out,))
            return out if adapter.returns_encoder else out[0]
        return out

    def _add_middle(self, args: tuple, kwargs: dict, current: Streams):
        """Before the trailing blocks: rows doing BLOCK_k_b get the kept residual of blocks k..end-b added."""
        call = self.call
        rows = [r for r, a in enumerate(call.plan) if a.kind is Kind.BLOCK]
        if not rows:
            return args, kwargs, current
        current = tuple(c.clone() for c in current)
        for row in rows:
            branch, sample = call.rows[row]
            for c, t in zip(current, self._added_back(self.branches[branch], sample, call.plan[row])):
                c[row] = c[row] + t
        args, kwargs = self.adapter.with_streams(args, kwargs, current)
        return args, kwargs, current

    def _run(self, index_: int, forward, args: tuple, kwargs: dict, current: Streams):
        plan = self.call.plan
        if plan is None:  # probe blocks before the decision: everyone runs
            return forward(*args, **kwargs)
        runs = [a.runs_block(index_, self.num_blocks) for a in plan]
        if all(runs):
            return forward(*args, **kwargs)
        passthrough = current if self.adapter.returns_encoder else current[0]
        if not any(runs):
            return passthrough
        idx = torch.tensor([i for i, r in enumerate(runs) if r], device=current[0].device)
        batch = current[0].shape[0]

        def pick(x):  # slice every per-sample tensor argument, also inside tuples (rotary (cos, sin))
            if isinstance(x, (tuple, list)):
                return type(x)(pick(v) for v in x)
            return x.index_select(0, idx) if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == batch else x

        sub = forward(*[pick(a) for a in args], **{k: pick(v) for k, v in kwargs.items()})
        sub = sub if isinstance(sub, tuple) else (sub,)
        merged = tuple(c.index_copy(0, idx, s) for c, s in zip(current, sub))
        return merged if self.adapter.returns_encoder else merged[0]

    def _finish(self, out: Streams) -> Streams:
        """After the last block: rebuild reused rows from the kept quantities, refresh them from FULL rows."""
        call = self.call
        out = tuple(o.clone() if any(a.reuses for a in call.plan) else o for o in out)
        order = sorted(range(len(call.rows)), key=lambda r: call.rows[r][0] != "cond")  # cond rows first (CFG reads them)
        for row in order:
            branch, sample = call.rows[row]
            state, action = self.branches[branch], call.plan[row]
            if action.kind is Kind.FULL:
                self._store_full(state, row, sample, out)
            elif action.kind is Kind.CFG:
                cond_out = self.branches["cond"].get("out", sample)
                for o, c, d in zip(out, cond_out, self._added_back(state, sample, action)):
                    o[row] = c + d
            elif not action.back:  # STEP, BLOCK_k (BLOCK_k_b added its middle before the trailing blocks)
                for o, t in zip(out, self._added_back(state, sample, action)):
                    o[row] = o[row] + t
            if action.kind is not Kind.FULL and state.since_full[sample] is not None:
                state.since_full[sample] += 1
                self._accumulate(state, sample)
            if branch == "cond":  # only the cond output is ever reused (CFG, and the CFG difference)
                self._refresh(state, "out", sample, index(out, slice(row, row + 1)), None)
                state.out_step[sample] = call.step
            elif action.kind is Kind.FULL:
                self._store_diff(state, sample, row, out)
        return out

    def _accumulate(self, state: BranchState, sample: int) -> None:
        """MagCache's running product of ratios and its error, one reused call further."""
        for signal in self.magcache_signals:
            ratio = state.value(signal.quantity, sample)
            if ratio is not None:
                acc_ratio, acc_err = state.accumulated.setdefault(signal.name, {}).get(sample, (1.0, 0.0))
                acc_ratio *= ratio
                state.accumulated[signal.name][sample] = (acc_ratio, acc_err + abs(1 - acc_ratio))

    def _store_full(self, state: BranchState, row: int, sample: int, out: Streams) -> None:
        call = self.call
        residual = subtract(index(out, slice(row, row + 1)), index(call.h_in, slice(row, row + 1)))
        # calls since the previous FULL of this sample, counting this one (None: this is its first FULL)
        gap = state.since_full[sample] + 1 if state.holds("residual", sample) and state.since_full[sample] is not None else None
        if self.want_mid:
            after_mid = call.h_at.get(self.mid_block + 1, out)
            mid = (after_mid[0][row] - call.h_at[self.mid_block][0][row]).unsqueeze(0)
            self._refresh(state, "mid_residual", sample, (mid,), gap)
        self._refresh(state, "residual", sample, residual, gap)
        end = call.h_at[self.back_start] if self.back else out  # the reused segment ends where trailing blocks begin
        for k in self.block_ks:
            tail = subtract(index(end, slice(row, row + 1)), index(call.h_at[k], slice(row, row + 1)))
            state.put(f"tail{k}", sample, tail, (call.step, call.sigma), self._depth(f"tail{k}"))
        state.since_full[sample] = 0
        for signal in self.magcache_signals:
            state.accumulated.setdefault(signal.name, {})[sample] = (1.0, 0.0)
        self.summary.full_stats.append({"step": call.step, "branch": call.rows[row][0], "sample": sample}
                                       | {name: values[sample] for name, values in state.values.items()})

    def _store_diff(self, state: BranchState, sample: int, row: int, out: Streams) -> None:
        """The uncond branch computed: keep (uncond - cond) when the cond branch also computed this step."""
        cond = self.branches.get("cond")
        if (cond is None or sample >= cond.size or cond.out_step[sample] != self.call.step
                or cond.since_full[sample] != 0):
            return
        diff = tuple(o[row : row + 1] - c.unsqueeze(0) for o, c in zip(out, cond.get("out", sample)))
        self._refresh(state, "cfg_diff", sample, diff, None)

    def capture_temb(self, output) -> None:
        if self.call is not None:
            temb = output[0] if isinstance(output, tuple) else output
            self.call.captured["temb"] = temb.detach().reshape(temb.shape[0], -1)


def _reused(quantity: str) -> bool:
    """Whether a kept quantity is what a reuse adds back (so a forecast extrapolates it)."""
    return quantity in ("residual", "cfg_diff") or quantity.startswith("tail")
