"""The toy-wan trainer runs, resumes from its last checkpoint and exports a loadable pipeline."""

import torch

from cachepilot.models.registry import load_pipeline, write_checksums
from cachepilot.train.toy_model import (ToyTrainConfig, ToyWanModule, export_toy_wan, load_module, shifted_sigmas,
                                       train_toy_wan)


def test_shifted_sigmas_match_wan_shift():
    u = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shifted_sigmas(u, 3.0), torch.tensor([0.0, 0.75, 1.0]))


def test_train_resume_export(tmp_path):
    run = tmp_path / "run"
    cfg = ToyTrainConfig(max_steps=2, batch_size=2, val_every=2, warmup_steps=1)
    train_toy_wan(run, cfg, accelerator="cpu", devices=1)
    assert load_module(run)[1]["global_step"] == 2
    cfg.max_steps = 3
    train_toy_wan(run, cfg, accelerator="cpu", devices=1)  # resumes: one more step, not three
    module, facts = load_module(run)
    assert facts["global_step"] == 3

    out = tmp_path / "export"
    info = export_toy_wan(run, out)
    write_checksums(out)
    assert info["training_steps"] == 3
    pipe = load_pipeline("toy-wan", model_path=out)
    ema = module.ema["transformer"].state_dict()
    for name, value in pipe.transformer.state_dict().items():
        assert torch.equal(value, ema[name]), name


def test_warm_start_from_an_export_counts_prior_steps(tmp_path):
    from cachepilot.models.card import update_card

    first = tmp_path / "first"
    train_toy_wan(first, ToyTrainConfig(max_steps=2, batch_size=2, val_every=2, warmup_steps=1), accelerator="cpu", devices=1)
    exported = tmp_path / "exported"
    update_card(exported_path := exported, training=export_toy_wan(first, exported))
    module = train_toy_wan(tmp_path / "second", ToyTrainConfig(max_steps=1, batch_size=2, val_every=1, warmup_steps=1),
                           accelerator="cpu", devices=1, init_from=exported_path)
    assert module.cfg.prior_steps == 2
    assert export_toy_wan(tmp_path / "second", tmp_path / "again")["training_steps"] == 3
    fresh = ToyWanModule()
    fresh.load_exported(exported_path)
    pipe = load_pipeline("toy-wan", model_path=exported_path)
    for name, value in pipe.transformer.state_dict().items():
        assert torch.equal(fresh.transformer.state_dict()[name], value) and torch.equal(fresh.ema["transformer"].state_dict()[name], value)
