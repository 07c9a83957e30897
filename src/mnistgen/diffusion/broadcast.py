"""The one broadcasting rule of both noise processes: a per-example coefficient against a batch."""

from __future__ import annotations

import torch


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or () -> (B, 1, 1, 1) or () in ``like``'s dtype, to broadcast against ``like`` (B, C, H, W).

    Values on another device are refused rather than copied: a process's tables live on the
    device it was built for, so a mismatch is a bug that would otherwise cost a transfer per step."""
    if values.device != like.device:
        raise ValueError(f"the process's schedule is on {values.device} but the data on {like.device}; "
                         f"build the process with device={like.device}")
    values = values.to(like.dtype)
    return values.view(-1, *([1] * (like.dim() - 1))) if values.dim() else values
