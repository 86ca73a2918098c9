"""Forecasting actions: the extrapolation, what each forecast adds back on every model family (against the
definition, built with plain torch hooks), validity, per-sample batches, and what the history costs in memory."""

import copy

import pytest
import torch
from test_runtime import Probe, PerSample, _add, _sub, denoise_step
from tiny_models import TINY

from cachepilot.models.adapters import adapter_for
from cachepilot.policies.schedule import FixedSchedule
from cachepilot.runtime import CFG, FULL, STEP, Action, InvalidActionError, attach_runtime, cache_summary, remove_cache
from cachepilot.runtime.forecast import extrapolate
from cachepilot.runtime.signals import rel_l1


@pytest.fixture(params=list(TINY))
def tiny(request):
    return TINY[request.param]()


def test_extrapolation_is_exact_for_polynomials_of_its_order_and_order_0_is_the_value_itself():
    times = [7.0, 4.0, 3.0]  # unevenly spaced, most recent first
    base = torch.randn(5, 3)
    poly = lambda t: base * (1 + 0.5 * t - 0.25 * t**2)  # noqa: E731
    assert torch.allclose(extrapolate([poly(t) for t in times], times, 9.0), poly(9.0), atol=1e-4)
    line = lambda t: base * (2 - t)  # noqa: E731
    assert torch.allclose(extrapolate([line(7.0), line(4.0)], [7.0, 4.0], 8.5), line(8.5), atol=1e-5)
    value = torch.randn(4)
    assert extrapolate([value], [3.0], 5.0) is value
    with pytest.raises(ValueError, match="distinct times"):
        extrapolate([value, value], [3.0, 3.0], 5.0)


def _records_by_branch(tiny, probe, step_records):
    """{branch: {key: streams}} of one step's records; batched-CFG models record one call holding [uncond; cond]."""
    if tiny.batched_cfg:
        (r,) = step_records
        rows = {"uncond": slice(0, 1), "cond": slice(1, 2)}
        return {b: {k: tuple(t[s] for t in v) for k, v in r.items()} for b, s in rows.items()}
    return dict(zip(("cond", "uncond"), step_records))


def _forecast_reference(tiny, action: Action) -> torch.Tensor:
    """Steps 0 and 1 FULL, step 2 under the order-1 forecast `action`, from its definition: what the reuse adds
    back is extrapolated along the line through its values at steps 0 and 1 (in step index), 2 * v1 - v0."""
    model = copy.deepcopy(tiny.model)
    probe = Probe(tiny, model)
    history = []
    for step in range(2):
        denoise_step(tiny, model, step)
        history.append(_records_by_branch(tiny, probe, probe.records))
        probe.records.clear()
    k = action.k if action.kind.value == "BLOCK" else 0

    def line(values):  # values at steps 0 and 1 -> forecast at step 2
        return tuple(2 * b - a for a, b in zip(*values))

    def kept(branch):  # the residual added back by STEP / BLOCK_k at step 2
        return line([_sub(h[branch]["out"], h[branch][k]) for h in history])

    cfg_diff = line([_sub(h["uncond"]["out"], h["cond"]["out"]) for h in history])

    def rebuilt(record, branch, cond_out=None):
        if action.kind is CFG.kind:
            return record["out"] if branch == "cond" else _add(cond_out, cfg_diff)
        return _add(record[k], kept(branch))

    def override(record):
        if tiny.batched_cfg:
            cond = rebuilt({key: tuple(t[1:2] for t in v) for key, v in record.items()}, "cond")
            unc = rebuilt({key: tuple(t[0:1] for t in v) for key, v in record.items()}, "uncond", cond)
            return tuple(torch.cat([u, c]) for u, c in zip(unc, cond))
        branch = "cond" if len(probe.records) == 1 else "uncond"
        out = rebuilt(record, branch, getattr(probe, "cond_out", None))
        if branch == "cond":
            probe.cond_out = out
        return out

    probe.override = override
    return denoise_step(tiny, model, 2)


@pytest.mark.parametrize("action", ["STEP_F1", "CFG_F1", "BLOCK_1_F1"])
def test_forecasts_add_back_their_definition(tiny, action):
    action = Action.parse(action)
    expected = _forecast_reference(tiny, action)
    attach_runtime(tiny.model, FixedSchedule([FULL, FULL, action]), batched_cfg=tiny.batched_cfg)
    got = [denoise_step(tiny, tiny.model, s) for s in range(3)][-1]
    # the runtime extrapolates in float32 from stored residuals; the reference from block outputs: the same
    # arithmetic in another order
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, _plain_reuse(tiny, Action(action.kind, action.k)), rtol=0, atol=1e-4)
    summary = cache_summary(tiny.model)
    assert summary.actions()["uncond"][-1] == str(action)


def _plain_reuse(tiny, action: Action) -> torch.Tensor:
    model = copy.deepcopy(tiny.model)
    remove_cache(model)
    attach_runtime(model, FixedSchedule([FULL, FULL, action]), batched_cfg=tiny.batched_cfg)
    return [denoise_step(tiny, model, s) for s in range(3)][-1]


def test_a_forecast_of_order_0_is_the_plain_reuse_bit_for_bit(tiny):
    """Keeping a deeper history changes nothing for a reuse: STEP with room for order-2 forecasts equals STEP."""
    deeper = copy.deepcopy(tiny.model)
    attach_runtime(tiny.model, FixedSchedule([FULL, FULL, STEP, Action.block(1)]), batched_cfg=tiny.batched_cfg)
    attach_runtime(deeper, FixedSchedule([FULL, FULL, STEP, Action.block(1), STEP.forecasting(2)]),
                   batched_cfg=tiny.batched_cfg)
    for s in range(4):
        assert torch.equal(denoise_step(tiny, tiny.model, s), denoise_step(tiny, deeper, s))
    assert STEP.forecasting(0) == STEP


def test_a_forecast_needs_its_history_and_the_mask_says_so():
    tiny, seen = TINY["wan"](), []

    class Spy(FixedSchedule):
        def decide(self, signals, valid):
            seen.append(valid)
            return super().decide(signals, valid)

    attach_runtime(tiny.model, Spy([FULL, STEP_F := STEP.forecasting(1), FULL, STEP.forecasting(2)]))
    with pytest.raises(InvalidActionError, match="chose STEP_F1 at step 1"):
        for s in range(2):
            denoise_step(tiny, tiny.model, s)
    assert STEP_F not in seen[1] and STEP in seen[1]  # one FULL so far: reuse, but no line to extrapolate


def test_forecasts_in_sigma_extrapolate_along_the_noise_levels_and_need_them():
    sigmas = [1.0, 0.9, 0.6]  # unevenly spaced, as a shifted flow-matching schedule
    tiny = TINY["wan"]()
    reference = copy.deepcopy(tiny.model)
    probe = Probe(tiny, reference)
    residuals = []
    for s in range(2):
        denoise_step(tiny, reference, s, sigma=sigmas[s])
        residuals.append(_sub(probe.records[0]["out"], probe.records[0][0]))  # the cond call's
        probe.records.clear()
    slope = (sigmas[2] - sigmas[1]) / (sigmas[1] - sigmas[0])
    line = tuple(r1 + (r1 - r0) * slope for r0, r1 in zip(*residuals))
    probe.override = lambda record: _add(record[0], line) if len(probe.records) == 1 else record["out"]
    expected_cond = denoise_step(tiny, reference, 2, sigma=sigmas[2])[1:]  # rows [uncond; cond]

    forecast = FixedSchedule([FULL, FULL, STEP.forecasting(1)], forecast_basis="sigma")
    attach_runtime(tiny.model, forecast)
    got = [denoise_step(tiny, tiny.model, s, sigma=sigmas[s]) for s in range(3)][-1]
    assert torch.allclose(got[1:], expected_cond, rtol=0, atol=1e-5)
    remove_cache(tiny.model)
    attach_runtime(tiny.model, forecast)
    with pytest.raises(InvalidActionError, match="chose STEP_F1 at step 2"):  # no sigma given: no time to forecast in
        for s in range(3):
            denoise_step(tiny, tiny.model, s)


def test_per_sample_forecasts_in_one_batch_equal_running_samples_alone(tiny):
    f1 = STEP.forecasting(1)
    table = {(2, 0): f1, (2, 1): Action.block(1).forecasting(1), (3, 1): f1}
    attach_runtime(tiny.model, _forecasting(PerSample(table, block_ks=(1,))), batched_cfg=tiny.batched_cfg)
    batched = [denoise_step(tiny, tiny.model, s, batch=2) for s in range(4)]
    remove_cache(tiny.model)
    for sample in range(2):
        alone = _forecasting(PerSample({(s, 0): a for (s, i), a in table.items() if i == sample}, block_ks=(1,)))
        attach_runtime(tiny.model, alone, batched_cfg=tiny.batched_cfg)
        singles = [denoise_step(tiny, tiny.model, s, batch=2, only=sample) for s in range(4)]
        remove_cache(tiny.model)
        for s in range(4):
            assert torch.allclose(batched[s][[sample, 2 + sample]], singles[s], atol=1e-5), (s, sample)


def _forecasting(policy, order: int = 1):
    policy.forecast_order = order
    return policy


def test_the_history_kept_is_what_the_declared_order_needs():
    """Per branch and sample: the residual (and, for CFG, the difference) once more per forecast order."""
    sizes = {}
    for order in (0, 1, 2):
        tiny = TINY["wan"]()
        attach_runtime(tiny.model, FixedSchedule([FULL] * 3 + ([STEP.forecasting(order)] if order else [])))
        for s in range(3):
            denoise_step(tiny, tiny.model, s)
        sizes[order] = cache_summary(tiny.model).kept_bytes
    x = TINY["wan"]().make_inputs(1, 0)["hidden_states"]
    tokens = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
    residual = tokens * 16 * 4  # tokens x width (2 heads x 8) x float32
    for order in (1, 2):
        assert sizes[order]["cond"] - sizes[0]["cond"] == order * residual
        assert sizes[order]["uncond"] - sizes[0]["uncond"] == order * 2 * residual  # residual and CFG difference


def test_the_forecast_error_signal_compares_a_full_with_the_line_through_the_two_fulls_before():
    tiny = TINY["wan"]()
    model, residuals = copy.deepcopy(tiny.model), []
    probe = Probe(tiny, model)
    for step in range(3):
        denoise_step(tiny, model, step)
        cond = _records_by_branch(tiny, probe, probe.records)["cond"]
        residuals.append(_sub(cond["out"], cond[0])[0])
        probe.records.clear()

    class Reader(FixedSchedule):
        signals = frozenset({"forecast_rel_l1"})

    attach_runtime(tiny.model, Reader([FULL] * 3, forecast=1))
    for step in range(3):
        denoise_step(tiny, tiny.model, step)
    measured = [s["forecast_rel_l1"] for s in cache_summary(tiny.model).full_stats if s["branch"] == "cond"]
    assert measured[:2] == [None, None]  # fewer than two FULLs before: no forecast to compare with
    line = 2 * residuals[1] - residuals[0]  # steps 0 and 1 extrapolated to step 2
    assert measured[2] == pytest.approx(rel_l1(residuals[2], line), rel=1e-4)
    assert measured[2] != pytest.approx(rel_l1(residuals[2], residuals[1]), rel=1e-2)
