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
