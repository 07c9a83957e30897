"""One call for the tests: a registry sampler on a network and a process, as the kinds run it."""

from mnistgen.diffusion import samplers


def sample(name, network, process, x, generator=None, on_step=None, *, steps=None, labels=None, w=None,
           spacing="time", power=1.0, **options):
    """The sampler ``name`` from ``x`` on ``process``'s grid of ``steps`` (default: all T of a DDPM);
    guided with weight ``w`` around ``labels`` when both are given (null label 10); ``power``: a powered
    spacing's."""
    steps = steps or process.T
    grid = process.grid(steps, spacing, x.device, power)
    denoiser = samplers.denoiser_for(network, process.config.prediction, labels, w, null_label=10)
    return samplers.SAMPLERS[name].loop()(denoiser, x, grid, generator, on_step, **options)
