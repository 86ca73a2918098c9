"""The cache runtime on tiny random models of every supported family.

Reference outputs are built independently of the runtime: an unhooked copy of the model runs with plain
torch forward hooks that record block inputs/outputs and, where an action reuses, replace the block
stack's output by the action's definition (input + cached residual, etc.).
"""

import copy
import dataclasses

import pytest
import torch
from tiny_models import TINY

from cachepilot.errors import CachepilotError
from cachepilot.models.adapters import UnsupportedModelError, adapter_for
from cachepilot.policies.base import BasePolicy, NoCache
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.policies.step_level import StepLevelPolicy
from cachepilot.runtime import (CFG, FULL, STEP, Action, CacheStackingError, InvalidActionError, attach_runtime,
                                cache_summary, remove_cache)

FAMILIES = list(TINY)
NUM_STEPS = 3


def _step_inputs(tiny, step: int, batch: int = 1, only: int | None = None) -> dict:
    x = tiny.make_inputs(batch, 1000 + step)["hidden_states"]
    cond, uncond = tiny.make_inputs(batch, 1), tiny.make_inputs(batch, 2)
    if only is not None:  # sample `only` of the batch, alone
        x = x[only : only + 1]
        cond, uncond = ({k: v[only : only + 1] if isinstance(v, torch.Tensor) else v for k, v in d.items()} for d in (cond, uncond))
    return {"x": x, "cond": cond, "uncond": uncond}


def denoise_step(tiny, model, step: int, batch: int = 1, only: int | None = None, sigma: float | None = None) -> torch.Tensor:
    """One denoising step as the family's pipeline calls it; returns [uncond; cond] outputs."""
    inp = _step_inputs(tiny, step, batch, only)
    batch = inp["x"].shape[0]
    t = torch.full((batch,), 900.0 - 300 * step)
    ctx = {"step_index": step, "num_inference_steps": NUM_STEPS, "sigma": sigma}
    with torch.no_grad():
        if tiny.batched_cfg:
            kw = {k: (torch.cat([inp["uncond"][k], inp["cond"][k]]) if isinstance(v, torch.Tensor) else v)
                  for k, v in inp["cond"].items()}
            kw["hidden_states"] = torch.cat([inp["x"], inp["x"]])
            with model.cache_context("cond_uncond", **ctx):
                return model(**kw, timestep=torch.cat([t, t]), return_dict=False)[0]
        outs = {}
        for branch in ("cond", "uncond"):
            kw = dict(inp[branch], hidden_states=inp["x"])
            with model.cache_context(branch, **ctx):
                outs[branch] = model(**kw, timestep=t, return_dict=False)[0]
        return torch.cat([outs["uncond"], outs["cond"]])


class Probe:
    """Plain torch hooks on an unhooked model: record block-stack streams, optionally override the output."""

    def __init__(self, tiny, model):
        self.adapter = adapter_for(model)
        self.blocks = self.adapter.blocks(model)
        self.records, self.override, self.replace_input = [], None, {}  # replace_input: index -> fn(record)
        for i, block in enumerate(self.blocks):
            block.register_forward_pre_hook(self._pre(i), with_kwargs=True)
        self.blocks[-1].register_forward_hook(self._post, with_kwargs=True)

    def _streams(self, args, kwargs):
        h, e = self.adapter.hidden(args, kwargs), self.adapter.encoder(args, kwargs)
        return (h, e) if self.adapter.returns_encoder else (h,)

    def _pre(self, i):
        def hook(module, args, kwargs):
            if i == 0:
                self.records.append({})
            self.records[-1][i] = self._streams(args, kwargs)
            if i in self.replace_input:
                return self.adapter.with_streams(args, kwargs, self.replace_input[i](self.records[-1]))
        return hook

    def _post(self, module, args, kwargs, output):
        out = output if isinstance(output, tuple) else (output,)
        self.records[-1]["out"] = out
        if self.override is not None:
            new = self.override(self.records[-1])
            return new if self.adapter.returns_encoder else new[0]
        return output


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b))


def _sub(a, b):
    return tuple(x - y for x, y in zip(a, b))


@pytest.fixture(params=FAMILIES)
def tiny(request):
    return TINY[request.param]()


def test_full_is_bit_identical_and_remove_restores(tiny):
    bare = copy.deepcopy(tiny.model)
    expected = [denoise_step(tiny, bare, s) for s in range(NUM_STEPS)]
    attach_runtime(tiny.model, NoCache(), batched_cfg=tiny.batched_cfg)
    got = [denoise_step(tiny, tiny.model, s) for s in range(NUM_STEPS)]
    summary = cache_summary(tiny.model)
    remove_cache(tiny.model)
    after = [denoise_step(tiny, tiny.model, s) for s in range(NUM_STEPS)]
    for e, g, a in zip(expected, got, after):
        assert torch.equal(e, g) and torch.equal(e, a)
    assert summary.computed_fraction == 1.0 and summary.actions() == {"cond": ["FULL"] * 3, "uncond": ["FULL"] * 3}


def _reference_after_full(tiny, action: Action) -> torch.Tensor:
    """Step 0 FULL, step 1 under `action`, built from the action's definition with plain hooks."""
    model = copy.deepcopy(tiny.model)
    probe = Probe(tiny, model)
    denoise_step(tiny, model, 0)
    # records of step 0, by branch; batched models have one record with rows [uncond; cond]
    if tiny.batched_cfg:
        (r0,) = probe.records
        rows = {"uncond": slice(0, 1), "cond": slice(1, 2)}
        rec0 = {b: {k: tuple(t[s] for t in v) for k, v in r0.items()} for b, s in rows.items()}
    else:
        rec0 = dict(zip(("cond", "uncond"), probe.records))
    probe.records.clear()
    k = action.k if action.kind.value == "BLOCK" else 0

    def reuse(record, branch):
        if action == CFG and branch == "uncond":
            return None  # rebuilt from the cond output below
        if action == CFG or action == FULL:
            return record["out"]
        return _add(record[k], _sub(rec0[branch]["out"], rec0[branch][k]))

    def override(record):
        if tiny.batched_cfg:
            cond = reuse({key: tuple(t[1:2] for t in v) for key, v in record.items()}, "cond")
            unc = reuse({key: tuple(t[0:1] for t in v) for key, v in record.items()}, "uncond")
            if unc is None:
                unc = _add(cond, _sub(rec0["uncond"]["out"], rec0["cond"]["out"]))
            return tuple(torch.cat([u, c]) for u, c in zip(unc, cond))
        branch = "cond" if len(probe.records) == 1 else "uncond"
        out = reuse(record, branch)
        if out is None:
            out = _add(probe.cond_out, _sub(rec0["uncond"]["out"], rec0["cond"]["out"]))
        if branch == "cond":
            probe.cond_out = out
        return out

    probe.override = override
    return denoise_step(tiny, model, 1)


@pytest.mark.parametrize("action", ["STEP", "CFG", "BLOCK_1", "BLOCK_2"])
def test_reuse_actions_equal_their_definitions(tiny, action):
    action = Action.parse(action)
    expected = _reference_after_full(tiny, action)
    attach_runtime(tiny.model, FixedSchedule([FULL, action, FULL]), batched_cfg=tiny.batched_cfg)
    denoise_step(tiny, tiny.model, 0)
    got = denoise_step(tiny, tiny.model, 1)
    if tiny.batched_cfg and action == CFG:
        # the cond row runs as a sub-batch of one while the reference ran both rows: same maths, and
        # batch-size-dependent kernels may round differently in the last bits
        assert torch.allclose(got, expected, rtol=0, atol=1e-5)
    else:
        assert torch.equal(got, expected)
    summary = cache_summary(tiny.model)
    cond_action = FULL if action == CFG else action
    assert summary.actions() == {"cond": ["FULL", str(cond_action)], "uncond": ["FULL", str(action)]}
    n = summary.num_blocks
    ran = {"STEP": 0, "CFG": 0}.get(str(action), action.k)
    expected_fraction = (2 * n + (n if action == CFG else ran) + ran) / (4 * n)
    assert summary.computed_fraction == pytest.approx(expected_fraction)


def test_block_k_b_equals_its_definition(tiny):
    """DBCache's Fn/Bn: front blocks run, the cached middle residual is added, the back blocks run on that."""
    n = len(adapter_for(tiny.model).blocks(tiny.model))
    action = Action.block(1, 1)
    model = copy.deepcopy(tiny.model)
    probe = Probe(tiny, model)
    denoise_step(tiny, model, 0)
    middle = [_sub(r[n - 1], r[1]) for r in probe.records]  # per call of step 0 (cond, uncond; or one batched)
    probe.records.clear()
    probe.replace_input[n - 1] = lambda record: _add(record[1], middle[len(probe.records) - 1])
    expected = denoise_step(tiny, model, 1)

    attach_runtime(tiny.model, FixedSchedule([FULL, action]), batched_cfg=tiny.batched_cfg)
    denoise_step(tiny, tiny.model, 0)
    got = denoise_step(tiny, tiny.model, 1)
    assert torch.equal(got, expected)
    summary = cache_summary(tiny.model)
    assert summary.actions()["cond"] == ["FULL", "BLOCK_1_1"]
    assert summary.computed_fraction == pytest.approx((2 * n + 2 * 2) / (4 * n))
    assert Action.parse("BLOCK_1_1") == action and action.blocks_run(n) == 2


class Scripted(BasePolicy):
    """Test policy deciding per branch: actions[step] on each branch (CFG: the cond branch computes)."""

    name = "scripted"

    def __init__(self, actions, signals=frozenset()):
        self.actions, self.signals = list(actions), signals

    def decide(self, signals, valid):
        return self.actions[signals.step].for_branch(signals.branch)


class PerSample(BasePolicy):
    """Test policy: a table (step, sample) -> action, the same for both branches."""

    name = "per-sample"

    def __init__(self, table, block_ks=()):
        self.table, self.block_ks = table, block_ks

    def decide(self, signals, valid):
        return self.table.get((signals.step, signals.sample), FULL)


def _batched_equals_alone(tiny, table: dict, batch: int) -> None:
    """Per-sample actions in one batch give each sample what running it alone gives."""
    attach_runtime(tiny.model, PerSample(table, block_ks=(1,)), batched_cfg=tiny.batched_cfg)
    batched = [denoise_step(tiny, tiny.model, s, batch=batch) for s in range(NUM_STEPS)]
    fractions = cache_summary(tiny.model).computed_fraction
    remove_cache(tiny.model)
    for sample in range(batch):
        single_table = {(s, 0): a for (s, i), a in table.items() if i == sample}
        attach_runtime(tiny.model, PerSample(single_table, block_ks=(1,)), batched_cfg=tiny.batched_cfg)
        alone = [denoise_step(tiny, tiny.model, s, batch=batch, only=sample) for s in range(NUM_STEPS)]
        remove_cache(tiny.model)
        for s in range(NUM_STEPS):
            # batched rows are [uncond_0..uncond_{b-1}, cond_0..cond_{b-1}]; alone gives [uncond_i, cond_i]
            assert torch.allclose(batched[s][[sample, batch + sample]], alone[s], atol=1e-5), (s, sample)
    assert fractions < 1.0


def test_per_sample_actions_in_one_batch_equal_running_samples_alone(tiny):
    _batched_equals_alone(tiny, {(1, 0): STEP, (2, 0): Action.block(1), (2, 1): STEP}, batch=2)


def test_a_sub_batch_keeps_rotary_tables_whole_when_the_token_count_equals_the_batch():
    """HunyuanVideo's rotary tables are (tokens, dim): at 4 tokens and 4 samples their size matches the batch."""
    tiny = TINY["hunyuanvideo"]()
    make = tiny.make_inputs

    def four_tokens(batch, seed):  # one latent frame of 4x4, patch 2: 4 tokens
        return make(batch, seed) | {"hidden_states": make(batch, seed)["hidden_states"][:, :, :1, :4, :4].contiguous()}

    tiny = dataclasses.replace(tiny, make_inputs=four_tokens)
    _batched_equals_alone(tiny, {(1, 0): STEP, (1, 2): STEP, (2, 1): STEP, (2, 3): Action.block(1)}, batch=4)


def test_optional_signals_are_computed_only_when_asked():
    tiny = TINY["wan"]()
    seen = []

    class Spy(Scripted):
        def decide(self, signals, valid):
            seen.append(signals)
            return super().decide(signals, valid)

    attach_runtime(tiny.model, Spy([FULL, FULL, FULL], signals=frozenset({"motion_energy"})))
    for s in range(NUM_STEPS):
        denoise_step(tiny, tiny.model, s)
    last = seen[-2]  # cond at step 2: two FULLs behind it
    assert last.motion_energy is not None
    assert last.residual_norm_ratio is None and last.residual_rel_l1 is None and last.mid_block_change is None
    with pytest.raises(ValueError, match=r"unknown signals \['vibes'\]"):
        attach_runtime(TINY["wan"]().model, type("Bad", (FixedSchedule,), {"signals": frozenset({"vibes"})})([FULL]))


def test_reuse_before_any_full_is_rejected_with_step_and_branch(tiny):
    attach_runtime(tiny.model, FixedSchedule([STEP, FULL, FULL]), batched_cfg=tiny.batched_cfg)
    with pytest.raises(InvalidActionError, match=r"chose STEP at step 0, branch '(cond|uncond)'"):
        denoise_step(tiny, tiny.model, 0)


def test_block_k_out_of_range_is_rejected(tiny):
    n = len(adapter_for(tiny.model).blocks(tiny.model))
    with pytest.raises(ValueError, match=f"BLOCK_{n} out of range"):
        attach_runtime(tiny.model, FixedSchedule([FULL, Action.block(n)]))


def test_refuses_to_stack():
    tiny = TINY["wan"]()
    attach_runtime(tiny.model, NoCache())
    with pytest.raises(CacheStackingError, match="already applied"):
        attach_runtime(tiny.model, NoCache())
    remove_cache(tiny.model)
    from diffusers import FirstBlockCacheConfig

    tiny.model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(CacheStackingError, match="diffusers cache"):
        attach_runtime(tiny.model, NoCache())


def test_unsupported_transformer_lists_supported_ones():
    with pytest.raises(UnsupportedModelError, match="WanTransformer3DModel") as err:
        attach_runtime(torch.nn.Linear(2, 2), NoCache())
    assert isinstance(err.value, CachepilotError)


def test_signals_follow_their_definitions():
    tiny = TINY["wan"]()
    seen = []

    class Spy(Scripted):
        def decide(self, signals, valid):
            seen.append((signals, valid))
            return super().decide(signals, valid)

    attach_runtime(tiny.model, Spy([FULL, STEP, FULL], signals=None))  # None: every optional signal
    for s in range(NUM_STEPS):
        denoise_step(tiny, tiny.model, s)
    cond = [sig for sig, _ in seen if sig.branch == "cond"]
    assert [c.step for c in cond] == [0, 1, 2] and cond[0].num_steps == NUM_STEPS
    assert cond[0].temb_rel_l1 is None and cond[1].temb_rel_l1 > 0
    assert cond[0].steps_since_full is None and cond[1].steps_since_full == 0 and cond[2].steps_since_full == 1
    assert cond[1].residual_norm_ratio is None and cond[2].motion_energy is not None
    assert cond[1].compute_spent == pytest.approx(1.0) and cond[2].compute_spent == pytest.approx(2 / 4)  # 2 FULL calls, then 2 STEP calls
    valid_uncond_1 = [v for sig, v in seen if sig.branch == "uncond" and sig.step == 1][0]
    assert CFG in valid_uncond_1 and STEP in valid_uncond_1
    assert [v for sig, v in seen if sig.step == 0][0] == (FULL,)


class StepScripted(StepLevelPolicy):
    """A step-level test policy: picks[step] indexes (FULL, STEP, CFG); records the masks it was given."""

    name = "step-scripted"

    def __init__(self, picks):
        super().__init__((FULL, STEP, CFG))
        self.picks, self.seen_masks = list(picks), []

    def choose(self, signals, masks):
        self.seen_masks.append([m.tolist() for m in masks])
        return [self.picks[s.step] for s in signals]


def test_step_level_policy_decides_on_cond_and_the_uncond_branch_follows(tiny):
    policy = StepScripted([0, 2, 1])
    attach_runtime(tiny.model, policy, batched_cfg=tiny.batched_cfg)
    for s in range(NUM_STEPS):
        denoise_step(tiny, tiny.model, s)
    assert cache_summary(tiny.model).actions() == {"cond": ["FULL", "FULL", "STEP"], "uncond": ["FULL", "CFG", "STEP"]}
    # asked once per step (the cond row); nothing kept at step 0: FULL only
    assert policy.seen_masks == [[[True, False, False]], [[True, True, True]], [[True, True, True]]]


def _cond_only_step(tiny, step: int, branch: str = "cond"):
    kw = dict(tiny.make_inputs(1, 1), hidden_states=tiny.make_inputs(1, 1000 + step)["hidden_states"])
    with torch.no_grad(), tiny.model.cache_context(branch, step_index=step, num_inference_steps=NUM_STEPS):
        return tiny.model(**kw, timestep=torch.full((1,), 900.0 - 300 * step), return_dict=False)[0]


def test_step_level_policy_without_an_uncond_branch_is_never_offered_cfg():
    tiny = TINY["wan"]()
    policy = StepScripted([0, 1, 1])
    attach_runtime(tiny.model, policy)
    for s in range(NUM_STEPS):
        _cond_only_step(tiny, s)
    assert policy.seen_masks[1] == [[True, True, False]]
    assert cache_summary(tiny.model).actions() == {"cond": ["FULL", "STEP", "STEP"]}


def test_an_uncond_call_without_a_decision_of_its_step_computes():
    tiny = TINY["wan"]()
    policy = StepScripted([0, 1, 1])
    attach_runtime(tiny.model, policy)
    _cond_only_step(tiny, 0)
    _cond_only_step(tiny, 0, "uncond")
    _cond_only_step(tiny, 1, "uncond")  # step 1 has no cond decision
    assert cache_summary(tiny.model).actions() == {"cond": ["FULL"], "uncond": ["FULL", "FULL"]}
    assert len(policy.seen_masks) == 1


def test_an_object_that_is_not_a_policy_is_refused_by_name():
    from cachepilot.runtime import NotAPolicyError

    class Half:
        name = "half"

        def decide(self, signals, valid):
            return FULL

    with pytest.raises(NotAPolicyError, match="Half is not a cache policy: it lacks step_level, probe_blocks"):
        attach_runtime(TINY["wan"]().model, Half())


def test_a_signal_declared_once_is_measured_and_read_by_name():
    """One `register_signal` call: the runtime keeps nothing new for it and the policy reads it by name."""
    from cachepilot.runtime import SIGNALS, Signal, register_signal
    from cachepilot.runtime import signals as declared

    peak = Signal("residual_peak", "largest |r| of the last FULL residual", "refresh", "residual",
                  lambda new, old, gap, frames: float(new.abs().max()), optional=True)
    register_signal(peak)
    try:
        tiny, seen = TINY["wan"](), []

        class Reader(Scripted):
            def decide(self, signals, valid):
                seen.append(signals.residual_peak)
                return super().decide(signals, valid)

        bare = copy.deepcopy(tiny.model)
        probe = Probe(tiny, bare)
        denoise_step(tiny, bare, 0)
        attach_runtime(tiny.model, Reader([FULL, STEP], signals=frozenset({"residual_peak"})))
        for s in range(2):
            denoise_step(tiny, tiny.model, s)
        cond0 = probe.records[0]
        assert seen[:2] == [None, None]  # step 0: nothing computed yet
        assert seen[2] == pytest.approx(float((cond0["out"][0] - cond0[0][0]).abs().max()))  # cond, step 1
        with pytest.raises(ValueError, match="exists already"):
            register_signal(peak)
    finally:
        del SIGNALS["residual_peak"]
        declared.OPTIONAL_SIGNALS.discard("residual_peak")
        declared.MEASURED.discard("residual_peak")
