"""The reference store: round trip, reuse, corruption detection, keys; the observation spec; step-level policies."""

import json

import numpy as np
import pytest
import torch

from cachepilot.cli import main
from cachepilot.envs.references import ReferenceStore, model_hash
from cachepilot.policies.observation import DEFAULT_FEATURES, Feature, ObservationSpec
from cachepilot.runtime import Signals

PROMPT = "a red square moving left quickly on a plain background"


@pytest.fixture
def store(toy_pipe, tmp_path):
    return ReferenceStore(toy_pipe, "toy-wan", steps=4, guidance=5.0, root=tmp_path / "refs")


def test_round_trip_matches_an_uncached_generation(store, toy_pipe):
    ref = store.get(PROMPT, 3, trajectory=True)
    frames = toy_pipe(prompt=[PROMPT], num_inference_steps=4, guidance_scale=5.0,
                      generator=[torch.Generator().manual_seed(3)], output_type="np").frames[0]
    np.testing.assert_allclose(ref.output.numpy(), frames, atol=1e-6)
    assert ref.trajectory.shape[0] == 4 and len(ref.signals) == 8  # 4 steps x (cond, uncond)
    again = store.load(PROMPT, 3, trajectory=True)
    assert torch.equal(again.output, ref.output) and torch.equal(again.trajectory, ref.trajectory)
    assert again.signals == ref.signals


def test_reuse_across_store_instances_without_recomputing(store, toy_pipe, monkeypatch):
    store.get(PROMPT, 0)
    other = ReferenceStore(toy_pipe, "toy-wan", steps=4, guidance=5.0, root=store.root)
    monkeypatch.setattr(other, "_build", lambda *a: pytest.fail("rebuilt an existing reference"))
    assert other.get(PROMPT, 0) is not None
    assert store.load(PROMPT, 0, trajectory=True) is None  # stored without a trajectory


def test_corrupted_or_truncated_entry_is_detected_and_rebuilt(store):
    ref = store.get(PROMPT, 1)
    entry = json.loads(store.index_path.read_text())[ref.key.digest]
    path = store.root / entry["file"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted"):
        assert store.load(PROMPT, 1) is None
    path.write_bytes(bytes(data[:100]))
    with pytest.warns(UserWarning, match="corrupted"):
        rebuilt = store.get(PROMPT, 1)
    assert torch.equal(rebuilt.output, ref.output)
    assert store.load(PROMPT, 1) is not None


def test_corrupted_index_is_rebuilt(store):
    store.get(PROMPT, 2)
    store.index_path.write_text("{not json")
    with pytest.warns(UserWarning, match="index"):
        assert store.get(PROMPT, 2) is not None
    assert store.load(PROMPT, 2) is not None


def test_keys_separate_everything_that_changes_the_output(store, toy_pipe):
    keys = {store.key(PROMPT, 0).digest, store.key(PROMPT, 1).digest, store.key("a red circle", 0).digest,
            ReferenceStore(toy_pipe, "toy-wan", steps=5, root=store.root).key(PROMPT, 0).digest,
            ReferenceStore(toy_pipe, "toy-wan", steps=4, guidance=3.0, root=store.root).key(PROMPT, 0).digest}
    assert len(keys) == 5
    before = model_hash(toy_pipe)
    with torch.no_grad():
        p = next(toy_pipe.transformer.parameters())
        saved = p.clone()
        p[0] += 1e-3
        changed = model_hash(toy_pipe)
        p.copy_(saved)
    assert changed != before and model_hash(toy_pipe) == before


def test_model_hash_does_not_depend_on_where_the_weights_live(toy_copy):
    from cachepilot.models.registry import load_pipeline

    assert model_hash(load_pipeline("toy-wan", toy_copy)) == model_hash(load_pipeline("toy-wan"))


def test_references_build_cli(tmp_path, capsys):
    assert main(["references", "build", "--pairs", "2", "--steps", "3", "--root", str(tmp_path)]) == 0
    assert "2 references ready" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "index.json").read_text())) == 2


# ---- observation spec -------------------------------------------------------------------------
def _signals(**kw):
    base = dict(step=10, num_steps=50, branch="cond", sample=0, sigma=0.8, timestep=800.0, temb_rel_l1=0.01,
                temb_proj_rel_l1=None, modulated_rel_l1=None, indicator_rel_l1=0.01, probe_rel_l1=None,
                residual_norm_ratio=0.95, residual_rel_l1=None, mag_accumulated_error=0.0, motion_energy=0.3,
                cfg_diff_drift=None, mid_block_change=None, steps_since_full=2, compute_spent=0.5)
    return Signals(**(base | kw))


def test_observation_normalisation_is_documented_arithmetic():
    spec = ObservationSpec()
    obs = dict(zip(spec.names, spec.build(_signals(), budget=0.4)))
    assert obs["step_fraction"] == pytest.approx((10 / 49 - 0.5) / 0.5)
    assert obs["temb_rel_l1"] == pytest.approx((np.log10(0.01 + 1e-4) + 2) / 2)
    assert obs["modulated_rel_l1"] == -1.0  # missing
    assert obs["residual_norm_ratio"] == pytest.approx(-0.5)
    assert obs["steps_since_full"] == pytest.approx(0.4)
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


def test_an_option_at_its_neutral_value_leaves_the_fingerprint_alone():
    """Options added to a module since weights were saved, at the value that computes what those weights did,
    must not change the identifying config, or every file tied to those weights goes stale."""
    from cachepilot.models.toy_wan.text_encoder import ToyPromptEncoder
    from cachepilot.provenance import identifying_config

    kwargs = dict(vocabulary=["a", "red", "circle"], max_length=4, dim=8, num_heads=2)
    old, new = ToyPromptEncoder(**kwargs, max_relative_distance=0), ToyPromptEncoder(**kwargs, max_relative_distance=3)
    assert "max_relative_distance" not in identifying_config(old)
    assert identifying_config(new)["max_relative_distance"] == 3


def test_shipped_profiles_match_the_shipped_weights():
    """Profiles measured for the shipped toy-wan are tied to its model hash: retraining it means remeasuring them."""
    from cachepilot.models.registry import load_pipeline, weights_path
    from cachepilot.evaluation.oracle import GAIN_FILE, stored_gain

    pipe = load_pipeline("toy-wan")
    assert stored_gain(weights_path("toy-wan") / GAIN_FILE, model_hash(pipe), 50, 5.0) is not None
