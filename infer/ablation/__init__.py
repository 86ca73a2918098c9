"""`cachepilot ablate`: every cache method on the same pairs, and the report of what each achieves."""

from .across import ablate_settings, margins_table
from .config import UNIFORM, AblationConfig, Entry, Kind, Run, sweep_entries
from .runner import Ablation, Runner, ablate
from .setting import Setting

__all__ = ["AblationConfig", "Ablation", "Entry", "Kind", "Run", "Runner", "Setting", "UNIFORM", "ablate", "ablate_settings", "margins_table",
           "sweep_entries"]
