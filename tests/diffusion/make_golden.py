"""Writes tests/fixtures/golden_samplers.safetensors: what each sampler drew from the shipped `cpu` models at
commit 14f52a8 (before the samplers shared one denoiser interface). test_golden_samplers.py checks that
the samplers still draw the same, so the study's numbers stay what they were on the same seeds.

    python tests/diffusion/make_golden.py      (as it ran at 14f52a8; the CFG model's sampler was named
                                                "cfg" then, "ancestral" since: re-baselining now needs
                                                test_golden_samplers.RENAMED applied to CASES)
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

import mnistgen
from mnistgen.diffusion.samplers import SamplerSettings  # noqa: E402 (the names of 14f52a8)

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "golden_samplers.safetensors"

CASES = {  # name -> (model, settings, n, labels)
    "ddpm_ddim50_eta1": ("ddpm", SamplerSettings("ddim", 50, 1.0, grid="time"), 3, None),  # the cpu study's until 2026-12-08
    "ddpm_ddim20_eta0": ("ddpm", SamplerSettings("ddim", 20, 0.0, grid="time"), 3, None),
    "ddpm_ancestral1000": ("ddpm", SamplerSettings("ancestral", 1000, grid="time"), 2, None),  # the reference study's
    "ddpm_ancestral50": ("ddpm", SamplerSettings("ancestral", 50, grid="time"), 3, None),
    "ddpm_dpm2m10": ("ddpm", SamplerSettings("dpm++2m", 10, grid="time"), 3, None),
    "ddpm_dpm2msde10": ("ddpm", SamplerSettings("dpm++2m-sde", 10, grid="time"), 3, None),
    "cfg_16_w0.3": ("cfg", SamplerSettings("cfg", 16, guidance=0.3), 3, [7, 1, 3]),  # the cpu study's
    "cfg_16_w0": ("cfg", SamplerSettings("cfg", 16, guidance=0.0), 3, [0, 4, 9]),
    "cfg_64_w4": ("cfg", SamplerSettings("cfg", 64, guidance=4.0), 2, [2, 8]),
}


def draw(models: dict, name: str) -> tuple[torch.Tensor, list[int]]:
    kind_name, settings, n, labels = CASES[name]
    m = models[kind_name]
    seen: list[int] = []
    g = torch.Generator().manual_seed(17)
    y = torch.tensor(labels) if labels is not None else None
    x = m.kind.sample(m.config, m.network, n, g, settings, y, m.trained.process, lambda t, _x: seen.append(t))
    return x, seen


def loss_and_gradient(model) -> tuple[torch.Tensor, torch.Tensor]:
    """One training loss of the shipped network on 8 test digits, and the gradient of its first layer."""
    from mnistgen.data.mnist import load

    kind = model.kind
    network = kind.build_model(model.config)
    network.load_state_dict(model.network.state_dict())
    network.train()
    data = load("test", kind.data_scale, model.config.data.resolution)
    objective = kind.build_objective(model.config)
    g = torch.Generator().manual_seed(5)
    labels = data.y[:8] if kind.takes_labels else None
    loss = objective.loss(network, data.x[:8], labels, generator=g) if labels is not None else \
        objective.loss(network, data.x[:8], generator=g)
    loss.backward()
    first = next(p for p in network.parameters() if p.grad is not None)
    return loss.detach().reshape(1), first.grad.detach().clone()


def main() -> None:
    models = {k: mnistgen.load(f"pretrained:{k}", device="cpu") for k in ("ddpm", "cfg")}
    tensors = {}
    for k, m in models.items():
        tensors[f"{k}_loss"], tensors[f"{k}_grad"] = loss_and_gradient(m)
    for name in CASES:
        x, seen = draw(models, name)
        tensors[name] = x.contiguous()
        tensors[name + "/steps"] = torch.tensor(seen)
    save_file(tensors, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
