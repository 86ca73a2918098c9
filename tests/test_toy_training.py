"""The toy-wan trainer runs, resumes from its last checkpoint and exports a loadable pipeline."""

import pytest
import torch

from cachepilot.models.registry import load_pipeline
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
    assert info["training_steps"] == 3 and (out / "checksums.json").is_file()  # verified as a whole when loaded
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
    module = train_toy_wan(tmp_path / "second", ToyTrainConfig(max_steps=2, batch_size=2, val_every=1, warmup_steps=1),
                           accelerator="cpu", devices=1)  # resumed without init_from: still 2 steps behind the start
    assert module.cfg.prior_steps == 2
    assert export_toy_wan(tmp_path / "second", tmp_path / "again")["training_steps"] == 4
    fresh = ToyWanModule()
    fresh.load_exported(exported_path)
    pipe = load_pipeline("toy-wan", model_path=exported_path)
    for name, value in pipe.transformer.state_dict().items():
        assert torch.equal(fresh.transformer.state_dict()[name], value) and torch.equal(fresh.ema["transformer"].state_dict()[name], value)


def test_position_channels_give_each_pixel_its_frame_row_and_column():
    from cachepilot.models.toy_wan.components import position_channels, with_position

    grid = position_channels(8, 16, 16)
    assert grid.shape == (3, 8, 16, 16)
    frame, row, column = grid
    assert torch.equal(frame[:, 0, 0], torch.linspace(-1, 1, 8)) and torch.equal(frame[3], torch.full((16, 16), frame[3, 0, 0].item()))
    assert torch.equal(row[0, :, 5], torch.linspace(-1, 1, 16)) and torch.equal(column[2, 7], torch.linspace(-1, 1, 16))
    latents = torch.randn(2, 3, 8, 16, 16)
    assert with_position(latents, 3) is latents  # a transformer without position channels gets the latent alone
    model_input = with_position(latents, 6)
    assert torch.equal(model_input[:, :3], latents) and torch.equal(model_input[1, 3:], grid)
    with pytest.raises(ValueError, match="5 channels"):  # neither +0 nor +3
        with_position(latents, 5)


def test_warm_start_widens_an_export_without_position_channels_or_word_distance_bias(tmp_path):
    """An export from before the position channels (in_channels 3) and the prompt encoder's word-distance bias
    still warm-starts the trainer: the new inputs get zero weights and the bias its starting prior, so with
    that bias zeroed the widened model denoises as the export did."""
    from cachepilot.models.toy_wan import components
    from cachepilot.models.toy_wan.pipeline import ToyWanPipeline
    from cachepilot.models.toy_wan.text_encoder import ToyPromptEncoder, locality_prior

    old = ToyWanPipeline(text_encoder=ToyPromptEncoder(vocabulary=components.VOCABULARY, dim=components.TEXT_DIM),
                         scheduler=components.build_scheduler(),
                         transformer=components.WanTransformer3DModel(**{**components.TRANSFORMER_CONFIG, "in_channels": 3}))
    old.save_pretrained(tmp_path / "old")
    module = ToyWanModule()
    module.load_exported(tmp_path / "old")
    assert module.transformer.config.in_channels == 6
    widened = module.transformer.patch_embedding.weight
    assert torch.equal(widened[:, :3], old.transformer.patch_embedding.weight) and not widened[:, 3:].any()
    prior = locality_prior(4, components.TEXT_RELATIVE_DISTANCE)
    assert torch.equal(module.text_encoder.relative_bias, prior) and torch.equal(module.ema["text_encoder"].relative_bias, prior)
    with torch.no_grad():
        module.ema["text_encoder"].relative_bias.zero_()
    new = module.ema_pipeline()
    kwargs = dict(prompt=["a red circle moving left quickly on a plain background"], num_inference_steps=3, output_type="latent")
    expected = old(generator=[torch.Generator().manual_seed(0)], **kwargs).frames
    got = new(generator=[torch.Generator().manual_seed(0)], **kwargs).frames
    assert torch.allclose(got, expected, atol=1e-4)
