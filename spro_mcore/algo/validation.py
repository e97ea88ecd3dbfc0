"""Input checks shared by the algo functions: each bad input gives one ValueError/TypeError naming it.

Checks that would cost a pass over [B, T] data are limited to what the math relies on (the mask), so
validation never dominates the cost of the estimator itself.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor


def require_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_token_matrix(name: str, x: object, shape: tuple[int, int] | None = None) -> Tensor:
    """A floating-point [B, T] tensor (log-probs, advantages, per-token values)."""
    x = require_tensor(name, x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, T], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)} but must match the batch shape {tuple(shape)}")
    return x


def check_per_sequence(name: str, x: object, batch: int, *, integer: bool) -> Tensor:
    """A 1-D [B] tensor: rewards (real) or group ids (integer)."""
    x = require_tensor(name, x)
    if x.dim() != 1 or x.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {tuple(x.shape)}")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor (one id per sequence), got {x.dtype}")
    if not integer and x.is_complex():
        raise TypeError(f"{name} must be real-valued, got {x.dtype}")
    return x


def check_same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


def check_real(name: str, value: object, *, minimum: float | None = None, above: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def as_bool_mask(name: str, mask: object, shape: tuple[int, int]) -> Tensor:
    """The mask as bool [B, T]; a numeric mask must hold only 0 and 1."""
    mask = require_tensor(name, mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but must match the batch shape {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 numbers, got {mask.dtype}")
    as_bool = mask != 0
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (or be a bool tensor)")
    return as_bool


def response_lengths(name: str, mask: Tensor) -> Tensor:
    """Length of every row of a bool [B, T] mask that must be a prefix of ones (left-aligned responses).

    Byte-level passes only (bool reductions are slow on CPU): a row is a prefix of ones iff it never rises
    from 0 to 1, i.e. no byte difference mask[t] - mask[t+1] wraps to 255; its length is then the first
    position of 1 - mask, found by binary search.
    """
    batch, width = mask.shape
    if batch == 0 or width == 0:
        return torch.zeros(batch, dtype=torch.long, device=mask.device)
    as_bytes = mask.view(torch.uint8)
    if width > 1:
        step_down = torch.sub(as_bytes[:, :-1], as_bytes[:, 1:])  # 0 or 1 in a prefix row, 255 on a rise
        if int(step_down.amax()) > 1:
            bad = (step_down > 1).any(dim=1).nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"{name} must be a prefix of ones in every row (responses left-aligned, padding on the right); "
                f"rows {bad} have a one after a zero"
            )
    ones = torch.ones((batch, 1), dtype=torch.uint8, device=mask.device)
    return torch.searchsorted(1 - as_bytes, ones).squeeze(1)
