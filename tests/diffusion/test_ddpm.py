import numpy as np
import pytest
import torch
from torch import nn

from mnistgen.config import CFGConfig, DDPMConfig
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen.diffusion import samplers
from tests.diffusion.sampling import sample
from mnistgen.diffusion.ddpm import GaussianDiffusion


@pytest.fixture(scope="module")
def process():
    return GaussianDiffusion(DDPMConfig())


def test_schedule_values(process):
    s = process.schedule
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alpha_bars.numpy(), expected, rtol=1e-5)
    assert s.alpha_bars[-1].item() < 1e-4  # x_T is almost pure noise
    assert s.posterior_variance[0].item() == 0.0  # beta~ at t = 0 (paper's t = 1) vanishes
    assert (s.posterior_variance[1:] > 0).all() and (s.posterior_variance <= s.betas).all()


def test_schedule_is_not_mutated_by_sampling(process):
    before = [v.clone() for v in process.schedule]
    sample("ddim", lambda x, t: torch.zeros_like(x), process, torch.randn(2, 1, 4, 4), steps=10, eta=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, process.schedule))


@pytest.mark.parametrize("t", [0, 10, 250, 999])
def test_q_sample_moments_match_closed_form(process, t):
    g = torch.Generator().manual_seed(t)
    x0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    n = 50_000
    tt = torch.full((n,), t)
    xt = process.q_sample(x0.expand(n, 1, 4, 4), tt, torch.randn(n, 1, 4, 4, generator=g))
    ab = torch.tensor(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[: t + 1]))  # float64, independent
    torch.testing.assert_close(xt.double().mean(0, keepdim=True), (ab.sqrt() * x0).double(), atol=0.02, rtol=0)
    torch.testing.assert_close(xt.double().var(0), torch.full((1, 4, 4), 1 - ab.item(), dtype=torch.float64),
                               atol=0.02 * max(1 - ab.item(), 0.01) + 1e-4, rtol=0.03)


@pytest.mark.parametrize("t", [1, 5, 300, 999])
def test_posterior_equals_gaussian_conditioning(process, t):
    """q(x_{t-1} | x_t, x_0) from the joint Gaussian of (x_{t-1}, x_t) given x_0, in float64."""
    betas = np.linspace(1e-4, 0.02, 1000)  # the schedule again, independently, in float64
    beta, ab_prev = betas[t], np.prod(1 - betas[:t])
    alpha = 1 - beta
    x0, xt = 0.3, -0.7
    mu = np.array([np.sqrt(ab_prev) * x0, np.sqrt(alpha * ab_prev) * x0])  # means of (x_{t-1}, x_t)
    v_prev = 1 - ab_prev
    cov = np.array([[v_prev, np.sqrt(alpha) * v_prev], [np.sqrt(alpha) * v_prev, alpha * v_prev + beta]])
    cond_mean = mu[0] + cov[0, 1] / cov[1, 1] * (xt - mu[1])
    cond_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    mean, var = process.q_posterior(torch.tensor([[[[x0]]]]), torch.tensor([[[[xt]]]]), torch.tensor([t]))
    assert mean.item() == pytest.approx(cond_mean, rel=1e-4, abs=1e-6)
    assert var.item() == pytest.approx(cond_var, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("t, t_next", [(1, 0), (500, 499), (999, 998), (999, 979), (400, 150), (30, 0)])
def test_reverse_step_with_true_noise_is_the_posterior_mean(process, t, t_next):
    """Eq. 11 with the exact eps is the mean of q(x_{t_next} | x_t, x_0) (DDPM eq. 7 for consecutive steps),
    whose mean and the variance beta' = 1 - ab_t / ab_{t_next} are computed here in float64 from the
    Gaussian conditional of (x_{t_next}, x_t) given x_0 (x_t = sqrt(ab_t / ab_{t_next}) x_{t_next} + noise)."""
    g = torch.Generator().manual_seed(t)
    x0 = (torch.rand(8, 1, 4, 4, generator=g) * 2 - 1).double()
    eps = torch.randn(x0.shape, generator=g).double()
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    xt = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
    a = np.sqrt(ab[t] / ab[t_next])  # x_t = a x_{t_next} + sqrt(1 - a^2) e
    var_next, cov = 1 - ab[t_next], a * (1 - ab[t_next])  # Var(x_{t_next} | x0), Cov(x_{t_next}, x_t | x0)
    mean_next = np.sqrt(ab[t_next]) * x0 + cov / (1 - ab[t]) * (xt - np.sqrt(ab[t]) * x0)
    mean, var = process.p_step(xt.float(), t, t_next, eps.float())
    torch.testing.assert_close(mean.double(), mean_next, atol=3e-4, rtol=0)
    beta = 1 - ab[t] / ab[t_next]
    assert var.item() == pytest.approx(beta, rel=2e-3)
    if t_next == t - 1:
        assert var.item() == process.schedule.betas[t].item()  # the schedule's beta_t itself
    assert var_next - cov**2 / (1 - ab[t]) < beta  # the posterior variance beta~ is smaller: sigma^2 = beta'


class Oracle(nn.Module):
    """The exact noise predictor for a data set of one image: eps = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t)."""

    def __init__(self, process, target):
        super().__init__()
        self.process, self.target = process, target

    def forward(self, x, t):
        ab = self.process.schedule.alpha_bars[t.long()].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


@pytest.fixture(scope="module")
def target():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(1, 1, 8, 8, generator=g) * 1.6 - 0.8)


def test_ancestral_sampling_with_oracle_recovers_the_image(process, target):
    g = torch.Generator().manual_seed(0)
    out = sample("ancestral", Oracle(process, target), process, torch.randn(4, 1, 8, 8, generator=g), g)
    torch.testing.assert_close(out, target.expand(4, 1, 8, 8), atol=1e-3, rtol=0)


@pytest.mark.parametrize("steps, eta", [(50, 0.0), (20, 1.0), (1000, 0.0)])
def test_ddim_with_oracle_recovers_the_image(process, target, steps, eta):
    g = torch.Generator().manual_seed(1)
    out = sample("ddim", Oracle(process, target), process, torch.randn(4, 1, 8, 8, generator=g), g, steps=steps, eta=eta)
    torch.testing.assert_close(out, target.expand(4, 1, 8, 8), atol=1e-3, rtol=0)


@pytest.mark.parametrize("steps", [1000, 100, 25, 1])
def test_ancestral_on_fewer_steps_with_oracle_recovers_the_image(process, target, steps):
    g = torch.Generator().manual_seed(2)
    out = sample("ancestral", Oracle(process, target), process, torch.randn(4, 1, 8, 8, generator=g), g, steps=steps)
    torch.testing.assert_close(out, target.expand(4, 1, 8, 8), atol=1e-3, rtol=0)


@pytest.mark.parametrize("steps", [1, 5, 20, 1000])
def test_dpm_solver_with_oracle_follows_the_exact_path(process, target, steps):
    """With the exact predictor of a point mass x*, the probability-flow ODE keeps the noise direction:
    x_t = sqrt(ab_t) x* + sqrt(1 - ab_t) e with e fixed by x_T. Every state the solver reaches must lie
    on that path (its first- and second-order updates are both exact there), and the end on x*."""
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    e = (x.double() - np.sqrt(ab[-1]) * target.double()) / np.sqrt(1 - ab[-1])
    grid = process.timesteps(steps)
    states = []
    out = sample("dpm++2m", Oracle(process, target), process, x, on_step=lambda t, s: states.append(s), steps=steps)
    for t_next, state in zip(grid[1:], states):
        expected = np.sqrt(ab[t_next]) * target.double() + np.sqrt(1 - ab[t_next]) * e
        torch.testing.assert_close(state.double(), expected.expand_as(state), atol=1e-4, rtol=0)
    torch.testing.assert_close(out, target.expand(4, 1, 8, 8), atol=1e-4, rtol=0)


def test_ddim_sigma_at_eta_one_is_the_ddpm_posterior_std_on_consecutive_steps(process):
    ab = process.schedule.alpha_bars.double()
    t = torch.arange(1, 1000)
    sigma = samplers.ddim_sigma(ab[t], ab[t - 1], 1.0)
    torch.testing.assert_close(sigma**2, process.schedule.posterior_variance[t].double(), rtol=1e-3, atol=0)
    torch.testing.assert_close(samplers.ddim_sigma(ab[t], ab[t - 1], 0.5), 0.5 * sigma)


def test_ddim_grid_covers_both_ends():
    grid = GaussianDiffusion(DDPMConfig()).timesteps(50)
    assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 50 and grid == sorted(grid, reverse=True)


def test_ddim_eta_zero_is_deterministic_and_generator_controls_noise(process):
    model = lambda x, t: 0.1 * x  # noqa: E731
    x = torch.randn(2, 1, 4, 4)
    a = sample("ddim", model, process, x, torch.Generator().manual_seed(1), steps=10, eta=0.0)
    b = sample("ddim", model, process, x, torch.Generator().manual_seed(2), steps=10, eta=0.0)
    torch.testing.assert_close(a, b)
    c = sample("ddim", model, process, x, torch.Generator().manual_seed(1), steps=10, eta=1.0)
    d = sample("ddim", model, process, x, torch.Generator().manual_seed(1), steps=10, eta=1.0)
    e = sample("ddim", model, process, x, torch.Generator().manual_seed(2), steps=10, eta=1.0)
    torch.testing.assert_close(c, d)
    assert not torch.allclose(c, e)


def test_min_snr_weights(process):
    """Min-SNR-gamma (Hang et al. 2023) weights the x_0 error by min(SNR, gamma). Since
    x_0 - x0_theta = sqrt(1 - ab) / sqrt(ab) (eps_theta - eps), the eps loss must equal that
    x_0-space loss; checked by redoing the step's draws and working in x_0 space, in float64."""
    gamma = 5.0
    weighted = GaussianDiffusion(DDPMConfig(loss_weighting="min-snr", min_snr_gamma=gamma))
    model = lambda x, t: 0.7 * x + 0.001 * t.view(-1, 1, 1, 1)  # noqa: E731
    x0 = torch.rand(512, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = weighted.loss(model, x0, generator=torch.Generator().manual_seed(1)).item()
    g = torch.Generator().manual_seed(1)  # the same draws, in the same order: t, then the noise
    t = torch.randint(0, 1000, (512,), generator=g).numpy()
    noise = torch.randn(x0.shape, generator=g).double().numpy()
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t].reshape(-1, 1, 1, 1)
    x = x0.double().numpy()
    xt = np.sqrt(ab) * x + np.sqrt(1 - ab) * noise
    x0_hat = (xt - np.sqrt(1 - ab) * (0.7 * xt + 0.001 * t.reshape(-1, 1, 1, 1))) / np.sqrt(ab)
    snr = ab[:, 0, 0, 0] / (1 - ab[:, 0, 0, 0])
    expected = np.mean(np.minimum(snr, gamma) * ((x - x0_hat) ** 2).mean(axis=(1, 2, 3)))
    assert loss == pytest.approx(expected, rel=1e-4)
    assert torch.equal(process.loss_weights(torch.tensor([0, 500, 999])), torch.ones(3))  # uniform: eq. 14


def test_a_process_built_for_a_device_without_index_samples_on_that_device():
    """pick_device gives "cuda" while the model's tensors sit on cuda:0; the process must take them as its
    own device (here "cpu:0" against "cpu", the same mismatch without a GPU)."""
    process = GaussianDiffusion(DDPMConfig(), device=torch.device("cpu", 0))
    grid = process.grid(5, "time", torch.zeros(1).device)
    assert grid.steps == 5
    sample("ddim", lambda x, t: torch.zeros_like(x), process, torch.randn(2, 1, 4, 4), steps=5, eta=1.0)


@pytest.mark.parametrize("steps", [2, 10, 50, 250, 734, 1000])
def test_a_log_snr_grid_has_exactly_the_steps_asked_for(steps):
    """As many distinct timesteps as asked, from T-1 down to 0, and (where the schedule allows) each the
    one nearest its evenly spaced log-SNR; an independent float64 computation of lambda_t."""
    process = GaussianDiffusion(DDPMConfig())
    grid = process.timesteps(steps, "log-snr")
    assert len(grid) == steps and grid == sorted(set(grid), reverse=True) and grid[0] == 999 and grid[-1] == 0
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    lam = np.log(ab / (1 - ab))
    spacing = np.diff(lam[grid])  # increasing log-SNR along the grid
    assert (spacing > 0).all()
    nearest = [int(np.abs(lam - v).argmin()) for v in np.linspace(lam[999], lam[0], steps)]
    # Each timestep is the nearest to its target until, near t = 0 where one step of the schedule spans
    # several targets, the rest take the consecutive timesteps down to 0.
    k = next((i for i, (a, b) in enumerate(zip(grid, nearest)) if a != b), steps)
    assert grid[:k] == nearest[:k] and grid[k:] == list(range(steps - k - 1, -1, -1))
    assert (k == steps) == (len(set(nearest)) == steps)


def _log_snr_np():
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    return ab, np.log(ab / (1 - ab))


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 16, 20, 50, 100, 125, 250, 500, 1000])
def test_the_trailing_grid_counts_back_from_t(steps):
    """Lin et al. 2023, table 2: trailing timesteps round(T - k T / K) - 1, k = 0 .. K-1 (NumPy's rounding,
    half to even, as diffusers' trailing spacing writes it); 999, 899, ..., 99 at K = 10, and at K = 16 the
    ties 937.5 -> 938 - 1. The grid's levels are the schedule's at those t (float64 by hand), then the clean
    image."""
    process = GaussianDiffusion(DDPMConfig())
    t = process.timesteps(steps, "trailing")
    assert t == (np.round(np.arange(1000, 0, -1000 / steps)).astype(int) - 1).tolist()
    if steps == 10:
        assert t == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    grid = process.grid(steps, "trailing")
    ab, lam = _log_snr_np()
    np.testing.assert_allclose(grid.alpha_bar[:-1].double().numpy(), ab[t], rtol=1e-6)
    np.testing.assert_allclose(grid.log_snr[:-1].double().numpy(), lam[t], rtol=1e-5, atol=1e-5)
    assert grid.ends_clean and grid.sigma[-1] == 0 and grid.index == (*t, -1)


@pytest.mark.parametrize("spacing", ["time", "trailing"])
@pytest.mark.parametrize("power", [0.25, 0.6, 0.8, 1.5, 2.0, 4.0])
@pytest.mark.parametrize("steps", [1, 2, 10, 50, 400, 1000])
def test_a_powered_grid_has_its_levels_and_exactly_the_steps_asked_for(spacing, power, steps):
    """(1 - k/K)^power of the time left, in float64 by hand: t = (T - 1) f^power (time) or T f^power - 1
    (trailing), f = 1 - k/(K-1) or (K - k)/K. Where rounding merges neighbours (power > 1 near t = 0, or
    K near T) they move apart, so the grid always holds K distinct timesteps from T-1 down; elsewhere
    each is the rounded formula. At power 2 the time grid is DDIM's quadratic selection."""
    process = GaussianDiffusion(DDPMConfig())
    t = process.timesteps(steps, spacing, power)
    assert len(t) == steps and t == sorted(set(t), reverse=True) and t[0] == 999 and t[-1] >= 0
    k = np.arange(steps)
    if spacing == "time":
        wanted = np.round(999 * (1 - k / max(steps - 1, 1)) ** power).astype(int)
    else:
        wanted = np.round(1000 * ((steps - k) / steps) ** power).astype(int) - 1
    wanted = np.maximum(wanted, 0)  # a trailing level below t = 0 is t = 0
    if len(set(wanted)) == steps:
        assert t == wanted.tolist()
    else:  # merged neighbours move apart, each only as far as it must: just below the level before it, or
        moved = [i for i in range(steps) if t[i] != wanted[i]]  # up to the room the levels after it need
        assert len(moved) >= steps - len(set(wanted.tolist()))  # every merge moved at least one level
        assert all(i > 0 and t[i] in (steps - 1 - i, t[i - 1] - 1) for i in moved)


def test_a_power_below_one_moves_every_level_towards_the_noise():
    process = GaussianDiffusion(DDPMConfig())
    for steps in (5, 10, 20):
        plain, early = process.timesteps(steps, "trailing"), process.timesteps(steps, "trailing", 0.8)
        assert all(e >= p for e, p in zip(early, plain)) and early[-1] > plain[-1]
    assert process.timesteps(10, "trailing", 0.8) == [999, 918, 836, 751, 664, 573, 479, 381, 275, 157]


def test_the_log_snr_spacing_takes_no_power():
    with pytest.raises(ValueError, match="takes no power"):
        GaussianDiffusion(DDPMConfig()).timesteps(10, "log-snr", 0.8)
    with pytest.raises(ValueError, match="takes no power"):
        LogSNRDiffusion(CFGConfig()).lambda_grid(10, "cpu", "log-snr", 0.8)
