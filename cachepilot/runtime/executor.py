"""The executor: runs the blocks of a transformer call as its plan says, and keeps what later calls reuse.

Blocks are never reimplemented: a block that runs is the model's own forward with the model's own arguments, which
is why FULL is bit-identical to the uncached transformer. A reused row skips the blocks its action does not run
and gets back what the action adds (`forecaster.Forecaster.added_back`); a FULL row refreshes what is kept.
"""

from __future__ import annotations

import torch

from .actions import Kind
from .signals import QUANTITIES
from .state import BranchState, Streams, index, subtract


class Executor:
    """Executes the call in flight of `runtime` (a `CacheRuntime`) over its branches' kept state."""

    def __init__(self, runtime):
        self.rt = runtime
        num_blocks = runtime.num_blocks
        self.mid_block = num_blocks // 2  # the middle block whose residual is the quantity "mid_residual"
        self.back_start = num_blocks - runtime.back  # first trailing block (== num_blocks when back == 0)
        self.capture_at = frozenset(runtime.block_ks) | ({self.back_start} if runtime.back else frozenset())

    def _refresh(self, state: BranchState, name: str, sample: int, value: Streams, gap: int | None) -> None:
        rt = self.rt
        rt.meter.refresh(state, name, sample, value, gap, rt.call.when, rt.call.frames, rt.forecaster)

    def keep_captured(self) -> None:
        """After the decision: the per-call quantities the signals compare, kept every call or at each FULL."""
        call = self.rt.call
        for row, ((branch, sample), action) in enumerate(zip(call.rows, call.plan)):
            state = self.rt.branches[branch]
            for name, value in call.captured.items():
                if QUANTITIES[name].refreshed == "call" or action.kind is Kind.FULL:
                    self._refresh(state, name, sample, (value[row : row + 1],), None)

    def capture(self, block: torch.nn.Module, args: tuple, kwargs: dict, hidden: torch.Tensor) -> None:
        """Block 0's inputs: the per-call quantities its signals compare (`signals.QUANTITIES`)."""
        call, adapter = self.rt.call, self.rt.adapter
        temb = adapter.temb(args, kwargs)  # the block's timestep-embedding argument (Wan: timestep_proj)
        if temb is not None and temb.shape[0] == hidden.shape[0]:
            temb = temb.detach().reshape(temb.shape[0], -1)
            call.captured["temb_proj"] = temb
            call.captured.setdefault("temb", temb)  # no time embedder hook: the block argument is the embedding
        if "modulated" in self.rt.meter.captures and adapter.modulated_input is not None:
            call.captured["modulated"] = adapter.modulated_input(block, args, kwargs).detach()

    def capture_temb(self, output) -> None:
        if self.rt.call is not None:
            temb = output[0] if isinstance(output, tuple) else output
            self.rt.call.captured["temb"] = temb.detach().reshape(temb.shape[0], -1)

    def run_block(self, index_: int, block: torch.nn.Module, forward, args: tuple, kwargs: dict):
        rt = self.rt
        call = rt.call
        if call is None:  # a block called outside a transformer forward: leave it alone
            return forward(*args, **kwargs)
        adapter, probe, want_mid = rt.adapter, rt.policy.probe_blocks, rt.meter.want_mid
        hidden, encoder = adapter.hidden(args, kwargs), adapter.encoder(args, kwargs)
        current: Streams = (hidden, encoder) if adapter.returns_encoder else (hidden,)
        if index_ == 0:
            call.h_in = current
            if call.block_flops == 0.0:
                text = encoder.shape[1] if encoder is not None else 0
                call.block_flops = adapter.block_flops(hidden.shape[1], text, hidden.shape[-1], rt.ffn)
            self.capture(block, args, kwargs, hidden)
        if index_ == probe:
            if probe:
                call.captured["probe"] = (current[0] - call.h_in[0]).detach()
            rt.decide()
        if index_ in self.capture_at or (want_mid and index_ in (self.mid_block, self.mid_block + 1)):
            call.h_at[index_] = current
        if rt.back and index_ == self.back_start and call.plan is not None:
            args, kwargs, current = self._add_middle(args, kwargs, current)
        out = self._run(index_, forward, args, kwargs, current)
        if want_mid and index_ == self.mid_block == rt.num_blocks - 1:  # one block: the mid block is the last
            call.h_at[index_ + 1] = out if isinstance(out, tuple) else (out,)
        if index_ == rt.num_blocks - 1:
            out = self._finish(out if isinstance(out, tuple) else (out,))
            return out if adapter.returns_encoder else out[0]
        return out

    def _add_middle(self, args: tuple, kwargs: dict, current: Streams):
        """Before the trailing blocks: rows doing BLOCK_k_b get the kept residual of blocks k..end-b added."""
        rt = self.rt
        call = rt.call
        rows = [r for r, a in enumerate(call.plan) if a.kind is Kind.BLOCK]
        if not rows:
            return args, kwargs, current
        current = tuple(c.clone() for c in current)
        for row in rows:
            branch, sample = call.rows[row]
            for c, t in zip(current, rt.forecaster.added_back(rt.branches[branch], sample, call.plan[row], call.when)):
                c[row] = c[row] + t
        args, kwargs = rt.adapter.with_streams(args, kwargs, current)
        return args, kwargs, current

    def _run(self, index_: int, forward, args: tuple, kwargs: dict, current: Streams):
        rt = self.rt
        plan = rt.call.plan
        if plan is None:  # probe blocks before the decision: everyone runs
            return forward(*args, **kwargs)
        runs = [a.runs_block(index_, rt.num_blocks) for a in plan]
        if all(runs):
            return forward(*args, **kwargs)
        passthrough = current if rt.adapter.returns_encoder else current[0]
        if not any(runs):
            return passthrough
        idx = torch.tensor([i for i, r in enumerate(runs) if r], device=current[0].device)
        batch = current[0].shape[0]

        shared = rt.adapter.is_shared

        def pick(x):  # slice every per-sample tensor argument, also inside tuples (per-sample rotary (cos, sin))
            if isinstance(x, (tuple, list)):
                return type(x)(pick(v) for v in x)
            return x.index_select(0, idx) if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == batch else x

        sub = forward(*[a if shared(i, None) else pick(a) for i, a in enumerate(args)],
                      **{k: v if shared(None, k) else pick(v) for k, v in kwargs.items()})
        sub = sub if isinstance(sub, tuple) else (sub,)
        merged = tuple(c.index_copy(0, idx, s) for c, s in zip(current, sub))
        return merged if rt.adapter.returns_encoder else merged[0]

    def _finish(self, out: Streams) -> Streams:
        """After the last block: rebuild reused rows from the kept quantities, refresh them from FULL rows."""
        rt = self.rt
        call = rt.call
        out = tuple(o.clone() if any(a.reuses for a in call.plan) else o for o in out)
        order = sorted(range(len(call.rows)), key=lambda r: call.rows[r][0] != "cond")  # cond rows first (CFG reads them)
        for row in order:
            branch, sample = call.rows[row]
            state, action = rt.branches[branch], call.plan[row]
            if action.kind is Kind.FULL:
                self._store_full(state, row, sample, out)
            elif action.kind is Kind.CFG:
                cond_out = rt.branches["cond"].get("out", sample)
                for o, c, d in zip(out, cond_out, rt.forecaster.added_back(state, sample, action, call.when)):
                    o[row] = c + d
            elif not action.back:  # STEP, BLOCK_k (BLOCK_k_b added its middle before the trailing blocks)
                for o, t in zip(out, rt.forecaster.added_back(state, sample, action, call.when)):
                    o[row] = o[row] + t
            if action.kind is not Kind.FULL and state.since_full[sample] is not None:
                state.since_full[sample] += 1
                rt.meter.accumulate(state, sample)
            if branch == "cond":  # only the cond output is ever reused (CFG, and the CFG difference)
                self._refresh(state, "out", sample, index(out, slice(row, row + 1)), None)
                state.out_step[sample] = call.step
            elif action.kind is Kind.FULL:
                self._store_diff(state, sample, row, out)
        return out

    def _store_full(self, state: BranchState, row: int, sample: int, out: Streams) -> None:
        rt = self.rt
        call = rt.call
        residual = subtract(index(out, slice(row, row + 1)), index(call.h_in, slice(row, row + 1)))
        # calls since the previous FULL of this sample, counting this one (None: this is its first FULL)
        gap = state.since_full[sample] + 1 if state.holds("residual", sample) and state.since_full[sample] is not None else None
        if rt.meter.want_mid:
            after_mid = call.h_at.get(self.mid_block + 1, out)
            mid = (after_mid[0][row] - call.h_at[self.mid_block][0][row]).unsqueeze(0)
            self._refresh(state, "mid_residual", sample, (mid,), gap)
        self._refresh(state, "residual", sample, residual, gap)
        end = call.h_at[self.back_start] if rt.back else out  # the reused segment ends where trailing blocks begin
        for k in rt.block_ks:
            tail = subtract(index(end, slice(row, row + 1)), index(call.h_at[k], slice(row, row + 1)))
            state.put(f"tail{k}", sample, tail, call.when, rt.forecaster.depth(f"tail{k}"))
        state.since_full[sample] = 0
        rt.meter.restart(state, sample)
        rt.summary.full_stats.append({"step": call.step, "branch": call.rows[row][0], "sample": sample}
                                     | {name: values[sample] for name, values in state.values.items()})

    def _store_diff(self, state: BranchState, sample: int, row: int, out: Streams) -> None:
        """The uncond branch computed: keep (uncond - cond) when the cond branch also computed this step."""
        rt = self.rt
        cond = rt.branches.get("cond")
        if (cond is None or sample >= cond.size or cond.out_step[sample] != rt.call.step
                or cond.since_full[sample] != 0):
            return
        diff = tuple(o[row : row + 1] - c.unsqueeze(0) for o, c in zip(out, cond.get("out", sample)))
        self._refresh(state, "cfg_diff", sample, diff, None)
