"""The observation spec: normalisation arithmetic, the default features, save/load and validation."""

import json

import numpy as np
import pytest

from cachepilot.policies.observation import DEFAULT_FEATURES, Feature, ObservationSpec
from cachepilot.runtime import SIGNALS, Signals

def _signals(**kw):
    base = dict(step=10, num_steps=50, branch="cond", sample=0, sigma=0.8, timestep=800.0, temb_rel_l1=0.01,
                temb_proj_rel_l1=None, modulated_rel_l1=None, indicator_rel_l1=0.01, probe_rel_l1=None,
                residual_norm_ratio=0.95, residual_rel_l1=None, mag_accumulated_error=0.0, motion_energy=0.3,
                cfg_diff_drift=None, mid_block_change=None, steps_since_full=2, compute_spent=0.5, sigma_step=0.02,
                sigma_since_full=0.04, guidance=5.0, modulated_rate=None, residual_rate=2.0, residual_norm_rate=-0.7)
    return Signals(**(base | kw))


def test_observation_normalisation_is_documented_arithmetic():
    spec = ObservationSpec()
    obs = dict(zip(spec.names, spec.build(_signals(), budget=0.4)))
    assert obs["sigma"] == pytest.approx((0.8 - 0.5) / 0.5)
    assert obs["sigma_step"] == pytest.approx((0.02 - 0.05) / 0.05)
    assert obs["sigma_since_full"] == pytest.approx((0.04 - 0.2) / 0.2)
    assert obs["residual_rate"] == pytest.approx(np.log10(2.0 + 1e-4) / 1.5)
    assert obs["modulated_rate"] == -1.0  # missing
    assert obs["residual_norm_rate"] == pytest.approx(-0.35)
    # 0.4 * 50 steps allowed, 0.5 * 10 spent, 40 steps left
    assert obs["budget_left"] == pytest.approx(((0.4 * 50 - 0.5 * 10) / 40 - 0.5) / 0.5)
    assert Feature("x", scale=0.01).normalise(1.0) == 5.0 and Feature("x").normalise(float("nan")) == 0.0


def test_observation_spec_round_trip_and_validation():
    spec = ObservationSpec()
    again = ObservationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.features == DEFAULT_FEATURES
    bad = spec.to_dict() | {"features": [{"name": "colour_of_the_sky"}]}
    with pytest.raises(ValueError, match="unknown features"):
        ObservationSpec.from_dict(bad)
    with pytest.raises(ValueError, match="version"):
        ObservationSpec.from_dict(spec.to_dict() | {"version": 2})



def test_features_take_their_normalisation_from_the_signal_declarations():
    for feature in DEFAULT_FEATURES:
        if feature.name in SIGNALS:
            s = SIGNALS[feature.name]
            assert (feature.center, feature.scale, feature.log, feature.missing) == (s.center, s.scale, s.log, s.missing)


def test_shipped_policies_carry_their_observation():
    """A policy file carries its own spec: the distilled policy was trained on today's defaults, the PPO one (trained at
    one setting) on the features before them, which it still reads."""
    from cachepilot.models.registry import embedded_path
    from cachepilot.policies.policy_file import load_policy

    assert load_policy(embedded_path("toy-wan") / "policy-distill").card.observation == ObservationSpec()
    ppo = load_policy(embedded_path("toy-wan") / "policy-ppo").card
    assert "step_fraction" in ppo.observation.names and ppo.steps_range == (50, 50)


def test_extra_signals_are_appended_to_the_default_observation_and_travel_with_it():
    spec = ObservationSpec.for_pipeline(None, ("forecast_rel_l1", "sigma", "forecast_rel_l1"))
    assert spec.features == DEFAULT_FEATURES + (Feature.of_signal("forecast_rel_l1"),)  # defaults not repeated
    assert spec.signals_read - ObservationSpec().signals_read == {"forecast_rel_l1"}  # the runtime now computes it
    assert ObservationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ObservationSpec.for_pipeline(None) == ObservationSpec()
    with pytest.raises(ValueError, match="unknown signals \\['colour_of_the_sky'\\]"):
        ObservationSpec.for_pipeline(None, ("colour_of_the_sky",))


def _cond_rows(pipe, steps, names):
    """Every call FULL; the cond branch's signals `names` at each call."""
    from cachepilot.models.stepping import generate_batch
    from cachepilot.policies.base import NoCache
    from cachepilot.runtime import cached

    rows = []

    class Recorder(NoCache):
        signals = frozenset(names)

        def decide(self, signals, valid):
            if signals.branch == "cond":
                rows.append(signals)
            return super().decide(signals, valid)

    with cached(pipe, Recorder(), num_inference_steps=steps):
        generate_batch(pipe, ["a red circle moving left on a blue background"], [0], steps, 5.0, decode=False)
    return rows


def test_rates_keep_their_scale_across_step_counts_where_raw_changes_do_not(toy_pipe):
    """The default observation's changes are per unit of sigma: at 12 and 48 steps their medians agree, while the
    same change between consecutive calls falls about with the step size."""
    names = ("modulated_rel_l1", "modulated_rate", "residual_rel_l1", "residual_rate")
    median = {steps: {n: float(np.median([getattr(r, n) for r in rows if getattr(r, n) is not None])) for n in names}
              for steps, rows in ((s, _cond_rows(toy_pipe, s, names)) for s in (12, 48))}
    for raw, rate in (("modulated_rel_l1", "modulated_rate"), ("residual_rel_l1", "residual_rate")):
        assert median[12][raw] / median[48][raw] > 2.5
        assert 0.7 < median[12][rate] / median[48][rate] < 1.4


def test_gaps_and_steps_are_measured_in_sigma(toy_pipe):
    rows = _cond_rows(toy_pipe, 10, ())
    assert rows[0].sigma_step is None and rows[0].sigma_since_full is None  # nothing before the first call
    for before, row in zip(rows, rows[1:]):
        assert row.sigma_step == pytest.approx(before.sigma - row.sigma)
        assert row.sigma_since_full == pytest.approx(before.sigma - row.sigma)  # every call FULL: the last one
        assert row.guidance == 5.0
