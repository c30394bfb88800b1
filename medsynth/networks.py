"""Generators (ResNet written here, U-Net from MONAI) and the PatchGAN discriminator from MONAI."""

from __future__ import annotations

import torch
from torch import nn

from medsynth.config import ModelConfig


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}: use 'instance' or 'batch'")


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with reflection padding and a skip connection."""

    def __init__(self, channels: int, norm: str, dropout: float, bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                                   _norm(norm, channels), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), _norm(norm, channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator (Johnson et al.): c7s1-ngf, two stride-2 downsamplings,
    ``n_blocks`` residual blocks, two upsamplings, c7s1-out, tanh.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        ngf: filters of the first layer.
        n_blocks: residual blocks (9 for 256 px, 6 for 128 px in the paper).
        norm: ``"instance"`` or ``"batch"``.
        dropout: dropout inside the residual blocks.

    Input height and width must be multiples of :attr:`stride` (4).

    Example:
        >>> g = ResnetGenerator(1, 1, ngf=8, n_blocks=2)
        >>> g(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    stride = 4

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: float = 0.0, upsample: str = "transpose") -> None:
        super().__init__()
        # instance norm without affine parameters cancels a bias, so convs before it go without one
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                   _norm(norm, ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias), _norm(norm, ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch, norm, dropout, bias) for _ in range(n_blocks)]
        for _ in range(2):
            if upsample == "transpose":
                up: list[nn.Module] = [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1,
                                                          bias=bias)]
            elif upsample == "nearest":
                # resize-convolution (Odena et al. 2016): no checkerboard from uneven kernel overlap
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                      nn.Conv2d(ch, ch // 2, 3, bias=bias)]
            else:
                raise ValueError(f"unknown upsampling {upsample!r}: use 'transpose' or 'nearest'")
            layers += [*up, _norm(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetGenerator(nn.Module):
    """MONAI's U-Net with a tanh output, as the CycleGAN ``unet`` option.

    Input height and width must be multiples of :attr:`stride` (16).
    """

    stride = 16

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, norm: str = "instance",
                 dropout: float = 0.0) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.unet = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                         channels=(ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8), strides=(2, 2, 2, 2),
                         num_res_units=0, norm=norm.upper(), act=("LEAKYRELU", {"negative_slope": 0.2}),
                         dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.unet(x))


class IdentityGenerator(nn.Module):
    """Returns its input: a translation with it is the normalisation round trip alone. It checks the
    conversion pipeline (no flip, transpose or shift can hide) and is the "do nothing" baseline."""

    stride = 1

    def __init__(self) -> None:
        super().__init__()
        # one parameter so optimisers, DDP and checkpoints treat it like any network
        self.unused = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def build_generator(config: ModelConfig, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """The generator named by ``config.generator`` (``identity`` is for tests and baselines)."""
    if config.generator == "identity":
        return IdentityGenerator()
    if config.generator in ("resnet9", "resnet6"):
        return ResnetGenerator(in_channels, out_channels, config.ngf, int(config.generator[-1]), config.norm,
                               config.dropout, config.upsample)
    if config.generator == "unet":
        return UnetGenerator(in_channels, out_channels, config.ngf, config.norm, config.dropout)
    raise ValueError(f"unknown generator {config.generator!r}: use resnet9, resnet6 or unet")


def build_discriminator(config: ModelConfig, in_channels: int = 1) -> nn.Module:
    """MONAI's ``PatchDiscriminator``; with 3 layers it is the 70x70 PatchGAN of pix2pix/CycleGAN."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=2, channels=config.ndf, in_channels=in_channels, out_channels=1,
                              num_layers_d=config.n_layers_d, kernel_size=4, norm=config.norm.upper(),
                              bias=config.norm != "instance", padding=1)


def generator_stride(config: ModelConfig) -> int:
    """What the generator's input height and width must be multiples of."""
    return {"unet": UnetGenerator.stride, "identity": IdentityGenerator.stride}.get(config.generator,
                                                                                  ResnetGenerator.stride)


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """The reference CycleGAN's initialisation: conv weights N(0, gain), norm weights N(1, gain), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
