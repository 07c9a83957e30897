"""Exponential moving average of a model's weights: one fused multi-tensor update per step.

``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` already averages with
``torch._foreach_lerp_``, but every call regroups the tensors by device and reads the
``n_averaged`` counter back to the host twice (``bool(n_averaged == 0)``), which on a GPU
blocks the CPU until the step's kernels have run. ``EMA`` keeps AveragedModel's module and
state_dict (checkpoints are interchangeable) and replaces only the update.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    """theta_ema <- d_n theta_ema + (1 - d_n) theta, over parameters and buffers.

    The first update copies the weights (as AveragedModel does). With ``warmup_power`` p > 0
    the n-th later update uses d_n = min(decay, 1 - (1 + n)^-p), so an average started late
    in a short run forgets its starting weights quickly and reaches ``decay`` only after
    about (1 - decay)^(-1/p) updates (the warm-up of diffusers' EMAModel with inv_gamma = 1);
    p = 0 keeps d_n = decay. The update count is kept on the host, so an update never
    synchronises with the device; the counter is read once, after a checkpoint is loaded.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_power: float = 0.0):
        super().__init__(model, use_buffers=True)  # the update below replaces AveragedModel's averaging
        self.decay, self.warmup_power = decay, warmup_power
        self._count: int | None = None  # updates so far; None: not yet read from n_averaged
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
        self._source: int | None = None

    def _tensor_pairs(self, model: nn.Module):
        """(ema floats, model floats, ema others, model others), built once per source model."""
        if self._pairs is None or self._source != id(model):
            ema = [*self.module.parameters(), *self.module.buffers()]
            cur = [*model.parameters(), *model.buffers()]
            if len(ema) != len(cur):
                raise ValueError("EMA.update_parameters: the model does not match the averaged one")
            floats = [i for i, t in enumerate(ema) if t.is_floating_point()]
            others = [i for i, t in enumerate(ema) if not t.is_floating_point()]
            self._pairs = ([ema[i].detach() for i in floats], [cur[i].detach() for i in floats],
                           [ema[i].detach() for i in others], [cur[i].detach() for i in others])
            self._source = id(model)
        return self._pairs

    def decay_at(self, n: int) -> float:
        """d_n, the decay of the update that follows n earlier ones (n >= 1)."""
        if self.warmup_power <= 0:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + n) ** -self.warmup_power)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ema_f, cur_f, ema_o, cur_o = self._tensor_pairs(model)
        if self._count is None:
            self._count = int(self.n_averaged)
        if self._count > 0:
            torch._foreach_lerp_(ema_f, cur_f, 1.0 - self.decay_at(self._count))
        else:
            torch._foreach_copy_(ema_f, cur_f)
        self._count += 1
        if ema_o:
            torch._foreach_copy_(ema_o, cur_o)
        self.n_averaged.add_(1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._count, self._pairs = None, None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def ema_in_use(step: int, ema_start: int) -> bool:
    """Whether the EMA weights are the ones to sample from after ``step`` optimizer steps: updates
    begin at step ``ema_start``, so past it the average holds at least one update."""
    return step > ema_start


def sampling_weights(state: dict, ema_start: int) -> dict:
    """A checkpoint's weights to sample from: the EMA copy once it is in use (its AveragedModel
    ``module.`` prefix removed), else the raw weights."""
    if state["ema"] is None or not ema_in_use(state["step"], ema_start):
        return state["model"]
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
