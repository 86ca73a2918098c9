"""No code from data files: every state a run resumes from is read in a format that cannot run code, and only once
its checksum matches. A file planted in a run folder is refused or set aside; its payload never runs."""

import ast
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cachepilot.integrity import IntegrityError

ROOT = Path(__file__).parents[1]
SOURCE_FOLDERS = ("cachepilot", "policies", "envs", "evaluation", "train", "infer", "benchmarks")


class Payload:
    """What an attacker plants: unpickling it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Payload(marker)}, path)


# ---- the state file ---------------------------------------------------------------------------------
def _sample_state() -> dict:
    return {"weights": {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.uint8)},
             "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.999),
                                                                                      "params": [0, 1]}]},
             "random": (3, tuple(range(5)), None), "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.0),
             "big": 2**100, "nan": float("nan"), "flag": True, "text": "x"}


def test_write_then_read_gives_back_the_same_state(tmp_path):
    from cachepilot.state_file import read_meta, read_state, write_state

    state = _sample_state()
    write_state(tmp_path / "s.json", state, {"settings": {"steps": 3}})
    back, meta = read_state(tmp_path / "s.json")
    assert meta == {"settings": {"steps": 3}} == read_meta(tmp_path / "s.json")
    assert torch.equal(back["weights"]["a"], state["weights"]["a"]) and back["weights"]["b"].dtype == torch.uint8
    assert back["optimizer"]["state"][0]["step"].item() == 3.0  # integer keys stay integers
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["random"] == (3, (0, 1, 2, 3, 4), None)
    assert back["numpy"][1].dtype == np.uint32 and back["numpy"][1].tolist() == [0, 1, 2, 3]
    assert back["big"] == 2**100 and math.isnan(back["nan"]) and back["flag"] is True
    # a second write replaces the tensors file, leaving one
    write_state(tmp_path / "s.json", {"x": torch.ones(2)})
    assert len(list(tmp_path.glob("s.json.*.safetensors"))) == 1


def test_the_tensors_are_verified_before_they_are_parsed(tmp_path, monkeypatch):
    from cachepilot import state_file
    from cachepilot.state_file import read_state, write_state

    write_state(tmp_path / "s.json", {"x": torch.ones(3)})
    (tensors,) = tmp_path.glob("s.json.*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    monkeypatch.setattr(state_file, "load_tensors", lambda blob: pytest.fail("parsed before the checksum was checked"))
    with pytest.raises(IntegrityError, match="does not match the checksum"):
        read_state(tmp_path / "s.json")


def test_an_edited_state_record_is_refused(tmp_path):
    from cachepilot.state_file import read_state, write_state

    write_state(tmp_path / "s.json", {"n": 1}, {"timesteps": 30})
    record = json.loads((tmp_path / "s.json").read_text())
    record["meta"]["timesteps"] = 3000
    (tmp_path / "s.json").write_text(json.dumps(record))
    with pytest.raises(IntegrityError, match="checksum"):
        read_state(tmp_path / "s.json")


def test_a_state_file_cannot_name_a_tensor_file_elsewhere(tmp_path):
    from cachepilot.integrity import seal
    from cachepilot.state_file import read_state

    blob = (tmp_path / "elsewhere.safetensors")
    blob.write_bytes(b"x")
    record = seal({"kind": "cachepilot-state", "meta": {}, "tree": None, "tensors": "../elsewhere.safetensors",
                   "sha256": hashlib.sha256(b"x").hexdigest()})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "s.json").write_text(json.dumps(record))
    with pytest.raises(IntegrityError, match="outside its folder"):
        read_state(tmp_path / "run" / "s.json")


# ---- planted files in run folders -------------------------------------------------------------------
def test_a_pickle_planted_as_the_ppo_checkpoint_never_runs(tmp_path, capsys):
    """The old checkpoint name and the new one both hold a payload: training sets the new one aside and starts over."""
    from cachepilot.cli import main

    marker = tmp_path / "pwned"
    run_dir = tmp_path / "policy.run"
    _plant(run_dir / "ppo_resume.pt", marker)
    _plant(run_dir / "ppo_resume.json", marker)
    assert main(["train", "--algo", "ppo", "--steps", "3", "--train-steps", "3", "--train-guidance", "5", "--pairs", "2", "--val-pairs", "1", "--num-envs", "2",
                 "--timesteps", "6", "--budgets", "0.4,0.6", "--out", str(tmp_path / "policy"),
                 "--references", str(tmp_path / "refs")]) == 0
    assert not marker.exists()
    assert "ppo_resume.json is damaged" in capsys.readouterr().out
    assert (run_dir / "ppo_resume.json.damaged").is_file()


@pytest.mark.parametrize("with_digest", [False, True])
def test_a_pickle_planted_as_a_lightning_checkpoint_never_runs(with_digest, tmp_path):
    """Without its recorded digest it is not read at all; with a digest that matches (an attacker who wrote both), the
    loader takes tensors and plain values only and refuses the payload."""
    from cachepilot.train.toy_model import last_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _plant(path, marker)
    if with_digest:
        Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    assert last_checkpoint(tmp_path / "run") is None
    assert not marker.exists()
    assert path.with_name("last.ckpt.damaged").is_file()


def test_a_distillation_round_resumes_only_a_verified_checkpoint(tmp_path):
    from cachepilot.train.distill import DistillConfig, fit

    rng = np.random.default_rng(0)
    arrays = {"obs": rng.normal(size=(40, 4)).astype(np.float32), "masks": np.ones((40, 3), dtype=bool),
              "labels": rng.integers(0, 3, 40)}
    config = DistillConfig(epochs=2)
    first = fit(arrays, tmp_path, config, 0, log=lambda *a: None)
    last = tmp_path / "checkpoints" / "round0" / "last.ckpt"
    assert Path(f"{last}.sha256").read_text().strip() == hashlib.sha256(last.read_bytes()).hexdigest()
    again = fit(arrays, tmp_path, config, 0, log=lambda *a: None)  # resumed, finished: the same weights
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    marker = tmp_path / "pwned"
    _plant(last, marker)
    said = []
    fit(arrays, tmp_path, config, 0, log=said.append)
    assert not marker.exists() and any("last.ckpt is damaged" in s for s in said)


# ---- nothing else reads code from data ---------------------------------------------------------------
def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_no_loader_in_the_source_can_run_code_from_a_file():
    """torch.load only with weights_only=True; no pickle, no np.load(allow_pickle=True), no yaml.load; Lightning
    loads its checkpoints with weights_only=True."""
    found = []
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "import pickle" in text or "cloudpickle" in text or "yaml.load(" in text:
                found.append(f"{path}: pickle or yaml.load")
            for func, kwargs in _calls(path):
                if func.endswith("torch.load") and kwargs.get("weights_only") != "True":
                    found.append(f"{path}: {func} without weights_only=True")
                if func.endswith("np.load") and kwargs.get("allow_pickle", "False") != "False":
                    found.append(f"{path}: np.load with allow_pickle")
                if func.endswith(".fit") and "ckpt_path" in kwargs and kwargs.get("weights_only") != "True":
                    found.append(f"{path}: trainer.fit resuming without weights_only=True")
                if func.endswith("PPO.load") or func.endswith(".load_from_checkpoint"):
                    found.append(f"{path}: {func} unpickles")
    assert found == []
