"""Provenance: where numbers were measured, and which config entries identify a model for fingerprints."""

import os
import platform

import torch

from cachepilot.provenance import machine_summary

def test_an_option_at_its_neutral_value_leaves_the_fingerprint_alone():
    """Options added to a module since weights were saved, at the value that computes what those weights did,
    must not change the identifying config, or every file tied to those weights goes stale."""
    from cachepilot.models.toy_wan.text_encoder import ToyPromptEncoder
    from cachepilot.provenance import identifying_config

    kwargs = dict(vocabulary=["a", "red", "circle"], max_length=4, dim=8, num_heads=2)
    old, new = ToyPromptEncoder(**kwargs, max_relative_distance=0), ToyPromptEncoder(**kwargs, max_relative_distance=3)
    assert "max_relative_distance" not in identifying_config(old)
    assert identifying_config(new)["max_relative_distance"] == 3


def test_machine_summary_reads_the_machine_when_called():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert machine_summary().split(", ") == [platform.machine(), f"{os.cpu_count()} CPU cores",
                                                 f"torch {torch.__version__}", "1 threads"]
    finally:
        torch.set_num_threads(threads)
