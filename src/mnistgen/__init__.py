"""mnistgen: a VAE, a DDPM and a classifier-free-guidance diffusion model of MNIST digits."""

__version__ = "0.1.0"
