"""The cache runtime: per transformer call, compute signals, ask the policy, execute, record the cost.

It is driven by three kinds of diffusers hooks (see hooks.py): one on the transformer (call begin/end,
branch and step from the pipeline's cache context), one on the time embedder where the adapter names
one (the TeaCache indicator), and one on every block (skip, run, or run a sub-batch of samples).
Blocks are never reimplemented: a block that runs is the model's own forward with the model's own
arguments, which is why FULL is bit-identical to the uncached transformer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from cachepilot.errors import CachepilotError
from cachepilot.models.adapters import ModelAdapter

from .actions import CFG, FULL, STEP, Action, Kind
from .ledger import CacheSummary, Decision
from .policy import OPTIONAL_SIGNALS, Policy
from .signals import Signals, motion_energy, norm_ratio, rel_l1

Streams = tuple  # (hidden,) or (hidden, encoder_hidden): what flows between blocks


class InvalidActionError(CachepilotError):
    pass


@dataclass
class BranchState:
    """Caches and bookkeeping of one CFG branch; tensors are batched over the branch's samples."""

    size: int
    tails: dict[int, Streams] = field(default_factory=dict)  # k -> residual of blocks k..end-b (k=0: all blocks)
    has_full: list[bool] = field(default_factory=list)
    out: Streams | None = None  # block-stack output of the latest call (kept for the cond branch only)
    out_step: list[int] = field(default_factory=list)
    out_full: list[bool] = field(default_factory=list)
    diff: Streams | None = None  # (uncond - cond) block-stack outputs at the last step both were FULL
    has_diff: list[bool] = field(default_factory=list)
    cfg_drift: list[float | None] = field(default_factory=list)
    prev_temb: torch.Tensor | None = None
    prev_block_temb: torch.Tensor | None = None
    prev_modulated: torch.Tensor | None = None
    prev_probe: torch.Tensor | None = None
    mid_residual: torch.Tensor | None = None  # middle block's residual at the last FULL (AdaCache's distance)
    mid_change: list[float | None] = field(default_factory=list)
    mag_ratio: list[float | None] = field(default_factory=list)
    residual_change: list[float | None] = field(default_factory=list)
    acc_ratio: list[float] = field(default_factory=list)
    acc_err: list[float] = field(default_factory=list)
    motion: list[float | None] = field(default_factory=list)
    since_full: list[int | None] = field(default_factory=list)
    steps_seen: set = field(default_factory=set)
    calls: int = 0

    def __post_init__(self):
        n = self.size
        self.has_full, self.out_step, self.out_full = [False] * n, [-1] * n, [False] * n
        self.has_diff, self.cfg_drift = [False] * n, [None] * n
        self.mag_ratio, self.acc_ratio, self.acc_err = [None] * n, [1.0] * n, [0.0] * n
        self.motion, self.since_full = [None] * n, [None] * n
        self.mid_change, self.residual_change = [None] * n, [None] * n


@dataclass
class Call:
    """One transformer call in flight."""

    step: int
    num_steps: int | None
    sigma: float | None
    timestep: float | None
    rows: list[tuple[str, int]]  # batch row -> (branch, sample)
    frames: int | None
    started: float
    temb: torch.Tensor | None = None
    block_temb: torch.Tensor | None = None
    h_in: Streams | None = None
    h_at: dict[int, Streams] = field(default_factory=dict)
    modulated: torch.Tensor | None = None
    plan: list[Action] | None = None
    block_flops: float = 0.0


def _index(streams: Streams, idx) -> Streams:
    return tuple(s[idx] for s in streams)


def _sub(a: Streams, b: Streams) -> Streams:
    return tuple(x - y for x, y in zip(a, b))


def _put(target: Streams | None, sample: int, values: Streams, size: int) -> Streams:
    """Write one sample's row of a per-branch cache (allocating it on first use); `values` have one row.

    A plain row copy: much cheaper than index assignment on this hot path."""
    if target is None:
        target = tuple(torch.zeros((size, *v.shape[1:]), dtype=v.dtype, device=v.device) for v in values)
    for t, v in zip(target, values):
        t[sample].copy_(v[0])
    return target


def _put1(target: torch.Tensor | None, sample: int, value: torch.Tensor, size: int) -> torch.Tensor:
    return _put(None if target is None else (target,), sample, (value,), size)[0]


class CacheRuntime:
    def __init__(self, transformer: torch.nn.Module, adapter: ModelAdapter, policy: Policy,
                 num_inference_steps: int | None = None, batched_cfg: bool | None = None, pipe=None):
        self.transformer = transformer
        self.adapter = adapter
        self.policy = policy
        self.num_blocks = len(adapter.blocks(transformer))
        self.mid_block = self.num_blocks // 2  # AdaCache reads this block's residual
        wanted = getattr(policy, "signals", None)
        wanted = OPTIONAL_SIGNALS if wanted is None else frozenset(wanted)
        unknown = wanted - OPTIONAL_SIGNALS
        if unknown:
            raise ValueError(f"unknown optional signals {sorted(unknown)}; choose from {sorted(OPTIONAL_SIGNALS)}")
        self.want_ratio = bool(wanted & {"residual_norm_ratio", "mag_accumulated_error"})
        self.want_drift, self.want_motion = "residual_rel_l1" in wanted, "motion_energy" in wanted
        self.want_mid, self.want_cfg_drift = "mid_block_change" in wanted, "cfg_diff_drift" in wanted
        self.block_ks = tuple(sorted({*getattr(policy, "block_ks", ()), *((policy.probe_blocks,) if policy.probe_blocks else ())}))
        self.back = int(getattr(policy, "back_blocks", 0))  # trailing blocks every BLOCK action also runs (Bn)
        for action in (Action.block(k, self.back) for k in self.block_ks):
            if not action.fits(self.num_blocks):
                raise ValueError(f"{action} out of range for {type(transformer).__name__} with {self.num_blocks} blocks")
        self.back_start = self.num_blocks - self.back  # first trailing block (== num_blocks when back == 0)
        self.capture = frozenset(self.block_ks) | ({self.back_start} if self.back else frozenset())
        self.num_inference_steps = num_inference_steps
        self.batched_cfg = batched_cfg
        self.pipe = pipe
        self._ffn = adapter.ffn_dim(adapter.blocks(transformer)[0])
        self.call: Call | None = None
        self.reset()

    # ---- generation bookkeeping -------------------------------------------------------------
    def reset(self) -> None:
        """Start a new generation: drop every cache and the cost ledger, reset the policy."""
        self.branches: dict[str, BranchState] = {}
        self.spent: dict[int, float] = {}
        self.full: dict[int, float] = {}
        self.summary = CacheSummary(getattr(self.policy, "name", type(self.policy).__name__), self.num_blocks)
        self._ended = False
        self.policy.reset()

    def snapshot(self) -> tuple:
        """Every cache and ledger entry of the generation so far (a copy), for `restore`: lets a caller fork
        denoising at a step, explore a continuation, and come back (the oracle)."""
        return copy.deepcopy((self.branches, self.spent, self.full, self._ended)), len(self.summary.decisions), len(
            self.summary.wall_times), len(self.summary.full_stats)

    def restore(self, snapshot: tuple) -> None:
        state, decisions, walls, stats = snapshot
        self.branches, self.spent, self.full, self._ended = copy.deepcopy(state)
        del self.summary.decisions[decisions:], self.summary.wall_times[walls:], self.summary.full_stats[stats:]

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
                cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
            if cfg:
                half = batch // 2
                return [("uncond", i) for i in range(half)] + [("cond", i) for i in range(half)]
        branch = context_name if context_name in ("cond", "uncond") else "cond"
        return [(branch, i) for i in range(batch)]

    def begin_call(self, context, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if self._ended:
            self.reset()
        rows = self._rows(getattr(context, "name", None), hidden.shape[0])
        branches = sorted({b for b, _ in rows})
        step = getattr(context, "step_index", None)
        if step is None:  # count this branch's calls (per generation)
            step = self.branches[branches[0]].calls if branches[0] in self.branches else 0
        if any(step in self.branches[b].steps_seen for b in branches if b in self.branches) or any(
            step < max(s.steps_seen, default=-1) for s in self.branches.values()
        ):
            self.reset()  # a step seen again: a new generation started
        for b in branches:
            self._branch(b, sum(1 for r in rows if r[0] == b)).steps_seen.add(step)
        self.call = Call(
            step=step,
            num_steps=getattr(context, "num_inference_steps", None) or self.num_inference_steps,
            sigma=getattr(context, "sigma", None),
            timestep=float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else timestep,
            rows=rows,
            frames=self.adapter.latent_frames(self.transformer, args, kwargs) if self.adapter.latent_frames else None,
            started=time.perf_counter(),
        )

    def end_call(self) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        for b in {b for b, _ in call.rows}:
            self.branches[b].calls += 1
        if call.plan is None:  # the model ran no block at all (should not happen); count a full call
            call.plan = [FULL] * len(call.rows)
        device = next(self.transformer.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.summary.wall_times.append(time.perf_counter() - call.started)
        for (branch, sample), action in zip(call.rows, call.plan):
            ran = max(action.blocks_run(self.num_blocks), self.policy.probe_blocks)
            flops, full = ran * call.block_flops, self.num_blocks * call.block_flops
            self.spent[sample] = self.spent.get(sample, 0.0) + flops
            self.full[sample] = self.full.get(sample, 0.0) + full
            self.summary.decisions.append(Decision(call.step, branch, sample, str(action), ran, flops, full))

    # ---- decisions ------------------------------------------------------------------------
    def valid_actions(self, branch: str, sample: int) -> tuple[Action, ...]:
        state = self.branches[branch]
        step = self.call.step
        valid = [FULL]
        if state.has_full[sample]:
            probe = self.policy.probe_blocks
            if not probe:
                valid.append(STEP)
            valid.extend(Action.block(k, self.back) for k in self.block_ks if k >= max(probe, 1))
        cond = self.branches.get("cond")
        if (branch == "uncond" and not self.policy.probe_blocks and state.has_diff[sample] and cond is not None
                and sample < cond.size and (cond.out_step[sample] == step or ("cond", sample) in self.call.rows)):
            valid.append(CFG)
        return tuple(valid)

    def _signals(self, row: int, branch: str, sample: int, probe: Streams | None) -> Signals:
        call, state = self.call, self.branches[branch]
        temb = call.temb[row] if call.temb is not None and call.temb.shape[0] > row else None
        temb_change = rel_l1(temb, state.prev_temb[sample]) if temb is not None and state.prev_temb is not None else None
        proj = call.block_temb[row] if call.block_temb is not None else None
        proj_change = rel_l1(proj, state.prev_block_temb[sample]) if proj is not None and state.prev_block_temb is not None else None
        modulated = call.modulated[row] if call.modulated is not None else None
        mod_change = rel_l1(modulated, state.prev_modulated[sample]) if modulated is not None and state.prev_modulated is not None else None
        probe_change = None
        if probe is not None and state.prev_probe is not None:
            probe_change = rel_l1(probe[0][row], state.prev_probe[sample])
        acc_err = None
        if state.mag_ratio[sample] is not None and state.since_full[sample] is not None:
            acc_err = state.acc_err[sample] + abs(1 - state.acc_ratio[sample] * state.mag_ratio[sample])
        full = self.full.get(sample, 0.0)
        by_modulated = self.adapter.teacache_indicator == "modulated"
        return Signals(
            step=call.step, num_steps=call.num_steps, branch=branch, sample=sample, sigma=call.sigma,
            timestep=call.timestep, temb_rel_l1=temb_change, temb_proj_rel_l1=proj_change, modulated_rel_l1=mod_change,
            indicator_rel_l1=mod_change if by_modulated else temb_change, probe_rel_l1=probe_change,
            residual_norm_ratio=state.mag_ratio[sample], mag_accumulated_error=acc_err, motion_energy=state.motion[sample],
            cfg_diff_drift=state.cfg_drift[sample], mid_block_change=state.mid_change[sample],
            residual_rel_l1=state.residual_change[sample],
            steps_since_full=state.since_full[sample],
            compute_spent=self.spent.get(sample, 0.0) / full if full else 0.0,
        )

    def _decide(self, current: Streams) -> None:
        call = self.call
        probe = _sub(current, call.h_in) if self.policy.probe_blocks else None
        signals = [self._signals(row, branch, sample, probe) for row, (branch, sample) in enumerate(call.rows)]
        valid = [self.valid_actions(branch, sample) for branch, sample in call.rows]
        decide_batch = getattr(self.policy, "decide_batch", None)
        if decide_batch is not None:  # one decision for the whole call (a network's batched forward, the env)
            plan = list(decide_batch(signals, valid))
        else:
            plan = [self.policy.decide(s, v) for s, v in zip(signals, valid)]
        if len(plan) != len(call.rows):
            raise InvalidActionError(f"policy {self.summary.policy!r} returned {len(plan)} actions for {len(call.rows)} rows")
        for row, ((branch, sample), action) in enumerate(zip(call.rows, plan)):
            if action not in valid[row]:
                raise InvalidActionError(
                    f"policy {self.summary.policy!r} chose {action} at step {call.step}, branch {branch!r}, "
                    f"sample {sample}; valid now: {', '.join(map(str, valid[row]))}"
                )
            state = self.branches[branch]
            # per-call signal memories are updated every call, whatever was decided (as TeaCache does)
            for attr, value in (("prev_temb", call.temb), ("prev_block_temb", call.block_temb), ("prev_modulated", call.modulated)):
                if value is not None:
                    setattr(state, attr, _put1(getattr(state, attr), sample, value[row : row + 1], state.size))
            # First-Block / DB cache compare with the probe residual of the last FULL (diffusers, ParaAttention)
            if probe is not None and action.kind is Kind.FULL:
                state.prev_probe = _put1(state.prev_probe, sample, probe[0][row : row + 1], state.size)
        call.plan = plan

    # ---- execution ------------------------------------------------------------------------
    def run_block(self, index: int, block: torch.nn.Module, forward, args: tuple, kwargs: dict):
        call = self.call
        if call is None:  # a block called outside a transformer forward: leave it alone
            return forward(*args, **kwargs)
        adapter = self.adapter
        hidden, encoder = adapter.hidden(args, kwargs), adapter.encoder(args, kwargs)
        current: Streams = (hidden, encoder) if adapter.returns_encoder else (hidden,)
        if index == 0:
            call.h_in = current
            if call.block_flops == 0.0:
                text = encoder.shape[1] if encoder is not None else 0
                call.block_flops = adapter.block_flops(hidden.shape[1], text, hidden.shape[-1], self._ffn)
            if self.policy.needs_modulated_input or adapter.teacache_indicator == "modulated":
                if adapter.modulated_input is not None:
                    call.modulated = adapter.modulated_input(block, args, kwargs).detach()
            temb = adapter.temb(args, kwargs)  # the block's timestep-embedding argument (Wan: timestep_proj)
            if temb is not None and temb.shape[0] == hidden.shape[0]:
                call.block_temb = temb.detach().reshape(temb.shape[0], -1)
            if call.temb is None:  # no time embedder hook: the block argument is the timestep embedding
                call.temb = call.block_temb
        if index == self.policy.probe_blocks:
            self._decide(current)
        if index in self.capture or (self.want_mid and index in (self.mid_block, self.mid_block + 1)):
            call.h_at[index] = current
        if self.back and index == self.back_start and call.plan is not None:
            args, kwargs, current = self._add_middle(args, kwargs, current)
        out = self._run(index, forward, args, kwargs, current)
        if self.want_mid and index == self.mid_block == self.num_blocks - 1:  # one block: mid block is the last
            call.h_at[index + 1] = out if isinstance(out, tuple) else (out,)
        if index == self.num_blocks - 1:
            out = self._finish(out if isinstance(out, tuple) else (out,))
            return out if adapter.returns_encoder else out[0]
        return out

    def _add_middle(self, args: tuple, kwargs: dict, current: Streams):
        """Before the trailing blocks: rows doing BLOCK_k_b get the cached residual of blocks k..end-b added."""
        call = self.call
        rows = [r for r, a in enumerate(call.plan) if a.kind is Kind.BLOCK]
        if not rows:
            return args, kwargs, current
        current = tuple(c.clone() for c in current)
        for row in rows:
            branch, sample = call.rows[row]
            for c, t in zip(current, self.branches[branch].tails[call.plan[row].k]):
                c[row] = c[row] + t[sample]
        args, kwargs = self.adapter.with_streams(args, kwargs, current)
        return args, kwargs, current

    def _run(self, index: int, forward, args: tuple, kwargs: dict, current: Streams):
        plan = self.call.plan
        if plan is None:  # probe blocks before the decision: everyone runs
            return forward(*args, **kwargs)
        runs = [a.runs_block(index, self.num_blocks) for a in plan]  # the plan exists only after the probe blocks
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
        """After the last block: rebuild reused rows from caches, refresh caches from FULL rows."""
        call = self.call
        out = tuple(o.clone() if any(a.reuses for a in call.plan) else o for o in out)
        order = sorted(range(len(call.rows)), key=lambda r: call.rows[r][0] != "cond")  # cond rows first (CFG reads them)
        for row in order:
            branch, sample = call.rows[row]
            state, action = self.branches[branch], call.plan[row]
            if action.kind is Kind.FULL:
                self._store_full(state, row, sample, out)
            elif action.kind is Kind.CFG:
                cond = self.branches["cond"]
                for o, c, d in zip(out, cond.out, state.diff):
                    o[row] = c[sample] + d[sample]
            elif not action.back:  # STEP, BLOCK_k (BLOCK_k_b added its middle before the trailing blocks)
                k = action.k if action.kind is Kind.BLOCK else 0
                for o, t in zip(out, state.tails[k]):
                    o[row] = o[row] + t[sample]
            if action.kind is not Kind.FULL and state.since_full[sample] is not None:
                state.since_full[sample] += 1
                if state.mag_ratio[sample] is not None:
                    state.acc_ratio[sample] *= state.mag_ratio[sample]
                    state.acc_err[sample] += abs(1 - state.acc_ratio[sample])
            if branch == "cond":  # only the cond output is ever reused (CFG, and the CFG difference)
                state.out = _put(state.out, sample, _index(out, slice(row, row + 1)), state.size)
                state.out_step[sample], state.out_full[sample] = call.step, action.kind is Kind.FULL
            elif action.kind is Kind.FULL:
                self._store_diff(state, sample, row, out)
        return out

    def _store_full(self, state: BranchState, row: int, sample: int, out: Streams) -> None:
        call = self.call
        residual = _sub(_index(out, slice(row, row + 1)), _index(call.h_in, slice(row, row + 1)))
        # calls since the previous FULL of this sample, counting this one (None: this is its first FULL)
        gap = state.since_full[sample] + 1 if state.has_full[sample] and state.since_full[sample] is not None else None
        if gap is not None:
            if self.want_ratio:
                state.mag_ratio[sample] = norm_ratio(residual[0][0], state.tails[0][0][sample]) ** (1.0 / gap)
            if self.want_drift:
                state.residual_change[sample] = rel_l1(residual[0][0], state.tails[0][0][sample]) / gap
        if self.want_motion:
            state.motion[sample] = motion_energy(residual[0][0], call.frames)
        if self.want_mid:
            after_mid = call.h_at.get(self.mid_block + 1, out)
            mid = (after_mid[0][row] - call.h_at[self.mid_block][0][row]).unsqueeze(0)
            if gap is not None and state.mid_residual is not None:
                state.mid_change[sample] = rel_l1(mid[0], state.mid_residual[sample]) / gap
            state.mid_residual = _put1(state.mid_residual, sample, mid, state.size)
        state.tails[0] = _put(state.tails.get(0), sample, residual, state.size)
        end = call.h_at[self.back_start] if self.back else out  # the reused segment ends where trailing blocks begin
        for k in self.block_ks:
            tail = _sub(_index(end, slice(row, row + 1)), _index(call.h_at[k], slice(row, row + 1)))
            state.tails[k] = _put(state.tails.get(k), sample, tail, state.size)
        state.has_full[sample] = True
        state.since_full[sample], state.acc_ratio[sample], state.acc_err[sample] = 0, 1.0, 0.0
        self.summary.full_stats.append({
            "step": call.step, "branch": call.rows[row][0], "sample": sample,
            "residual_norm_ratio": state.mag_ratio[sample], "residual_rel_l1": state.residual_change[sample],
            "mid_block_change": state.mid_change[sample], "motion_energy": state.motion[sample],
        })

    def _store_diff(self, state: BranchState, sample: int, row: int, out: Streams) -> None:
        cond = self.branches.get("cond")
        if cond is None or sample >= cond.size or cond.out_step[sample] != self.call.step or not cond.out_full[sample]:
            return
        diff = _sub(_index(out, slice(row, row + 1)), _index(cond.out, slice(sample, sample + 1)))
        if state.has_diff[sample] and self.want_cfg_drift:
            state.cfg_drift[sample] = rel_l1(diff[0][0], state.diff[0][sample])
        state.diff = _put(state.diff, sample, diff, state.size)
        state.has_diff[sample] = True

    def capture_temb(self, output) -> None:
        if self.call is not None:
            temb = output[0] if isinstance(output, tuple) else output
            self.call.temb = temb.detach().reshape(temb.shape[0], -1)
