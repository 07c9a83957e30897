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
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, over parameters and buffers.

    The first update copies the weights (as AveragedModel does). Whether an update is the
    first is known on the host, so an update never synchronises with the device; the
    counter is read once, after a checkpoint is loaded.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)  # the update below replaces AveragedModel's averaging
        self.decay = decay
        self._started: bool | None = None  # None: not yet read from n_averaged
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

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ema_f, cur_f, ema_o, cur_o = self._tensor_pairs(model)
        if self._started is None:
            self._started = bool(self.n_averaged > 0)
        if self._started:
            torch._foreach_lerp_(ema_f, cur_f, 1.0 - self.decay)
        else:
            torch._foreach_copy_(ema_f, cur_f)
            self._started = True
        if ema_o:
            torch._foreach_copy_(ema_o, cur_o)
        self.n_averaged.add_(1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._started, self._pairs = None, None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
