"""Dispatch-level guards that make a device constraint testable on the CPU.

``NoFloat64`` records every operator that reads or writes a float64 tensor (Apple's MPS has no
float64, so such an op would fail there). ``DeviceTransfers`` records copies between devices and
reads of a device value back to the host; run the code on the ``meta`` device so that a copy from
the CPU is visible.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _tensors(*trees):
    return [t for t in tree_flatten(trees)[0] if isinstance(t, torch.Tensor)]


class NoFloat64(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(t.dtype == torch.float64 for t in _tensors(args, kwargs, out)):
            self.ops.append(str(func))
        return out


class DeviceTransfers(TorchDispatchMode):
    """Cross-device copies and ops whose tensors live on different devices (a 0-dim CPU tensor, which
    torch passes as a scalar, excepted), and ``.item()``-style reads of a non-CPU value."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = _tensors(args, kwargs, out)
        if func in self.COPIES and len({t.device.type for t in tensors}) > 1:  # 0-dim tensors included
            self.ops.append(f"{func} from {tensors[0].device} to {tensors[-1].device}")
            return out
        devices = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            self.ops.append(f"{func} across {sorted(devices)}")
        elif func is torch.ops.aten._local_scalar_dense.default and devices != {"cpu"}:
            self.ops.append(f"{func} (host sync)")
        return out
