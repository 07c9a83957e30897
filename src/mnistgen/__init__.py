"""mnistgen: a VAE, a DDPM and a classifier-free-guidance diffusion model of MNIST digits.

    import mnistgen
    model = mnistgen.load("pretrained:cfg")
    sevens = model.sample(16, labels=7)  # (16, 1, 28, 28) in [0, 1]

The public names (``load``, ``Model``, ``train``, ``evaluate``, ``draw_figures``, ``reproduce``,
``pretrained_names``) live in :mod:`mnistgen.api`; they are imported on first use, so the command
line starts without loading torch until it needs it.
"""

__version__ = "0.1.0"

__all__ = ["Model", "TrainedRun", "draw_figures", "evaluate", "export_pretrained", "load", "pretrained_names",
           "reproduce", "train"]


def __getattr__(name: str):
    if name in __all__:
        from mnistgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'mnistgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
