"""What a policy observes before each transformer call, per branch and sample. One dataclass, documented units.

All "rel-L1" values are mean|x - x_prev| / mean|x_prev| (dimensionless, >= 0). A value is None when it
is not defined yet (e.g. no previous call, or no FULL computed so far) or not requested by the policy
(the expensive ones: `modulated_rel_l1` and `probe_rel_l1`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def rel_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """TeaCache / First-Block-Cache relative L1 change: mean|cur - prev| / mean|prev|."""
    prev = previous.float()
    return float((current.float() - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))


def norm_ratio(current: torch.Tensor, previous: torch.Tensor) -> float:
    """MagCache magnitude ratio: mean over tokens of ||r_t||_2 / ||r_prev||_2 (norm over channels)."""
    return float((current.float().norm(dim=-1) / previous.float().norm(dim=-1).clamp_min(1e-12)).mean())


def motion_energy(residual: torch.Tensor, frames: int | None) -> float | None:
    """AdaCache MoReg motion score of one sample's residual (tokens, dim), tokens ordered frame-major:
    ||r_f - r_{f-1}||_1 / (||r_f||_1 + ||r_{f-1}||_1), averaged over consecutive frame pairs."""
    if not frames or frames < 2 or residual.shape[0] % frames:
        return None
    per_frame = residual.float().reshape(frames, residual.shape[0] // frames, -1)
    diff = (per_frame[1:] - per_frame[:-1]).abs().sum(dim=(1, 2))
    total = per_frame[1:].abs().sum(dim=(1, 2)) + per_frame[:-1].abs().sum(dim=(1, 2))
    return float((diff / total.clamp_min(1e-12)).mean())


@dataclass
class Signals:
    step: int  # denoising step index, 0-based
    num_steps: int | None  # total steps of this generation, when the pipeline says
    branch: str  # "cond" or "uncond"
    sample: int  # index of the sample within its branch's batch
    sigma: float | None  # noise level of this step (flow-matching sigma), when known
    timestep: float | None  # the timestep the transformer received (first element)
    temb_rel_l1: float | None  # change of the timestep embedding vs this branch's previous call (Wan: temb)
    temb_proj_rel_l1: float | None  # change of the blocks' timestep argument (Wan: timestep_proj, TeaCache ret-steps)
    modulated_rel_l1: float | None  # change of block 0's modulated input norm1(x) * (1 + scale) + shift
    indicator_rel_l1: float | None  # TeaCache's indicator change for this family: temb, or the modulated input
    probe_rel_l1: float | None  # change of the first `probe_blocks` blocks' residual vs its value at the last FULL
    residual_norm_ratio: float | None  # ||r|| ratio between the last two FULL residuals, per step in between (MagCache)
    residual_rel_l1: float | None  # rel-L1 change of the block-stack residual between the last two FULLs, per call
    mag_accumulated_error: float | None  # sum of |1 - prod(ratio)| over calls since the last FULL, using that ratio
    motion_energy: float | None  # MoReg score of the last FULL residual (0 = static, larger = more motion)
    cfg_diff_drift: float | None  # rel-L1 change between the last two cached (uncond - cond) differences
    mid_block_change: float | None  # AdaCache distance: rel-L1 change of the middle block's residual between the
    #                                 last two FULLs, divided by the calls between them
    steps_since_full: int | None  # calls of this branch since its last FULL (None: never computed)
    compute_spent: float  # fraction of full compute spent so far in this generation (this sample, both branches)

    @property
    def step_fraction(self) -> float | None:
        """Normalised step in [0, 1]."""
        if not self.num_steps or self.num_steps < 2:
            return None
        return self.step / (self.num_steps - 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["step_fraction"] = self.step_fraction
        return d
