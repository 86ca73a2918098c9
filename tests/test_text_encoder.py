import pytest
import torch

from cachepilot.models.toy_wan import ToyPromptEncoder, UnknownWordsError
from cachepilot.models.toy_wan.components import build_text_encoder


def test_unknown_words_are_named():
    enc = build_text_encoder()
    with pytest.raises(UnknownWordsError, match="'purple', 'triangle'"):
        enc.tokenize(["a purple triangle moving left quickly"])


def test_padding_and_empty_prompt_are_zero():
    enc = build_text_encoder().eval()
    out = enc.encode(["a red circle standing still on a plain background", ""])
    assert out.shape == (2, 24, 64)
    assert torch.count_nonzero(out[0, 9:]) == 0 and torch.count_nonzero(out[0, :9]) > 0
    assert torch.count_nonzero(out[1]) == 0
    assert torch.isfinite(out).all()


def test_save_load_round_trip(tmp_path):
    enc = build_text_encoder().eval()
    enc.save_pretrained(tmp_path)
    again = ToyPromptEncoder.from_pretrained(tmp_path).eval()
    prompts = ["a blue square moving up slowly and a red circle standing still on a gradient background"]
    assert torch.equal(enc.encode(prompts), again.encode(prompts))


TWO_OBJECTS = "a red circle moving left quickly and a blue square moving up slowly on a plain background"
SWAPPED = "a red circle moving up quickly and a blue square moving left slowly on a plain background"


def test_word_distance_bias_lets_the_encoder_tell_which_object_moves_which_way():
    """Wan's cross-attention reads the text as an unordered set of vectors, so the two prompts (same words,
    directions swapped between the objects) must give different sets. The colour words are compared: each
    carries its own object's direction only if the encoder reads word order; without the bias (and with the
    untrained, zero position embeddings) it does not, so no amount of DiT training could bind them."""
    enc = build_text_encoder().eval()
    plain = ToyPromptEncoder(**{**enc.config, "max_relative_distance": 0}).eval()
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if k != "relative_bias"})
    red, blue = 1, 8
    for encoder, bound in ((enc, True), (plain, False)):
        a, b = encoder.encode([TWO_OBJECTS, SWAPPED])
        for word in (red, blue):
            assert ((a[word] - b[word]).norm() > 1e-3 * a[word].norm()) == bound


def test_word_distance_bias_is_the_only_change_and_inference_matches_training():
    """A zero bias computes what an encoder without one does (the first toy-wan weights load unchanged), and
    eval() gives what train() gives (torch's fused inference path misreads per-head masks)."""
    enc = build_text_encoder()
    plain = ToyPromptEncoder(**{**enc.config, "max_relative_distance": 0})
    assert not hasattr(plain, "relative_bias")
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if k != "relative_bias"})
    prompts = [TWO_OBJECTS, "a red circle standing still on a plain background", ""]
    with torch.no_grad():
        trained_mode = enc.train()(enc.tokenize(prompts))
        inference = enc.eval().encode(prompts)
        assert torch.allclose(trained_mode, inference, atol=1e-6) and torch.isfinite(inference).all()
        enc.relative_bias.zero_()
        assert torch.allclose(enc.encode(prompts), plain.eval().encode(prompts), atol=1e-6)
