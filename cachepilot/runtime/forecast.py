"""Forecasting a kept quantity instead of reusing it: the polynomial through its last values, at this step.

With values y_0..y_n kept at times x_0..x_n (the branch's last FULL steps, most recent first), the forecast of
order n at time x is Newton's interpolating polynomial of those points evaluated at x, built from divided
differences: exact for a quantity that moves as a polynomial of degree n in time, and correct for unevenly
spaced FULL steps. Order 1 extrapolates the line through the last two values (TaylorSeer's default order);
order 0 is the last value itself, i.e. a plain reuse.

Time is the step index (as TaylorSeer and diffusers count it) or the noise level sigma (`BASES`): flow-matching
schedules with a shift space their sigmas unevenly, so a quantity may be closer to a polynomial in sigma.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BASES = ("step", "sigma")


def extrapolate(values: Sequence[torch.Tensor], times: Sequence[float], at: float) -> torch.Tensor:
    """Newton's polynomial through (times[i], values[i]) evaluated at `at`, computed in float32 at least and
    returned in the values' dtype; one value gives that value itself."""
    if len(values) == 1:
        return values[0]
    if len(set(times)) != len(times):
        raise ValueError(f"a forecast needs distinct times, got {list(times)}")
    dtype = torch.promote_types(values[0].dtype, torch.float32)
    coeffs = [v.to(dtype) for v in values]
    n = len(coeffs) - 1
    for j in range(1, n + 1):  # divided differences, in place: coeffs[i] becomes [y_0 .. y_i] for i >= j
        for i in range(n, j - 1, -1):
            coeffs[i] = (coeffs[i] - coeffs[i - 1]) / (times[i] - times[i - j])
    result = coeffs[n]
    for i in range(n - 1, -1, -1):  # Horner's scheme on the Newton form
        result = coeffs[i] + (at - times[i]) * result
    return result.to(values[0].dtype)
