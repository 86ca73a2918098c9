"""Quality of a cached output against the uncached reference: PSNR, SSIM and LPIPS on frames in [0, 1].

Videos are (frames, H, W, 3) or batches of them; scores are averaged over frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(video) -> torch.Tensor:
    return torch.as_tensor(np.asarray(video), dtype=torch.float64)


def psnr(video, reference, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole video (inf when identical)."""
    mse = float(((_as_tensor(video) - _as_tensor(reference)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(video, reference, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004), Gaussian window, per frame and channel.

    The window is 7 (not the usual 11) because toy-wan frames are 16 px; valid positions only.
    """
    a, b = _as_tensor(video), _as_tensor(reference)
    a = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2).reshape(-1, 1, *a.shape[-3:-1])
    b = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2).reshape(-1, 1, *b.shape[-3:-1])
    w = _gaussian_window(min(window, a.shape[-1], a.shape[-2]), sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


# torchvision's ImageNet AlexNet, which lpips' "alex" backbone loads; lpips ships only its linear layers.
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
LPIPS_MIN_SIDE = 64  # AlexNet's strided convs and pools need frames at least this large


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot be computed here (backbone weights missing); never replaced by a made-up score."""


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS


_LPIPS_MODELS: dict = {}


def lpips_model(random_backbone: bool = False):
    """The lpips 'alex' model. `random_backbone=True` is for testing the plumbing only: its scores mean nothing."""
    if random_backbone not in _LPIPS_MODELS:
        if not random_backbone and not alexnet_weights_path().is_file():
            raise LPIPSUnavailable(
                f"LPIPS needs torchvision's AlexNet weights at {alexnet_weights_path()} (file {ALEXNET_WEIGHTS}, "
                "from https://download.pytorch.org/models/); copy them there, or set TORCH_HOME to a folder holding "
                "hub/checkpoints/" + ALEXNET_WEIGHTS)
        import lpips  # here, not at the top: it imports torchvision (~2.5 s), which only LPIPS needs

        _LPIPS_MODELS[random_backbone] = lpips.LPIPS(net="alex", pnet_rand=random_backbone, verbose=False).eval()
    return _LPIPS_MODELS[random_backbone]


@torch.no_grad()
def lpips_distance(video, reference, random_backbone: bool = False) -> float:
    """Mean LPIPS (AlexNet) over frames; small frames are upscaled (bilinear) to 64 px first."""
    model = lpips_model(random_backbone)
    a = torch.as_tensor(np.asarray(video), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    a = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2) * 2 - 1
    b = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2) * 2 - 1
    if min(a.shape[-2:]) < LPIPS_MIN_SIDE:
        scale = LPIPS_MIN_SIDE / min(a.shape[-2:])
        a = F.interpolate(a, scale_factor=scale, mode="bilinear", align_corners=False)
        b = F.interpolate(b, scale_factor=scale, mode="bilinear", align_corners=False)
    return float(model(a, b).mean())


# ---- quality losses: one interface for rewards and reports ---------------------------------------
PSNR_CAP = 50.0  # dB; at or above this a cached output counts as lossless


@dataclass(frozen=True)
class Quality:
    metric: str
    value: float  # the metric itself (dB for PSNR)
    loss: float  # >= 0, 0 for an output identical to the reference


def _psnr_quality(video, reference) -> Quality:
    value = float(psnr(video, reference))
    return Quality("psnr", value, (PSNR_CAP - min(value, PSNR_CAP)) / PSNR_CAP)


def _ssim_quality(video, reference) -> Quality:
    value = float(ssim(video, reference))
    return Quality("ssim", value, max(0.0, 1.0 - value))


def _lpips_quality(video, reference) -> Quality:
    value = float(lpips_distance(video, reference))
    return Quality("lpips", value, value)


QUALITY_METRICS = {"psnr": _psnr_quality, "ssim": _ssim_quality, "lpips": _lpips_quality}
QUALITY_LOSS_DOC = {
    "psnr": f"(PSNR_CAP - min(psnr, PSNR_CAP)) / PSNR_CAP with PSNR_CAP = {PSNR_CAP:g} dB",
    "ssim": "1 - ssim",
    "lpips": "the LPIPS distance itself",
}


def quality(metric: str, video, reference) -> Quality:
    """Score `video` against `reference` (frames in [0, 1]) and turn it into a loss (0 = identical)."""
    try:
        fn = QUALITY_METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown quality metric {metric!r}; choose from {', '.join(QUALITY_METRICS)}") from None
    return fn(video, reference)
