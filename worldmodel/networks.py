"""Building blocks: MLPs and the convolutional image encoder / decoder (App. A.1).

The conv towers are 4 layers each (kernel 4, stride 2, padding 1), so a frame of size
H = W (a multiple of 16) becomes a (8·depth, H/16, W/16) map that a linear layer turns
into x^1; the decoder mirrors it from c^0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Fully connected ELU network: in_dim -> hidden... -> out_dim (no activation at the end)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        layers: list[nn.Module] = []
        size = in_dim
        for width in hidden:
            layers += [nn.Linear(size, width), nn.ELU()]
            size = width
        layers.append(nn.Linear(size, out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        self._linears = [m for m in layers if isinstance(m, nn.Linear)]

    def forward(self, x: Tensor) -> Tensor:
        # Functional calls instead of one module call per layer: at batch 1 (an acting agent,
        # imagination) the per-call overhead of the layers is most of the cost.
        last = len(self._linears) - 1
        for i, linear in enumerate(self._linears):
            x = F.linear(x, linear.weight, linear.bias)
            if i < last:
                x = F.elu(x)
        return x


class ConvEncoder(nn.Module):
    """Frames (N, C, H, W) in [0, 1] -> features x^1 (N, out_dim)."""

    def __init__(self, channels: int, image_size: int, depth: int, out_dim: int) -> None:
        super().__init__()
        widths = [channels] + [depth * m for m in (1, 2, 4, 8)]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ELU()]
        self.convs = nn.Sequential(*layers)
        side = image_size // 16
        self.fc = nn.Linear(widths[-1] * side * side, out_dim)

    def forward(self, frames: Tensor) -> Tensor:
        h = self.convs(frames - 0.5)  # (N, 8·depth, H/16, W/16)
        return self.fc(h.flatten(1))


class ConvDecoder(nn.Module):
    """Top-down context c^0 (N, in_dim) -> Gaussian means of frames (N, C, H, W)."""

    def __init__(self, channels: int, image_size: int, depth: int, in_dim: int) -> None:
        super().__init__()
        self.side = image_size // 16
        self.width = depth * 8
        self.fc = nn.Linear(in_dim, self.width * self.side * self.side)
        widths = [depth * m for m in (8, 4, 2, 1)] + [channels]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
            if i < 3:
                layers.append(nn.ELU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, context: Tensor) -> Tensor:
        h = torch.nn.functional.elu(self.fc(context))
        h = h.view(-1, self.width, self.side, self.side)  # (N, 8·depth, H/16, W/16)
        return self.deconvs(h) + 0.5


__all__ = ["MLP", "ConvEncoder", "ConvDecoder"]
