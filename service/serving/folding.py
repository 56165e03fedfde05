"""Rewrites of a model, made once at start, that compute the same outputs with less work per
forward pass."""

from __future__ import annotations

import torch


def fold_symmetric_same_padding(module: torch.nn.Module) -> torch.nn.Module:
    """EfficientNet-Lite's convolutions pad like TensorFlow's "SAME" with a ZeroPad2d before an
    unpadded conv2d: a copy of every activation. Where that padding is the same on both sides
    (every stride-1 layer: 12 of 17), the convolution's own zero padding is the same arithmetic
    without the copy; the stride-2 layers pad one side only, which conv2d cannot, and keep
    theirs. The parameters are untouched, so the state_dict loads as before, and the outputs
    are equal. On a 2-core CPU the forward pass takes 3-7% less (batch 1: 17.7 -> 16.5 ms an
    image, batch 4: 12.8 -> 12.4; medians of six runs, each in a process of its own,
    interleaved, 2026-12-04)."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for layer in module.modules():
        if not isinstance(layer, Conv2dStaticSamePadding):
            continue
        if not isinstance(layer.static_padding, torch.nn.ZeroPad2d):
            continue
        left, right, top, bottom = layer.static_padding.padding
        if left == right and top == bottom:
            layer.padding = (top, left)
            layer.static_padding = torch.nn.Identity()
    return module
