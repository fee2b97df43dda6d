"""Vision models for 32×32 (CIFAR-10) and 28×28 (MNIST) images.

Each builder takes ``num_classes``, ``in_channels`` and ``image_size`` (filled in from the
dataset) plus its own size options, which the ``model`` config group sets.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from fwdbwd_lib.registry import register_model


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@register_model("mlp")
def build_mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    hidden_sizes: tuple[int, ...] | list[int] = (1024, 1024),
    dropout: float = 0.0,
) -> nn.Module:
    """Build a multilayer perceptron on flattened pixels, with ReLU between layers."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Two 5×5 convolutions with max-pooling, then two linear layers.

    This is the small CNN family of the forward-gradient literature (Baydin et al. 2022 train a
    network of this shape on MNIST). ``width`` is the channel count of the first convolution;
    the second has twice as many. BatchNorm after each convolution is optional.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width: int = 32,
        hidden_size: int = 256,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()

        def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(channels_in, channels_out, 5, padding=2)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels_out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            return nn.Sequential(*layers)

        self.features = nn.Sequential(
            conv_block(in_channels, width), conv_block(width, 2 * width)
        )
        feature_size = 2 * width * (image_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(feature_size, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (batch, 2·width, H/4, W/4)
        return self.classifier(features)  # (batch, num_classes)


@register_model("convnet")
def build_convnet(**kwargs) -> nn.Module:
    return ConvNet(**kwargs)


@register_model("resnet18")
def build_resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-18 adapted to small images: a 3×3 stride-1 stem and no max-pool.

    ``image_size`` is accepted for a uniform builder signature; the global average pool makes
    the network size-agnostic. At batch 128 on 2 CPU cores a backprop step takes about 12 s, so
    this model belongs in GPU parameter sets.
    """
    model = torchvision_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
