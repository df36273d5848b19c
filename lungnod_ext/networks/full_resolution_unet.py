"""A FlexibleUNet whose last decoder block also sees the input's own resolution.

MONAI's ``FlexibleUNet`` with a ResNet encoder takes its finest skip from the encoder's stride-2 stem: the last
decoder block upsamples 1/2 -> 1/1 with no skip, so nothing after the first 7 x 7 stride-2 convolution works
at the input's pixel size. At the segmentation bundle's 1.5 mm grid that makes the finest feature 3 mm, the size
of a 3-6 mm nodule. :class:`FullResolutionUNet` adds a small convolution branch on the input (two 3 x 3
convolutions, ``full_resolution_channels`` wide) and hands it to the last decoder block as its skip, as a plain
U-Net does at every level. With ``full_resolution_channels=0`` it is ``FlexibleUNet`` itself: the same modules,
state dict and output.

Shapes: (B, in_channels, H, W[, D]) -> (B, out_channels, H, W[, D]), any size the FlexibleUNet takes.
"""

from __future__ import annotations

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.basic_unet import TwoConv, UpCat


class FullResolutionUNet(FlexibleUNet):
    """``FlexibleUNet`` (all its arguments) plus a full-resolution skip of ``full_resolution_channels`` channels
    into the last decoder block (module doc). 0 channels: exactly ``FlexibleUNet``."""

    def __init__(self, in_channels: int, out_channels: int, backbone: str, full_resolution_channels: int = 16,
                 spatial_dims: int = 2, decoder_channels=(256, 128, 64, 32, 16),
                 norm=("batch", {"eps": 1e-3, "momentum": 0.1}), act=("relu", {"inplace": True}),
                 dropout: float = 0.0, decoder_bias: bool = False, upsample: str = "nontrainable",
                 pre_conv: str = "default", interp_mode: str = "nearest", is_pad: bool = True, **kwargs) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels, backbone=backbone,
                         spatial_dims=spatial_dims, decoder_channels=decoder_channels, norm=norm, act=act,
                         dropout=dropout, decoder_bias=decoder_bias, upsample=upsample, pre_conv=pre_conv,
                         interp_mode=interp_mode, is_pad=is_pad, **kwargs)
        if full_resolution_channels < 0:
            raise ValueError(f"full_resolution_channels must be >= 0, got {full_resolution_channels}")
        self.full_resolution_channels = int(full_resolution_channels)
        if not self.full_resolution_channels:
            return
        decoder_channels = list(decoder_channels)
        self.full_resolution = TwoConv(spatial_dims, in_channels, self.full_resolution_channels, act, norm,
                                       decoder_bias, dropout)
        self.decoder.blocks[-1] = UpCat(
            spatial_dims, in_chns=decoder_channels[-2], cat_chns=self.full_resolution_channels,
            out_chns=decoder_channels[-1], act=act, norm=norm, bias=decoder_bias, dropout=dropout,
            upsample=upsample, pre_conv=pre_conv, interp_mode=interp_mode,
            align_corners=None, halves=False, is_pad=is_pad)
        # keep the segmentation head the last module registered, so "the last convolution" (init_output_prior)
        # is still the output layer
        head = self.segmentation_head
        del self.segmentation_head
        self.segmentation_head = head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.full_resolution_channels:
            return super().forward(inputs)
        features = self.encoder(inputs)
        skips = list(features[:-1][::-1]) + [self.full_resolution(inputs)]
        x = features[-1]
        for i, block in enumerate(self.decoder.blocks):
            skip = skips[i] if i < self.skip_connect or i == len(self.decoder.blocks) - 1 else None
            x = block(x, skip)
        return self.segmentation_head(x)
