"""Building blocks of MST-Net: patch embeddings, the transformer block, conv and deconv blocks.

Shapes follow MONAI's convention: (B, C, D, H, W), depth = the slice axis. Token sequences
are (B, L, C) with L = gd * gh * gw tokens in (d, h, w) raster order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def upsampling_factors(patch_size: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
    """Per-stage upsampling factors of the 4-stage decoder, coarse to fine, for a ViT patch.

    The product of the four factors along each axis equals the patch size along it, so the
    decoder returns the token grid to full resolution. Rule, per axis with patch ``2**e``:
    the finest stage gets x2 (the paper's last kernel = stride = 2 transposed conv); the
    remaining ``e - 1`` doublings are spread over the three coarser stages as evenly as
    possible, coarsest first. A patch of 1 gives x1 everywhere (the planar variant's depth).

    Example: the paper's patch (16, 128, 128) gives ((2, 4, 4), (2, 4, 4), (2, 4, 4), (2, 2, 2));
    the cpu preset's (4, 16, 16) gives ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)).
    """
    per_axis = []
    for size in patch_size:
        exponent = size.bit_length() - 1
        if size < 1 or 2**exponent != size:
            raise ValueError(f"patch size {size} is not a power of two; patch_size={patch_size}")
        if exponent == 0:
            per_axis.append((1, 1, 1, 1))
            continue
        base, extra = divmod(exponent - 1, 3)
        coarse = [2 ** (base + (1 if stage < extra else 0)) for stage in range(3)]
        per_axis.append((*coarse, 2))
    return tuple(tuple(axis[stage] for axis in per_axis) for stage in range(4))


def conv_kernel(planar: bool) -> tuple[int, int, int]:
    """3 x 3 x 3 for volumes; 1 x 3 x 3 in the planar (per-slice) variant."""
    return (1, 3, 3) if planar else (3, 3, 3)


def conv_block(in_channels: int, out_channels: int, planar: bool = False) -> Convolution:
    """MONAI ``Convolution``: conv (3x3x3, or 1x3x3 if planar) -> BatchNorm -> ReLU; keeps (D, H, W).

    (B, in_channels, D, H, W) -> (B, out_channels, D, H, W).
    """
    return Convolution(3, in_channels, out_channels, kernel_size=conv_kernel(planar), act="RELU", norm="BATCH", bias=False)


def maybe_checkpoint(function: Callable[..., Tensor], *args: Any, enabled: bool) -> Tensor:
    """``function(*args)``, recomputed in backward when ``enabled`` and grads are needed.

    Note: BatchNorm layers inside a checkpointed segment update their running statistics
    twice per step (forward and recomputation); the statistics stay unbiased estimates.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


class DeconvBlock(nn.Module):
    """The paper's deconv block: transposed conv (kernel = stride = factor) -> conv-BN-ReLU.

    MONAI's ``UnetrPrUpBlock`` stacks an extra transposed conv and residual blocks; the
    release uses this lighter block, so it is written here.

    (B, in_channels, D, H, W) -> (B, out_channels, D*fd, H*fh, W*fw).

    Args:
        in_channels: input width.
        out_channels: output width.
        factor: (fd, fh, fw) upsampling factor.
        planar: 1 x 3 x 3 convolution instead of 3 x 3 x 3.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: tuple[int, int, int], planar: bool = False) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=factor, stride=factor)
        self.conv = conv_block(out_channels, out_channels, planar)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.upsample(x))


class LinearPatchEmbedding(nn.Module):
    """The paper's patch embedding: a Conv3d with kernel = stride = patch (a linear map per patch).

    (B, 1, D, H, W) -> (B, C, D/pd, H/ph, W/pw). At the reference size this one layer holds
    768 x 16*128*128 + 768 = 201.3 M parameters.
    """

    def __init__(self, hidden_size: int, patch_size: tuple[int, int, int], in_channels: int = 1) -> None:
        super().__init__()
        self.projection = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(x)


class ConvStemPatchEmbedding(nn.Module):
    """Convolutional stem (an ablation, not in the paper): four strided conv-BN-ReLU stages.

    Stage strides are :func:`upsampling_factors` of the patch, fine to coarse, so the stem
    lands on the same token grid as the linear projection; widths C/8, C/4, C/2, C, then a
    1 x 1 x 1 projection. Kernel per axis: stride + 1 (even stride) or 3 (stride 1), padded
    so that an axis of size n becomes n / stride.

    (B, 1, D, H, W) -> (B, C, D/pd, H/ph, W/pw).
    """

    def __init__(self, hidden_size: int, patch_size: tuple[int, int, int], in_channels: int = 1) -> None:
        super().__init__()
        widths = [max(hidden_size // 8, 1), max(hidden_size // 4, 1), max(hidden_size // 2, 1), hidden_size]
        layers: list[nn.Module] = []
        channels = in_channels
        for factor, width in zip(reversed(upsampling_factors(patch_size)), widths):
            kernel = tuple(f + 1 + f % 2 for f in factor)
            layers.append(Convolution(3, channels, width, strides=factor, kernel_size=kernel,
                                      padding=tuple((k - 1) // 2 for k in kernel), act="RELU", norm="BATCH", bias=False))
            channels = width
        layers.append(nn.Conv3d(channels, hidden_size, kernel_size=1))
        self.stages = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient
    kernels on CUDA). Same parameterisation as ``nn.MultiheadAttention``: one qkv projection
    (q, k, v stacked along the output) and an output projection.

    (B, L, C) -> (B, L, C).
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, channels = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, channels))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block of the paper's ViT.

    x + Dropout(MHSA(LN(x))), then x + MLP(LN(x)) with MLP = Linear -> ReLU -> Dropout ->
    Linear -> Dropout. LayerNorm eps 1e-6. MONAI's ``TransformerBlock`` uses GELU and a
    bias-free qkv by default; the release uses ReLU, so this one is written here (tested
    against ``nn.MultiheadAttention``).

    (B, L, C) -> (B, L, C).

    Args:
        hidden_size: C (768).
        num_heads: attention heads (4).
        mlp_size: MLP width (2048).
        dropout: MLP and residual dropout (0.1).
        attention_dropout: dropout on attention weights (0.0).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_size: int, dropout: float = 0.1,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, attention_dropout)
        self.attention_dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(mlp_size, hidden_size), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention_dropout(self.attention(self.norm1(x)))
        return x + self.mlp(self.norm2(x))
