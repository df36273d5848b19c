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

import inspect

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.basic_unet import TwoConv, UpCat

from lungnod_ext.networks.traceable_unet import TraceableFlexibleUNet


class FullResolutionUNet(TraceableFlexibleUNet):
    """``FlexibleUNet`` (all its arguments, with its defaults; its ResNet shortcuts traceable, as the bundle's
    ``TraceableFlexibleUNet``) plus a full-resolution skip of ``full_resolution_channels`` channels into the last
    decoder block (module doc). 0 channels: exactly ``TraceableFlexibleUNet``."""

    def __init__(self, *args, full_resolution_channels: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if full_resolution_channels < 0:
            raise ValueError(f"full_resolution_channels must be >= 0, got {full_resolution_channels}")
        self.full_resolution_channels = int(full_resolution_channels)
        if not self.full_resolution_channels:
            return
        bound = inspect.signature(FlexibleUNet.__init__).bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        last = self.decoder.blocks[-1]   # built by FlexibleUNet with no skip: rebuilt the same but for the skip
        self.full_resolution = TwoConv(a["spatial_dims"], a["in_channels"], self.full_resolution_channels, a["act"],
                                       a["norm"], a["decoder_bias"], a["dropout"])
        self.decoder.blocks[-1] = UpCat(
            a["spatial_dims"], in_chns=last.convs.conv_0.conv.in_channels, cat_chns=self.full_resolution_channels,
            out_chns=last.convs.conv_1.conv.out_channels, act=a["act"], norm=a["norm"], bias=a["decoder_bias"],
            dropout=a["dropout"], upsample=a["upsample"], pre_conv=a["pre_conv"], interp_mode=a["interp_mode"],
            align_corners=None, halves=False, is_pad=a["is_pad"])
        # keep the segmentation head the last module registered, so "the last convolution" (init_output_prior)
        # is still the output layer
        head = self.segmentation_head
        del self.segmentation_head
        self.segmentation_head = head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.full_resolution_channels:
            return super().forward(inputs)
        # the full-resolution features as the finest "encoder" output: the decoder then gives every block a skip
        features = [self.full_resolution(inputs), *self.encoder(inputs)]
        return self.segmentation_head(self.decoder(features, self.skip_connect + 1))
