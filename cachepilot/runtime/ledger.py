"""What ran and what it cost, per call, branch and sample; summarised as `CacheSummary`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cachepilot.io import atomic_write_text


@dataclass
class Decision:
    step: int
    branch: str
    sample: int
    action: str
    blocks_run: int
    flops: float
    full_flops: float
    expert: int = 0  # which of the pipeline's transformers ran the call (Wan2.2: 0 high noise, 1 low noise)


@dataclass
class CacheSummary:
    policy: str
    num_blocks: int
    decisions: list[Decision] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)  # seconds per transformer call
    full_stats: list[dict] = field(default_factory=list)  # per FULL row: residual statistics (calibration)
    kept_bytes: dict[str, int] = field(default_factory=dict)  # per branch: what it keeps between calls, per sample

    @property
    def computed_fraction(self) -> float:
        full = sum(d.full_flops for d in self.decisions)
        return sum(d.flops for d in self.decisions) / full if full else 1.0

    @property
    def flops_speedup(self) -> float:
        frac = self.computed_fraction
        return 1.0 / frac if frac > 0 else float("inf")

    @property
    def wall_time(self) -> float:
        return sum(self.wall_times)

    def actions(self, sample: int = 0) -> dict[str, list[str]]:
        """Per branch, the action of each step in order (for one sample)."""
        out: dict[str, list[str]] = {}
        for d in self.decisions:
            if d.sample == sample:
                out.setdefault(d.branch, []).append(d.action)
        return out

    def action_counts(self) -> dict[str, int]:
        return dict(Counter(d.action for d in self.decisions))

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "num_blocks": self.num_blocks,
            "calls": len(self.wall_times),
            "computed_fraction": self.computed_fraction,
            "flops_speedup": self.flops_speedup,
            "wall_time_s": self.wall_time,
            "action_counts": self.action_counts(),
            "kept_bytes_per_sample": self.kept_bytes,
            "actions": self.actions(),
            "decisions": [asdict(d) for d in self.decisions],
        }

    def to_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def __str__(self) -> str:
        lines = [f"cache summary ({self.policy}): computed {self.computed_fraction:.1%} of full compute, "
                 f"FLOPs speedup {self.flops_speedup:.2f}x, transformer wall time {self.wall_time:.2f} s over {len(self.wall_times)} calls"]
        if self.kept_bytes:
            lines.append("  kept between calls, per sample: " + ", ".join(
                f"{branch} {size / 2**20:.2f} MiB" for branch, size in sorted(self.kept_bytes.items())))
        for branch, acts in self.actions().items():
            lines.append(f"  {branch:>6}: " + " ".join(_short(a) for a in acts))
        return "\n".join(lines)


def _short(action: str) -> str:
    """F, s, c, b<k>; a forecast of order n adds ^n (s^1)."""
    name, _, order = action.partition("_F")
    short = {"FULL": "F", "STEP": "s", "CFG": "c"}.get(name) or "b" + name.split("_")[1]
    return f"{short}^{order}" if order else short
