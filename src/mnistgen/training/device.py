"""The device policy, written once: which device, which mixed precision, which backend switches.

- ``pick_device``: ``auto`` is CUDA, then Apple's MPS, then the CPU.
- ``amp_dtype``: the autocast dtype of a training step. ``train.amp = "auto"`` gives bfloat16 on
  CUDA GPUs with native bf16 kernels (compute capability >= 8.0: A100, H100, RTX 30xx/40xx),
  float16 with a GradScaler on older CUDA GPUs (T4, V100: ``torch.cuda.is_bf16_supported()``
  counts emulation there, and cuDNN has no bf16 convolutions below 8.0), and none on MPS and
  the CPU. ``"native"`` is ``"auto"`` plus bfloat16 on CPUs with native bf16 instructions
  (x86 AVX512-BF16 or AMX; measured on the ``cpu`` DDPM: 1.1x the images/s at the same sample
  quality, so both ``cpu`` diffusion presets use it; docs/cpu-design.md). ``"bf16"``, ``"fp16"``
  and ``"off"`` force a choice on any device.
- float64 lives on the CPU only (MPS has none): schedules are built in float64 on the CPU,
  then cast and moved once; accumulators on the device are float32.
- ``configure_backends``: cuDNN autotuning for fixed-shape training and an explicit TF32
  choice on CUDA; nothing on other devices.
- ``default_preset``: the ``reference`` settings on CUDA, the ``cpu`` design elsewhere.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mnistgen.config import AMP_MODES
from mnistgen.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
_FORCED = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unknown or unavailable device is a user error. A
    ``torch.device`` (one picked already) is checked by its name."""
    if isinstance(name, torch.device):
        name = str(name)
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}, cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} requested but CUDA is not available here")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {name}: this machine has CUDA devices 0-{torch.cuda.device_count() - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps requested but MPS is not available here")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """True on CUDA GPUs of compute capability >= 8.0, whose bf16 kernels are native, not emulated."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX instructions (where oneDNN runs bf16 natively; other
    CPUs emulate it, slower than float32). Detected through torch's CPU feature queries."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype of training on ``device`` (None: full float32); see the module docstring."""
    if mode not in AMP_MODES:
        raise UserError(f"bad train.amp {mode!r}; valid: {', '.join(AMP_MODES)}")
    if mode not in ("auto", "native"):
        return _FORCED[mode]
    if device.type == "cpu" and mode == "native":
        return torch.bfloat16 if cpu_native_bf16() else None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16(device) else torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range."""
    return dtype == torch.float16


FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps")  # torch >= 2.5 has a fused Adam kernel for each


def adamw(params, device: torch.device, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019; with ``weight_decay`` 0 it is Adam),
    with the fused (single-kernel) step on devices that have one, else torch's default (foreach)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in FUSED_ADAM_DEVICES or None)


def configure_backends(device: torch.device, tf32: bool) -> None:
    """CUDA only: let cuDNN pick the fastest convolution for the (fixed) shapes, and use TF32 tensor
    cores for float32 matmuls and convolutions when ``tf32`` (10-bit mantissa, Ampere and newer)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


class PresetChoice(NamedTuple):
    name: str
    reason: str


def default_preset(device: torch.device) -> PresetChoice:
    """The preset used when none is named: the study's settings on a CUDA GPU, the CPU design elsewhere."""
    if device.type == "cuda":
        return PresetChoice("reference", "the device is a CUDA GPU")
    return PresetChoice("cpu", f"the device is {device.type}, not a CUDA GPU")


def describe(device: torch.device, dtype: torch.dtype | None) -> str:
    """One line for the log: the device, and the mixed precision training uses on it."""
    name = device.type
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (cuda, compute capability {major}.{minor})"
    elif device.type == "cpu":
        name = f"cpu ({torch.get_num_threads()} threads)"
    precision = {None: "float32", torch.bfloat16: "bf16 autocast",
                 torch.float16: "fp16 autocast + GradScaler"}[dtype]
    return f"{name}, {precision}"
