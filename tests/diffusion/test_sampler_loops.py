"""The sampling loops against computations that share no code with them.

* Per-step variances: with a linear "network" each step is x' = c x + s z, so regressing the
  next state on the current one over many draws gives the step's noise variance s^2 without
  knowing c; it is compared with the papers' closed forms, computed here in float64.
* Full loops: a small nonlinear elementwise network, and each sampler written again below in
  NumPy float64 from the papers' equations, fed the same noise draws (same generator seed,
  same order); plus the sum of each result as a golden number.
* The guided combination: a label-dependent oracle whose guided prediction is the exact noise
  of a known image, run in float32.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mnistgen.config import CFGConfig, DDPMConfig
from tests.diffusion.sampling import sample
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.diffusion.logsnr import LogSNRDiffusion

T = 1000
BETAS = np.linspace(1e-4, 0.02, T)  # the DDPM schedule, independently, in float64
ALPHA_BARS = np.cumprod(1 - BETAS)
V = CFGConfig().v  # the CFG variance interpolation exponent


@pytest.fixture(scope="module")
def ddpm():
    return GaussianDiffusion(DDPMConfig())


@pytest.fixture(scope="module")
def logsnr():
    return LogSNRDiffusion(CFGConfig())


# -- per-step variances ----------------------------------------------------------------------------
class ZeroImage(nn.Module):
    """The exact noise for the one-image data set {0}: eps = x_t / sqrt(1 - alpha_bar_t). Every
    sampler step is then linear in x_t (the predicted x_0 is 0, inside the clipping range)."""

    null_label = 10

    def __init__(self, std):
        super().__init__()
        self.std = std  # t (model time) -> sqrt(1 - alpha_bar) or sigma_lambda

    def forward(self, x, t, labels=None):
        return x / self.std(t).view(-1, 1, 1, 1).to(x.dtype)


def _step_variances(run) -> dict[int, float]:
    """Noise variance of every step, by regressing each state on the one before over many draws."""
    states = []
    run(lambda t, x: states.append((t, x.double().flatten())))
    out = {}
    for (_, before), (t, after) in zip(states, states[1:]):
        c = (before @ after) / (before @ before)
        out[t] = ((after - c * before) ** 2).mean().item()
    return out


def _start(n=2000):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def _ddpm_std(t):
    return torch.from_numpy(np.sqrt(1 - ALPHA_BARS))[t.long()]


def test_ancestral_step_variance_is_beta_t(ddpm):
    """DDPM algorithm 2 adds sigma_t^2 = beta_t; at small t this is twice the posterior beta~_t, so
    the two cannot be confused."""
    g = torch.Generator().manual_seed(1)
    found = _step_variances(lambda on_step: sample("ancestral", ZeroImage(_ddpm_std), ddpm, _start(), g, on_step))
    for t in (1, 2, 5, 50, 400, 998):
        assert found[t] == pytest.approx(BETAS[t], rel=0.05), t
    assert found[0] < 1e-12  # no noise at the last step
    assert BETAS[1] * (1 - ALPHA_BARS[0]) / (1 - ALPHA_BARS[1]) < 0.6 * BETAS[1]


def test_ancestral_on_fewer_steps_has_the_restricted_process_variance(ddpm):
    """On a 50-step grid each step adds beta' = 1 - ab_t / ab_t' (the DDPM restricted to the grid),
    not the schedule's beta_t at the same t."""
    g = torch.Generator().manual_seed(4)
    found = _step_variances(lambda on_step: sample("ancestral", ZeroImage(_ddpm_std), ddpm, _start(), g, on_step,
                                                         steps=50))
    grid = _ddim_grid(50)
    for t, t_next in zip(grid[1:], grid[2:]):  # the state after the step at t is x_{t_next}
        expected = 1 - ALPHA_BARS[t] / ALPHA_BARS[t_next]
        assert found[t] == pytest.approx(expected, rel=0.05), t
        assert expected > 5 * BETAS[t]
    assert found[0] < 1e-12


def _ddim_grid(steps):
    grid = np.round(np.linspace(T - 1, 0, steps)).astype(int)
    return list(dict.fromkeys(grid.tolist()))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_variance_is_eq_16(ddpm, eta):
    """sigma^2 = eta^2 (1 - ab') / (1 - ab) (1 - ab / ab') (DDIM eq. 16) between grid points."""
    g = torch.Generator().manual_seed(2)
    steps = 20
    found = _step_variances(lambda on_step: sample("ddim", ZeroImage(_ddpm_std), ddpm, _start(), g, on_step,
                                                    steps=steps, eta=eta))
    grid = _ddim_grid(steps)
    for t, t_next in zip(grid[1:], grid[2:]):  # the state after the step at t is x_{t_next}
        ab, ab_next = ALPHA_BARS[t], ALPHA_BARS[t_next]
        expected = eta**2 * (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
        assert found[t] == pytest.approx(expected, rel=0.05, abs=1e-10), (t, eta)
    assert found[0] < 1e-12


def _log_snr(u):
    """lambda(u) = -2 log tan(a u + b) (CFG paper, section 2), float64."""
    c = CFGConfig()
    b = math.atan(math.exp(-c.lambda_max / 2))
    a = math.atan(math.exp(-c.lambda_min / 2)) - b
    return -2 * np.log(np.tan(a * np.asarray(u, dtype=np.float64) + b))


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _cfg_step_variance(lam, lam_next):
    """(sigma~^2_{lambda'|lambda})^(1-v) (sigma^2_{lambda|lambda'})^v from VDM's conditionals."""
    r = np.exp(lam - lam_next)
    tilde = (1 - r) * _sigmoid(-lam_next)
    transition = (1 - r) * _sigmoid(-lam)
    return tilde ** (1 - V) * transition**V


def _lambda_of_model_time(t):
    c = CFGConfig()
    return c.lambda_max - t.double() / 1000.0 * (c.lambda_max - c.lambda_min)


def test_guided_step_variance_interpolates_the_two_variances(logsnr):
    g = torch.Generator().manual_seed(3)
    steps = 16
    std = lambda t: torch.sigmoid(-_lambda_of_model_time(t)).sqrt()  # noqa: E731
    labels = torch.randint(0, 10, (2000,), generator=g)
    found = _step_variances(lambda on_step: sample("ancestral", ZeroImage(std), logsnr, _start(), g, on_step,
                                                      steps=steps, labels=labels, w=1.0))
    lam = _log_snr([1 - i / steps for i in range(steps + 1)])
    for i in range(1, steps - 1):  # the state after step i (steps - 1 - i still to go)
        assert found[steps - 1 - i] == pytest.approx(_cfg_step_variance(lam[i], lam[i + 1]), rel=0.05), i
    assert found[0] < 1e-12


class GaussianData(nn.Module):
    """The exact noise for data N(0, s^2 I): x_0 = sqrt(ab) s^2 x_t / (ab s^2 + 1 - ab), from the joint Gaussian."""

    def __init__(self, s):
        super().__init__()
        self.s2 = s * s

    def forward(self, x, t):
        ab = torch.from_numpy(ALPHA_BARS)[t.long()].view(-1, 1, 1, 1)
        x0 = ab.sqrt() * self.s2 * x.double() / (ab * self.s2 + 1 - ab)
        return ((x.double() - ab.sqrt() * x0) / (1 - ab).sqrt()).float()


def _ode_error(sampler, steps, s=0.5):
    """Largest error against the exact probability-flow ODE solution for Gaussian data, which scales
    x_T by the ratio of the marginal stds; the last step to sigma = 0 is the denoiser at t = 0 in both."""
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    out = sampler(GaussianData(s), x, steps).double()
    std = lambda ab: np.sqrt(ab * s * s + 1 - ab)  # noqa: E731
    ab0, abT = ALPHA_BARS[0], ALPHA_BARS[-1]
    exact = np.sqrt(ab0) * s * s / std(ab0) ** 2 * std(ab0) / std(abT) * x.double()
    return (out - exact).abs().max().item()


def test_dpm_solver_converges_at_second_order(ddpm):
    """Halving the step size divides the error by about 4 for DPM-Solver++(2M) and by about 2 for
    DDIM (eta = 0, the first-order solver of the same ODE), once the steps are small enough: on
    this time-uniform grid the step in log-SNR from t = T / K to t = 0 is large below ~40 steps."""
    dpm = lambda m, x, k: sample("dpm++2m", m, ddpm, x, steps=k, clip_x0=False)  # noqa: E731
    ddim = lambda m, x, k: sample("ddim", m, ddpm, x, steps=k, eta=0.0, clip_x0=False)  # noqa: E731
    errors = {k: _ode_error(dpm, k) for k in (40, 80, 160)}
    first = {k: _ode_error(ddim, k) for k in (40, 80, 160)}
    assert errors[40] / errors[80] > 3.2 and errors[80] / errors[160] > 3.2, errors
    assert 1.6 < first[80] / first[160] < 2.6, first
    assert errors[160] < first[160] / 2.5


# -- full loops against NumPy, same noise -------------------------------------------------------
def _net_np(x, t, labels=None):
    shift = 0.0 if labels is None else 0.05 * labels.reshape(-1, 1, 1, 1)
    return 0.8 * x + 0.3 * np.tanh(1.3 * x + 0.7 * t / 1000 - 0.2 + shift)


class Net(nn.Module):
    """A fixed nonlinear elementwise 'network': 0.8 x + 0.3 tanh(1.3 x + 0.7 t / 1000 - 0.2 + 0.05 label)."""

    null_label = 10

    def forward(self, x, t, labels=None):
        shift = 0.0 if labels is None else 0.05 * labels.view(-1, 1, 1, 1).float()
        return 0.8 * x + 0.3 * torch.tanh(1.3 * x + 0.7 * t.view(-1, 1, 1, 1) / 1000 - 0.2 + shift)


SHAPE = (3, 1, 5, 5)


def _draws(seed):
    """The noise a sampler draws from a generator seeded ``seed``, in order, as float64 arrays."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(SHAPE, generator=g).double().numpy()


def _ancestral_np(x, seed):
    z = _draws(seed)
    for t in reversed(range(T)):
        eps = _net_np(x, float(t))
        x = (x - BETAS[t] / np.sqrt(1 - ALPHA_BARS[t]) * eps) / np.sqrt(1 - BETAS[t])  # DDPM eq. 11
        if t > 0:
            x = x + np.sqrt(BETAS[t]) * next(z)
    return x


def _ddim_np(x, steps, eta, seed):
    z = _draws(seed)
    grid = _ddim_grid(steps)
    for i, t in enumerate(grid):
        ab = ALPHA_BARS[t]
        ab_next = ALPHA_BARS[grid[i + 1]] if i + 1 < len(grid) else 1.0
        eps = _net_np(x, float(t))
        x0 = np.clip((x - np.sqrt(1 - ab) * eps) / np.sqrt(ab), -1, 1)
        eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        sigma = eta * np.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
        x = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next - sigma**2) * eps  # DDIM eq. 12
        if i + 1 < len(grid):
            x = x + sigma * next(z)
    return x


def _trailing_grid(steps, power):
    """Lin et al. 2023's trailing timesteps, T ((K - k) / K)^power - 1, rounded (distinct at these K)."""
    grid = [int(round(T * ((steps - k) / steps) ** power)) - 1 for k in range(steps)]
    assert len(set(grid)) == steps
    return grid


def _dpm_solver_2m_np(x, steps, seed=None, grid=None):
    """DPM-Solver++(2M) as Lu et al. 2022 write it (algorithm 2): h_i = lambda_i - lambda_{i-1},
    r_i = h_{i-1} / h_i, D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}. With a ``seed``, its
    SDE variant, written as a DDIM step at eta = 1 (DDIM eq. 12 and 16) whose x0 is D_i: the step's
    noise is the one consistent with D_i. The last level's x0 is the sample (``grid``: the timesteps,
    default DDIM's), which on a trailing grid is the step onto the clean image from t_{K-1} > 0."""
    z = None if seed is None else _draws(seed)
    grid = _ddim_grid(steps) if grid is None else grid
    lam = [0.5 * np.log(ALPHA_BARS[t] / (1 - ALPHA_BARS[t])) for t in grid]
    x0s, hs = [], []
    for i, t in enumerate(grid):
        ab = ALPHA_BARS[t]
        x0s.append(np.clip((x - np.sqrt(1 - ab) * _net_np(x, float(t))) / np.sqrt(ab), -1, 1))
        if i + 1 == len(grid):
            return x0s[-1]
        ab_next = ALPHA_BARS[grid[i + 1]]
        hs.append(lam[i + 1] - lam[i])
        if i == 0:
            d = x0s[-1]
        else:
            r = hs[-2] / hs[-1]
            d = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        if z is None:
            x = np.sqrt((1 - ab_next) / (1 - ab)) * x - np.sqrt(ab_next) * (np.exp(-hs[-1]) - 1) * d
        else:
            eps = (x - np.sqrt(ab) * d) / np.sqrt(1 - ab)
            sigma = np.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
            x = np.sqrt(ab_next) * d + np.sqrt(1 - ab_next - sigma**2) * eps + sigma * next(z)


def _guided_np(x, labels, w, steps, seed):
    z = _draws(seed)
    c = CFGConfig()
    lam = _log_snr([1 - i / steps for i in range(steps + 1)])
    for i in range(steps):
        l, l2 = lam[i], lam[i + 1]
        t = 1000 * (c.lambda_max - l) / (c.lambda_max - c.lambda_min)
        eps = (1 + w) * _net_np(x, t, labels) - w * _net_np(x, t, np.full_like(labels, 10))
        alpha, sigma, alpha2 = np.sqrt(_sigmoid(l)), np.sqrt(_sigmoid(-l)), np.sqrt(_sigmoid(l2))
        x0 = np.clip((x - sigma * eps) / alpha, -1, 1)
        r = np.exp(l - l2)
        x = r * alpha2 / alpha * x + (1 - r) * alpha2 * x0  # the posterior mean with x_theta
        if i + 1 < steps:
            x = x + np.sqrt(_cfg_step_variance(l, l2)) * next(z)
    return x


def _noise():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))


def test_ancestral_loop_matches_numpy(ddpm):
    out = sample("ancestral", Net(), ddpm, _noise(), torch.Generator().manual_seed(11))
    expected = _ancestral_np(_noise().double().numpy(), 11)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=2e-4, rtol=0)
    assert out.sum().item() == pytest.approx(GOLDEN["ancestral"], abs=2e-3)


@pytest.mark.parametrize("steps, eta", [(20, 0.0), (20, 0.5), (50, 1.0)])
def test_ddim_loop_matches_numpy(ddpm, steps, eta):
    out = sample("ddim", Net(), ddpm, _noise(), torch.Generator().manual_seed(12), steps=steps, eta=eta)
    expected = _ddim_np(_noise().double().numpy(), steps, eta, 12)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=2e-4, rtol=0)
    assert out.sum().item() == pytest.approx(GOLDEN[f"ddim-{steps}-{eta}"], abs=2e-3)


@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_dpm_solver_loop_matches_numpy(ddpm, steps):
    out = sample("dpm++2m", Net(), ddpm, _noise(), steps=steps)
    np.testing.assert_allclose(out.double().numpy(), _dpm_solver_2m_np(_noise().double().numpy(), steps),
                               atol=2e-4, rtol=0)


@pytest.mark.parametrize("steps", [2, 10, 50])
def test_dpm_solver_sde_loop_matches_numpy(ddpm, steps):
    out = sample("dpm++2m-sde", Net(), ddpm, _noise(), torch.Generator().manual_seed(13), steps=steps)
    np.testing.assert_allclose(out.double().numpy(), _dpm_solver_2m_np(_noise().double().numpy(), steps, 13),
                               atol=2e-4, rtol=0)


@pytest.mark.parametrize("steps, power", [(10, 0.8), (10, 1.0), (5, 0.8), (20, 0.6)])
def test_dpm_solver_sde_on_the_trailing_grid_matches_numpy(ddpm, steps, power):
    """The `cpu` DDPM's default: SDE-DPM-Solver++(2M) on the trailing grid at a power, against the NumPy loop
    over that grid's timesteps, computed here from its formula."""
    out = sample("dpm++2m-sde", Net(), ddpm, _noise(), torch.Generator().manual_seed(14), steps=steps,
                 spacing="trailing", power=power)
    expected = _dpm_solver_2m_np(_noise().double().numpy(), steps, 14, _trailing_grid(steps, power))
    np.testing.assert_allclose(out.double().numpy(), expected, atol=2e-4, rtol=0)


def test_dpm_solver_sde_first_step_is_ddim_at_eta_1(ddpm):
    """Its first step has no previous x0 to correct with: the first-order SDE solver is DDIM at eta = 1."""
    first = {}

    def keep(name):
        return lambda t, x: first.setdefault(name, x.clone())

    sample("dpm++2m-sde", Net(), ddpm, _noise(), torch.Generator().manual_seed(3), keep("sde"), steps=10)
    sample("ddim", Net(), ddpm, _noise(), torch.Generator().manual_seed(3), keep("ddim"), steps=10, eta=1.0)
    torch.testing.assert_close(first["sde"], first["ddim"], rtol=0, atol=1e-5)


def test_dpm_solver_sde_step_variance_is_ddim_eta_1(ddpm):
    """With x_0^ = 0 (ZeroImage) the correction vanishes and each step adds sigma'^2 (1 - e^{-2h}) =
    (1 - ab') / (1 - ab) (1 - ab / ab'), DDIM eq. 16 at eta = 1."""
    g = torch.Generator().manual_seed(4)
    found = _step_variances(lambda on_step: sample("dpm++2m-sde", ZeroImage(_ddpm_std), ddpm, _start(), g, on_step,
                                                        steps=20))
    grid = _ddim_grid(20)
    for t, t_next in zip(grid[1:], grid[2:]):
        ab, ab_next = ALPHA_BARS[t], ALPHA_BARS[t_next]
        assert found[t] == pytest.approx((1 - ab_next) / (1 - ab) * (1 - ab / ab_next), rel=0.05, abs=1e-10), t
    assert found[0] < 1e-12


@pytest.mark.parametrize("steps", [1, 7, 100])
def test_ancestral_on_fewer_steps_matches_numpy(ddpm, steps):
    """The DDPM restricted to the grid, written from its own alphas: alpha' = ab_t / ab_t' (ab = 1 past
    the end), beta' = 1 - alpha', eq. 11 with beta' and sigma^2 = beta'."""
    out = sample("ancestral", Net(), ddpm, _noise(), torch.Generator().manual_seed(14), steps=steps)
    z, x = _draws(14), _noise().double().numpy()
    grid = _ddim_grid(steps)
    for i, t in enumerate(grid):
        alpha = ALPHA_BARS[t] / (ALPHA_BARS[grid[i + 1]] if i + 1 < len(grid) else 1.0)
        x = (x - (1 - alpha) / np.sqrt(1 - ALPHA_BARS[t]) * _net_np(x, float(t))) / np.sqrt(alpha)
        if i + 1 < len(grid):
            x = x + np.sqrt(1 - alpha) * next(z)
    np.testing.assert_allclose(out.double().numpy(), x, atol=2e-4, rtol=0)


@pytest.mark.parametrize("w", [0.0, 0.3, 2.0])
def test_guided_loop_matches_numpy_in_float32(logsnr, w):
    labels = torch.tensor([0, 4, 9])
    out = sample("ancestral", Net(), logsnr, _noise(), torch.Generator().manual_seed(13), steps=32, labels=labels, w=w)
    assert out.dtype == torch.float32
    expected = _guided_np(_noise().double().numpy(), labels.numpy(), w, 32, 13)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=2e-4, rtol=0)
    assert out.sum().item() == pytest.approx(GOLDEN[f"guided-{w}"], abs=2e-3)


GOLDEN = {  # sums of the results above (the CPU generator's draws); the NumPy loops agree with them
    "ancestral": -0.5168, "ddim-20-0.0": -5.7027, "ddim-20-0.5": -5.7726, "ddim-50-1.0": 1.1393,
    "guided-0.0": -7.2952, "guided-0.3": -5.7582, "guided-2.0": 2.4174,
}


# -- the guided combination, float32 ----------------------------------------------------------
class TwoImages(nn.Module):
    """Label c: the exact noise for the data set {x_c}; the null label: for {x_null}. Since the
    exact noise is affine in the image, the guided prediction (1 + w) eps_c - w eps_null is the
    exact noise for (1 + w) x_c - w x_null, which the sampler must then return."""

    null_label = 10

    def __init__(self, images):
        super().__init__()
        self.images = images  # (11, 1, H, W): digits 0-9, then the null image

    def forward(self, z, t, labels):
        lam = _lambda_of_model_time(t).float().view(-1, 1, 1, 1)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        return (z - alpha * self.images[labels]) / sigma


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0, 4.0])
def test_guided_sampler_returns_the_guided_combination(logsnr, w):
    g = torch.Generator().manual_seed(5)
    images = torch.rand(11, 1, 6, 6, generator=g) * 0.2 - 0.1  # |(1 + w) x_c - w x_null| <= 0.9 at w = 4
    labels = torch.tensor([3, 7, 7, 0])
    z = torch.randn(4, 1, 6, 6, generator=g)
    out = sample("ancestral", TwoImages(images), logsnr, z, g, steps=64, labels=labels, w=w)
    assert out.dtype == torch.float32
    expected = (1 + w) * images[labels] - w * images[10]
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)
