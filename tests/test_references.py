"""The reference store: round trip, reuse, corruption detection, keys, the model fingerprint."""

import json

import numpy as np
import pytest
import torch

from cachepilot.cli import main
from cachepilot.envs.references import ReferenceStore, model_hash

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
    assert np.array_equal(store.outputs([(PROMPT, 3)] * 2), np.stack([ref.output.numpy()] * 2))  # stacked, in order


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
    original = store.get(PROMPT, 2)
    store.index_path.write_text("{not json")
    with pytest.warns(UserWarning, match="index"):
        rebuilt = store.get(PROMPT, 2)
    assert torch.equal(rebuilt.output, original.output)
    index = json.loads(store.index_path.read_text())  # valid again, with the entry
    assert list(index) == [original.key.digest] and (store.root / index[original.key.digest]["file"]).is_file()
    assert torch.equal(store.load(PROMPT, 2).output, original.output)


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
