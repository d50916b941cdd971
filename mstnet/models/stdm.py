"""STDM: spatial-temporal dependency modelling on a decoder skip feature map."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn


class STDM(nn.Module):
    """Spatial-temporal dependency modelling (MST-Net, Fig. 1d), as in the public release.

    y = GELU(BN(Conv(1 x 3 x 3)(x))); out = y + MHA(y) where the multi-head self-attention
    runs along one axis for every other position:

    - ``axis="depth"`` (the release): across the slices of one scan at each (h, w). Note that
      at the reference size z12 has depth 1 and z9 depth 2, so this attention sees 1 or 2
      positions.
    - ``axis="time"`` (the spatiotemporal reading of the name, an ablation): across the T
      time points of one patient at each (d, h, w).

    The figure draws the residual from the block input; the release adds the attention to
    the conv output, which is what this module does (the parameter count is the same).

    (B*T, C, D, H, W) -> (B*T, C, D, H, W); batch entries ordered patient-major (b, t).

    Args:
        channels: C.
        num_heads: attention heads (2).
        axis: "depth" or "time".

    Parameters: 9 C^2 (conv, bias-free before BN) + 4 C^2 + 4 C (attention) + 2 C (BN):
    7.67 M at C = 768, 3.41 M at C = 512.
    """

    def __init__(self, channels: int, num_heads: int = 2, axis: Literal["depth", "time"] = "depth") -> None:
        super().__init__()
        if axis not in ("depth", "time"):
            raise ValueError(f"STDM axis must be 'depth' or 'time', not {axis!r}")
        self.axis = axis
        self.conv = nn.Sequential(
            nn.Conv3d(channels, channels, kernel_size=(1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(channels),
            nn.GELU(),
        )
        self.attention = nn.MultiheadAttention(channels, num_heads, batch_first=True)

    def forward(self, x: Tensor, timepoints: int) -> Tensor:
        if x.shape[0] % timepoints:
            raise ValueError(f"STDM: batch {x.shape[0]} is not a multiple of timepoints={timepoints}")
        y = self.conv(x)
        n, c, d, h, w = y.shape
        if self.axis == "depth":
            tokens = y.permute(0, 3, 4, 2, 1).reshape(n * h * w, d, c)
        else:
            tokens = y.reshape(n // timepoints, timepoints, c, d, h, w).permute(0, 3, 4, 5, 1, 2)
            tokens = tokens.reshape(-1, timepoints, c)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        if self.axis == "depth":
            attended = attended.reshape(n, h, w, d, c).permute(0, 4, 3, 1, 2)
        else:
            attended = attended.reshape(n // timepoints, d, h, w, timepoints, c).permute(0, 4, 5, 1, 2, 3)
            attended = attended.reshape(n, c, d, h, w)
        return y + attended
