"""Where a number was measured: one line naming the machine, for benchmark tables, reports and cards."""

from __future__ import annotations

import os
import platform


def machine_summary() -> str:
    """E.g. "x86_64, 2 CPU cores, torch 2.14.1, 2 threads", plus the GPU's name when torch sees one."""
    import torch

    parts = [platform.machine(), f"{os.cpu_count()} CPU cores", f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    return ", ".join(parts)
