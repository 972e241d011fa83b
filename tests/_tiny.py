"""Tiny towers shared by tests."""

from __future__ import annotations

import torch


class CountingTower(torch.nn.Module):
    """A weightless image tower (the mean colour) that counts the images it encodes."""

    name = "counting"
    width = 3
    data_config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0,
                   "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, pixels):
        self.calls += pixels.shape[0]
        return pixels.mean((2, 3))  # [batch, 3]
