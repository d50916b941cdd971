"""The 3D ViT encoder of MST-Net with four hidden-state taps (z3, z6, z9, z12 in the paper)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mstnet.models.blocks import ConvStemPatchEmbedding, LinearPatchEmbedding, TransformerBlock, maybe_checkpoint


class ViTEncoder(nn.Module):
    """3D ViT (Dosovitskiy et al. 2021; as in UNETR, Hatamizadeh et al. 2022) with four taps.

    Patch embedding -> + learnable position embedding (zeros init) -> dropout -> L pre-norm
    transformer blocks. The hidden states after blocks L/4, L/2, 3L/4 and L (3, 6, 9, 12 in
    the paper) are returned as feature maps; the last one passes the final LayerNorm, as in
    UNETR.

    (N, 1, D, H, W) -> 4 maps of (N, C, gd, gh, gw), gd = D/pd, gh = H/ph, gw = W/pw.

    Args:
        image_size: (D, H, W) the encoder is built for.
        patch_size: (pd, ph, pw); image_size must be divisible by it.
        hidden_size: C (768).
        num_layers: transformer blocks L (12), a multiple of 4.
        num_heads: attention heads (4).
        mlp_size: MLP width (2048).
        embedding_dropout: dropout after the position embedding (0.1).
        dropout: transformer dropout (0.1).
        attention_dropout: attention-weight dropout (0.0).
        patch_embedding: "linear" (paper) or "conv_stem".
        gradient_checkpointing: recompute each block in backward.
    """

    def __init__(
        self,
        image_size: tuple[int, int, int],
        patch_size: tuple[int, int, int],
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 4,
        mlp_size: int = 2048,
        embedding_dropout: float = 0.1,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        patch_embedding: Literal["linear", "conv_stem"] = "linear",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 4 or num_layers % 4:
            raise ValueError(f"num_layers={num_layers} must be a positive multiple of 4")
        if any(s % p for s, p in zip(image_size, patch_size)):
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.image_size = tuple(image_size)
        self.grid = tuple(s // p for s, p in zip(image_size, patch_size))
        self.gradient_checkpointing = gradient_checkpointing
        embedding = {"linear": LinearPatchEmbedding, "conv_stem": ConvStemPatchEmbedding}[patch_embedding]
        self.patch_embedding = embedding(hidden_size, patch_size)
        num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.position_embedding = nn.Parameter(torch.zeros(1, num_tokens, hidden_size))
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, mlp_size, dropout, attention_dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.tap_after = tuple(num_layers * k // 4 for k in range(1, 5))

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.image_size:
            raise ValueError(f"ViT input must be (N, 1, {', '.join(map(str, self.image_size))}); got {tuple(x.shape)}")
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)
        tokens = self.embedding_dropout(tokens + self.position_embedding)
        taps = []
        for index, block in enumerate(self.blocks, start=1):
            tokens = maybe_checkpoint(block, tokens, enabled=self.gradient_checkpointing and self.training)
            if index in self.tap_after:
                taps.append(self.norm(tokens) if index == len(self.blocks) else tokens)
        return [self.tokens_to_map(t) for t in taps]

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """(N, L, C) tokens -> (N, C, gd, gh, gw) feature map."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
