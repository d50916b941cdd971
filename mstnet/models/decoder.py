"""The UNETR-style decoder of ViT-STUnet (MST-Net, Fig. 1b)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mstnet.models.blocks import DeconvBlock, conv_block, maybe_checkpoint, upsampling_factors

SkipRefinement = Callable[[Tensor], Tensor]


class UNETRDecoder(nn.Module):
    """UNETR-style decoder (Hatamizadeh et al. 2022) in the MST-Net release's variant.

    With taps z3, z6, z9, z12 of shape (N, C, gd, gh, gw), widths c1..c4 and per-stage
    factors f1..f4 (:func:`upsampling_factors` of the patch; the paper's (2,4,4) x 3 then 2):

    - ``z12``: [refine_z12, e.g. STDM] -> transposed conv (f1) to c1;
    - ``z9``: deconv block (f1) to c1 -> [refine_z9, e.g. STDM]; concat with z12 (2 c1)
      -> ``fuse.0``: three conv blocks to c1 -> transposed conv (f2) to c2;
    - ``z6``: deconv blocks (f1, f2) to c1, c2; concat (2 c2) -> ``fuse.1``: two conv blocks
      -> transposed conv (f3) to c3;
    - ``z3``: deconv blocks (f1, f2, f3) to c1, c2, c3; concat (2 c3) -> ``fuse.2``: two conv
      blocks -> transposed conv (f4) to c4;
    - ``input_stem``: the raw scan -> conv blocks 1 -> c4/2 -> c4 at full resolution; concat
      (2 c4) -> ``head``: two conv blocks (c4) -> 1 x 1 x 1 conv to K classes.

    A deconv block is transposed conv (kernel = stride = factor) -> conv -> BN -> ReLU; a conv
    block is conv -> BN -> ReLU (3 x 3 x 3; 1 x 3 x 3 when planar). MONAI's UnetrUpBlock /
    UnetrPrUpBlock use residual blocks and an extra transposed conv; the release does not,
    so the paths are composed here from :class:`DeconvBlock` and MONAI ``Convolution``.

    Args:
        hidden_size: C of the taps (768).
        patch_size: (pd, ph, pw) the ViT used (the decoder undoes it).
        channels: (c1, c2, c3, c4) = (512, 256, 128, 64).
        num_classes: K output channels (1).
        planar: per-slice variant (1 x 3 x 3 kernels; pd must be 1).
        gradient_checkpointing: recompute the fuse stages and the head in backward.
    """

    def __init__(
        self,
        hidden_size: int,
        patch_size: tuple[int, int, int],
        channels: tuple[int, int, int, int] = (512, 256, 128, 64),
        num_classes: int = 1,
        planar: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        f1, f2, f3, f4 = upsampling_factors(patch_size)
        self.factors = (f1, f2, f3, f4)
        self.gradient_checkpointing = gradient_checkpointing
        self.input_stem = nn.Sequential(conv_block(1, c4 // 2, planar), conv_block(c4 // 2, c4, planar))
        self.z3 = nn.Sequential(DeconvBlock(hidden_size, c1, f1, planar), DeconvBlock(c1, c2, f2, planar),
                                DeconvBlock(c2, c3, f3, planar))
        self.z6 = nn.Sequential(DeconvBlock(hidden_size, c1, f1, planar), DeconvBlock(c1, c2, f2, planar))
        self.z9 = DeconvBlock(hidden_size, c1, f1, planar)
        self.z12 = nn.ConvTranspose3d(hidden_size, c1, kernel_size=f1, stride=f1)
        self.fuse = nn.ModuleList([
            nn.Sequential(conv_block(2 * c1, c1, planar), conv_block(c1, c1, planar), conv_block(c1, c1, planar),
                          nn.ConvTranspose3d(c1, c2, kernel_size=f2, stride=f2)),
            nn.Sequential(conv_block(2 * c2, c2, planar), conv_block(c2, c2, planar),
                          nn.ConvTranspose3d(c2, c3, kernel_size=f3, stride=f3)),
            nn.Sequential(conv_block(2 * c3, c3, planar), conv_block(c3, c3, planar),
                          nn.ConvTranspose3d(c3, c4, kernel_size=f4, stride=f4)),
        ])
        self.head = nn.Sequential(conv_block(2 * c4, c4, planar), conv_block(c4, c4, planar),
                                  nn.Conv3d(c4, num_classes, kernel_size=1))

    def forward(
        self,
        image: Tensor,
        taps: list[Tensor],
        refine_z9: SkipRefinement | None = None,
        refine_z12: SkipRefinement | None = None,
    ) -> Tensor:
        """(N, 1, D, H, W) scan and 4 taps (N, C, gd, gh, gw) -> (N, K, D, H, W) logits.

        ``refine_z12`` acts on z12 before its transposed conv (C channels); ``refine_z9`` on the
        z9 path after its deconv block (c1 channels); both keep the shape.
        """
        z3, z6, z9, z12 = taps
        checkpointed = self.gradient_checkpointing and self.training
        deep = z12 if refine_z12 is None else refine_z12(z12)
        deep = self.z12(deep)
        skip = self.z9(z9)
        skip = skip if refine_z9 is None else refine_z9(skip)
        deep = maybe_checkpoint(self.fuse[0], torch.cat([skip, deep], dim=1), enabled=checkpointed)
        deep = maybe_checkpoint(self.fuse[1], torch.cat([self.z6(z6), deep], dim=1), enabled=checkpointed)
        deep = maybe_checkpoint(self.fuse[2], torch.cat([self.z3(z3), deep], dim=1), enabled=checkpointed)
        stem = maybe_checkpoint(self.input_stem, image, enabled=checkpointed)
        return maybe_checkpoint(self.head, torch.cat([stem, deep], dim=1), enabled=checkpointed)
