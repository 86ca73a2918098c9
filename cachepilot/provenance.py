"""Where a number was measured and on what: the machine line for benchmark tables, reports and cards, and the
part of a module's config that identifies the model, for the fingerprints that tie files to weights."""

from __future__ import annotations

import os
import platform

import torch


def machine_summary() -> str:
    """E.g. "x86_64, 2 CPU cores, torch 2.14.1, 2 threads", plus the GPU's name when torch sees one."""
    parts = [platform.machine(), f"{os.cpu_count()} CPU cores", f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    return ", ".join(parts)


def identifying_config(module) -> dict:
    """The config entries that say what `module` computes, for fingerprints.

    Private keys say where it was loaded from, so they are left out; so are options a module class lists in
    `hash_neutral_config` at the value that computes what modules saved before the option did, so adding an
    option does not orphan files tied to weights saved without it.
    """
    neutral = getattr(module, "hash_neutral_config", {})
    config = module.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers' configs are objects
    return {k: v for k, v in config.items()
            if not k.startswith("_") and not (k in neutral and neutral[k] == v)}
