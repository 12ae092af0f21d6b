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

from .config import CONV_ACTS, CONV_NORMS, INITS


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


class NormGRUCell(nn.Module):
    """A GRU cell with layer normalisation over its gates (`DLHConfig.transition_norm`).

    One linear map reads [x, h] and gives the three gate pre-activations, normalised together:
    r = σ(g_r), candidate = tanh(r ⊙ g_c), u = σ(g_u − 1), h' = u ⊙ candidate + (1 − u) ⊙ h.
    The −1 starts the cell close to keeping its state, as the layer-normalised GRU of Dreamer's
    RSSM; the normalisation keeps the gates' scale fixed whatever the scale of its inputs
    (PyTorch's GRUCell has no such bound). Same call as nn.GRUCell: cell(x (B, I), h (B, H)) ->
    (B, H). Under `init: xavier` its linear map is initialised like every other linear layer.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 3 * hidden_size, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        reset, candidate, update = self.norm(self.gates(torch.cat([x, h], -1))).chunk(3, -1)
        candidate = torch.tanh(torch.sigmoid(reset) * candidate)
        update = torch.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * h




def _conv_block(norm: str, act: str, width: int) -> list[nn.Module]:
    """What follows a hidden conv layer: the normalisation (if any), then the activation.

    "layer" normalises each sample over its channels and positions (GroupNorm with one group,
    learned per-channel gain and bias), as DreamerV3's towers normalise every layer.
    """
    if norm not in CONV_NORMS or act not in CONV_ACTS:
        raise ValueError(f"conv norm must be one of {CONV_NORMS} and act one of {CONV_ACTS}, "
                         f"got {norm!r}, {act!r}")
    block: list[nn.Module] = [nn.GroupNorm(1, width)] if norm == "layer" else []
    return block + [nn.ELU() if act == "elu" else nn.SiLU()]


class ConvEncoder(nn.Module):
    """Frames (N, C, H, W) in [0, 1] -> features x^1 (N, out_dim)."""

    def __init__(self, channels: int, image_size: int, depth: int, out_dim: int,
                 norm: str = "none", act: str = "elu") -> None:
        super().__init__()
        widths = [channels] + [depth * m for m in (1, 2, 4, 8)]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), *_conv_block(norm, act, cout)]
        self.convs = nn.Sequential(*layers)
        side = image_size // 16
        self.fc = nn.Linear(widths[-1] * side * side, out_dim)

    def forward(self, frames: Tensor) -> Tensor:
        h = self.convs(frames - 0.5)  # (N, 8·depth, H/16, W/16)
        return self.fc(h.flatten(1))


class ConvDecoder(nn.Module):
    """Top-down context c^0 (N, in_dim) -> Gaussian means of frames (N, C, H, W)."""

    def __init__(self, channels: int, image_size: int, depth: int, in_dim: int,
                 norm: str = "none", act: str = "elu") -> None:
        super().__init__()
        self.side = image_size // 16
        self.width = depth * 8
        self.fc = nn.Linear(in_dim, self.width * self.side * self.side)
        self.fc_out = nn.Sequential(*_conv_block(norm, act, self.width))
        widths = [depth * m for m in (8, 4, 2, 1)] + [channels]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
            if i < 3:
                layers += _conv_block(norm, act, cout)
        self.deconvs = nn.Sequential(*layers)

    def forward(self, context: Tensor) -> Tensor:
        h = self.fc(context).view(-1, self.width, self.side, self.side)
        h = self.fc_out(h)
        return self.deconvs(h) + 0.5  # from (N, 8·depth, H/16, W/16)


def initialize(module: nn.Module, scheme: str) -> None:
    """Re-initialise every linear and (transposed) conv layer inside `module`, in place.

    "torch" keeps PyTorch's default (kaiming-uniform with a = √5: weight variance 1/(3·fan_in),
    so each layer shrinks its input's variance about 3×, before the activation); "xavier" draws
    weights Glorot-uniform (variance 2/(fan_in + fan_out), Keras' and the Dreamers' default)
    and zeroes biases, so a signal keeps its scale through a deep stack. GRU cells keep theirs.
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    if scheme == "torch":
        return
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


__all__ = ["MLP", "ConvEncoder", "ConvDecoder", "initialize"]
