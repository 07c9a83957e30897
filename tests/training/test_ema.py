import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnistgen.training.ema import EMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _perturb(model: nn.Module, scale: float = 1.0) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def test_first_update_copies_then_each_update_is_the_ema_recurrence():
    model, decay = _model(), 0.9
    ema = EMA(model, decay)
    _perturb(model)
    ema.update_parameters(model)  # W_0^EMA = W_0
    for a, b in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    expected = [p.detach().clone() for p in model.parameters()]
    for _ in range(4):
        _perturb(model)
        ema.update_parameters(model)
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for a, e in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    assert int(ema.n_averaged) == 5


def test_matches_averaged_model_and_shares_its_checkpoint_format():
    model = _model()
    ours = EMA(model, 0.99)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True)
    for _ in range(6):
        _perturb(model)
        ours.update_parameters(model)
        theirs.update_parameters(model)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)


def test_resumed_average_continues_instead_of_copying_again():
    model = _model()
    first = EMA(model, 0.5)
    for _ in range(3):
        _perturb(model)
        first.update_parameters(model)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    _perturb(model)
    first.update_parameters(model)

    resumed = EMA(_model(), 0.5)  # fresh average: its next update would copy
    resumed.load_state_dict(state)
    resumed.update_parameters(model)
    for a, b in zip(resumed.module.parameters(), first.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(next(resumed.module.parameters()), next(model.parameters()))


def test_warmup_decay_follows_its_closed_form_and_is_capped():
    model, decay, power = _model(), 0.99, 2 / 3
    ema = EMA(model, decay, warmup_power=power)
    assert ema.decay_at(1) == 1 - 2 ** -power  # ~0.37: an early average forgets its start fast
    assert ema.decay_at(10**6) == decay
    assert EMA(model, decay).decay_at(1) == decay
    _perturb(model)
    ema.update_parameters(model)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(1, 6):
        _perturb(model)
        ema.update_parameters(model)
        d = min(decay, 1 - (1 + n) ** -power)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for a, e in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


def test_warmup_resumes_at_its_update_count():
    model = _model()
    first = EMA(model, 0.999, warmup_power=0.75)
    for _ in range(4):
        _perturb(model)
        first.update_parameters(model)
    resumed = EMA(_model(), 0.999, warmup_power=0.75)
    resumed.load_state_dict(first.state_dict())
    _perturb(model)
    first.update_parameters(model)
    resumed.update_parameters(model)  # the 5th update, decay_at(4), not a restart of the warm-up
    for a, b in zip(resumed.module.parameters(), first.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
