"""The U-Nets and the judge classifier: shapes, what their outputs depend on, their sizes, and the
sinusoidal embedding against its closed form."""

import math

import pytest
import torch

from mnistgen.config import ClassifierConfig, preset
from mnistgen.models.classifier import Classifier
from mnistgen.models.unet import ConditionalUNet, UNet, sinusoidal_embedding


def test_sinusoidal_embedding_is_its_closed_form():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = sinusoidal_embedding(t, 8)
    for b, tb in enumerate(t.tolist()):
        for k in range(4):
            w = 10_000 ** (-k / 4)
            assert emb[b, k].item() == pytest.approx(math.sin(tb * w), abs=1e-4)
            assert emb[b, 4 + k].item() == pytest.approx(math.cos(tb * w), abs=1e-4)


@pytest.mark.parametrize("name, millions", [("cpu", 1.52), ("reference", 5.19)])
def test_unet_keeps_the_image_shape_and_its_size(name, millions):
    config = preset("ddpm", name)
    net = UNet(config.model).eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x, torch.tensor([10.0, 900.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(millions, abs=0.005)


def test_unet_output_depends_on_time_and_on_each_pixel_of_its_input():
    net = UNet(preset("ddpm", "smoke").model).eval()
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = net(x, torch.tensor([5.0])), net(x, torch.tensor([500.0]))
    assert (a - b).abs().max() > 1e-4
    x.requires_grad_(True)
    net(x, torch.tensor([5.0]))[0, 0, 14, 14].backward()
    assert x.grad[0, 0, 13:16, 13:16].abs().min() > 0  # the centre pixel's neighbourhood reaches the output


def test_conditional_unet_depends_on_the_label_and_has_a_null_label():
    config = preset("cfg", "smoke").model
    net = ConditionalUNet(config).eval()
    assert net.null_label == config.num_classes == 10
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    t = torch.full((3,), 100.0)
    with torch.no_grad():
        for p in net.parameters():  # the label embedding starts at zero in some inits: make it matter
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        outs = [net(x, t, torch.full((3,), c)) for c in (3, 7, 10)]
    assert (outs[0] - outs[1]).abs().max() > 1e-5 and (outs[0] - outs[2]).abs().max() > 1e-5
    with pytest.raises(IndexError):
        net(x, t, torch.full((3,), 11))


def test_classifier_gives_logits_and_features_and_crops_padded_digits():
    net = Classifier(ClassifierConfig()).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, features = net(x), net.features(x)
        padded = net.features(torch.nn.functional.pad(x, (2, 2, 2, 2)))
    assert logits.shape == (4, 10) and features.shape == (4, ClassifierConfig().feature_dim)
    assert (features >= 0).all()  # after the ReLU
    torch.testing.assert_close(padded, features)  # 32x32 inputs are centre-cropped back to 28x28
