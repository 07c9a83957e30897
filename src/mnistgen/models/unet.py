"""The U-Net noise predictor eps_theta(x_t, t) and its class-conditional composition (the same network
predicts v or x_0 where the noise process says so: only its training target changes).

One set of building blocks serves every preset: a sinusoidal time embedding
(Vaswani et al. 2017, as in DDPM appendix B), a double 3x3 conv block with GroupNorm and
GELU into which the time embedding is added (the study's block, with a residual path),
and optional self-attention at the lowest resolution. The ``reference`` preset is the
study's network at 32x32 (32-64-128-128 channels, bottleneck 256); the ``cpu`` preset
first folds 2x2 pixel blocks into channels (pixel-unshuffle), so every convolution runs
on a quarter of the positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnistgen.config import UNetConfig


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) float times -> (B, dim) [sin(t w_k), cos(t w_k)] with w_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP: (B,) -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))


class ConvBlock(nn.Module):
    """conv3x3-GN-GELU (+ time embedding) conv3x3-GN, residual, GELU: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.emb = nn.Linear(emb_dim, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(x))) + self.emb(emb)[:, :, None, None]  # (B, c_out, H, W)
        h = self.norm2(self.conv2(h))
        return F.gelu(h + self.skip(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-norm, residual."""

    def __init__(self, channels: int, groups: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """eps_theta(x, t): (B, 1, H, W), (B,) -> (B, 1, H, W).

    Level i works at resolution H / unshuffle / 2^i with ``channels[i]`` channels; the way
    down stores one skip per level, the bottleneck runs at the lowest level, and the way
    up concatenates each skip after a bilinear 2x upsampling.
    """

    def __init__(self, config: UNetConfig = UNetConfig(), in_channels: int = 1):
        super().__init__()
        self.config = config
        ch, s, emb, gr = config.channels, config.unshuffle, config.time_dim, config.groups
        self.time_embedding = TimeEmbedding(emb)
        self.unshuffle = nn.PixelUnshuffle(s) if s > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()
        self.stem = nn.Conv2d(in_channels * s * s, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        for i, c in enumerate(ch):
            c_prev = ch[max(i - 1, 0)]
            self.down.append(nn.ModuleList(ConvBlock(c_prev if j == 0 else c, c, emb, gr) for j in range(config.blocks)))
        self.mid = nn.ModuleList([ConvBlock(ch[-1], config.bottleneck, emb, gr), ConvBlock(config.bottleneck, config.bottleneck,
                                                                                     emb, gr),
                                  ConvBlock(config.bottleneck, ch[-1], emb, gr)])
        self.attention = SelfAttention(config.bottleneck, gr) if config.attention else None
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            self.up.append(nn.ModuleList([ConvBlock(ch[i + 1] + ch[i], ch[i], emb, gr)]
                                         + [ConvBlock(ch[i], ch[i], emb, gr) for _ in range(config.blocks - 1)]))
        self.head = nn.Conv2d(ch[0], in_channels * s * s, 1)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embedding(t)  # (B, time_dim)

    def forward_embedded(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The network body given an already computed conditioning embedding (B, time_dim)."""
        h = self.stem(self.unshuffle(x))  # (B, ch0, H/s, W/s)
        skips = []
        for i, blocks in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2)  # halve the resolution
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
        h = self.mid[0](h, emb)
        if self.attention is not None:
            h = self.attention(h)
        h = self.mid[2](self.mid[1](h, emb), emb)
        for blocks, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.shuffle(self.head(h))  # (B, 1, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(x, self.embed_time(t))


class ConditionalUNet(nn.Module):
    """eps_theta(x, t, c): the :class:`UNet` with a learned label embedding added to the time embedding.

    Labels 0..num_classes-1 are digits; label ``num_classes`` is the learned null label
    that classifier-free guidance trains with probability p_uncond and uses for eps(z, null).
    """

    def __init__(self, config: UNetConfig, in_channels: int = 1):
        super().__init__()
        if config.num_classes < 1:
            raise ValueError("ConditionalUNet needs config.num_classes >= 1")
        self.config = config
        self.null_label = config.num_classes
        self.unet = UNet(config, in_channels)
        self.label_embedding = nn.Embedding(config.num_classes + 1, config.time_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.unet.embed_time(t) + self.label_embedding(labels)  # (B, time_dim)
        return self.unet.forward_embedded(x, emb)
