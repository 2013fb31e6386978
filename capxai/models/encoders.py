"""Image encoders returning a feature grid ``[B, regions, channels]``: torchvision VGG16 / ResNet-101 backbones
(weights from a local file, as nothing can be downloaded on capxai's machines) and a small CNN for the built-in
scenes made only of conv, BatchNorm, ReLU and pooling, so that Zennit's rules apply to every layer."""
import pickle
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchvision import models


class SceneCNN(nn.Module):
    """Four conv-BN-ReLU blocks, max pooling after the first three: a 96x96 image gives a 12x12 grid of ``channels``
    features (``[B, 144, channels]``)."""

    def __init__(self, channels: int = 128):
        super().__init__()
        layers, width = [], 3
        for out_width, pool in ((32, True), (64, True), (channels, True), (channels, False)):
            layers += [nn.Conv2d(width, out_width, 3, padding=1), nn.BatchNorm2d(out_width), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            width = out_width
        self.features = nn.Sequential(*layers)
        self.channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SceneCNN: images must be [B, 3, H, W], got {list(images.shape)}")
        # channels-last runs oneDNN's convolutions, pooling and BatchNorm about a quarter faster on CPU (measured)
        # and leaves the [B, regions, C] result contiguous
        grid = self.features(images.contiguous(memory_format=torch.channels_last))
        return grid.flatten(2).transpose(1, 2)


class TorchvisionEncoder(nn.Module):
    """VGG16 (``features[:-1]``: 14x14x512 for 224 input) or ResNet-101 (up to ``layer4``: 7x7x2048).

    Args:
        name: "vgg16" or "resnet101".
        weights: path of a local state_dict for the torchvision model; None gives random initialisation with a
            warning (no pretrained weights can be downloaded here).
    """

    def __init__(self, name: str = "vgg16", weights: Optional[str] = None):
        super().__init__()
        if name == "vgg16":
            backbone = models.vgg16(weights=None)
        elif name == "resnet101":
            backbone = models.resnet101(weights=None)
        else:
            raise ValueError(f"TorchvisionEncoder: name must be 'vgg16' or 'resnet101', got {name!r}")
        if weights is None:
            warnings.warn(f"TorchvisionEncoder({name!r}): no weights file given, using random initialisation",
                          stacklevel=2)
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"TorchvisionEncoder: weights file {path} does not exist")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                backbone.load_state_dict(state)
            except (RuntimeError, ValueError, TypeError, AttributeError, OSError, pickle.UnpicklingError,
                    EOFError) as error:
                raise ValueError(f"TorchvisionEncoder: {path} is not a {name} state_dict ({error})") from None
        if name == "vgg16":
            self.body, self.channels = backbone.features[:-1], 512
        else:
            self.body = nn.Sequential(*list(backbone.children())[:-2])
            self.channels = 2048

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"TorchvisionEncoder: images must be [B, 3, H, W], got {list(images.shape)}")
        return self.body(images).flatten(2).transpose(1, 2)
