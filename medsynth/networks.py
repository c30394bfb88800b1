"""Generators (ResNet written here, U-Net from MONAI) and the PatchGAN discriminator from MONAI."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medsynth.config import ModelConfig
from medsynth.intensity import BACKGROUND_LEVEL


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


#: Quantiles kept of a domain's foreground histogram (0, 1/128, ..., 1).
MAP_KNOTS = 129


def domain_quantiles(values: torch.Tensor, knots: int = MAP_KNOTS) -> torch.Tensor:
    """``knots`` evenly spaced quantiles of the foreground (above -1) of normalised values (any shape)."""
    v = torch.as_tensor(values).detach().float().flatten()
    v = v[v > BACKGROUND_LEVEL]
    if v.numel() == 0:
        return torch.linspace(-1.0, 1.0, knots)
    if v.numel() > 2_000_000:
        # an evenly strided subsample: the quantiles move by far less than the histogram's own noise
        v = v[:: v.numel() // 1_000_000]
    ranks = torch.linspace(0, v.numel() - 1, knots).round().long()
    # numpy's SIMD sort: an order of magnitude faster than torch.sort on a CPU for a brain's 1.6 M voxels
    return torch.from_numpy(np.sort(v.cpu().numpy())[ranks.numpy()]).to(v.device)


def _interp(v: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of each row of ``v`` (N, M) on knots ``xp``, ``fp`` (N, K)."""
    xp = xp + torch.arange(xp.shape[-1], device=xp.device, dtype=xp.dtype) * 1e-6  # strictly increasing
    v = torch.maximum(torch.minimum(v, xp[:, -1:]), xp[:, :1]).contiguous()
    i = torch.searchsorted(xp.contiguous(), v).clamp(1, xp.shape[-1] - 1)
    x0, x1, y0, y1 = xp.gather(1, i - 1), xp.gather(1, i), fp.gather(1, i - 1), fp.gather(1, i)
    return y0 + (v - x0) * (y1 - y0) / (x1 - x0)


def inverted_histogram_match(x: torch.Tensor, target: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
    """The classical T1 <-> T2 baseline: invert each image and match its histogram to ``target``'s.

    Each leading-dimension item of ``x`` (a slice of a batch, or one whole volume given as (1, ...)) is matched
    on its own foreground: a voxel at rank r of its image's histogram gets the value at rank 1 - r of the
    target domain's (``target``: :func:`domain_quantiles` of the target domain). Background stays -1.
    """
    return histogram_match(x, target, invert=True, own=own)


def histogram_match(x: torch.Tensor, target: torch.Tensor, invert: bool = False,
                    own: torch.Tensor | None = None) -> torch.Tensor:
    """Match each leading-dimension item's foreground histogram to ``target`` quantiles (rank r gets the target's
    value at rank r, or 1 - r with ``invert``). Without inversion, onto its own domain's quantiles, it is
    histogram standardisation: every patient's tissues at the same levels.

    ``own``: each item's own quantiles (N, K), when they were computed elsewhere (the map applied to a table of
    an image's levels rather than to the image)."""
    n = x.shape[0]
    flat = x.detach().reshape(n, -1)
    knots = target.numel()
    if own is None:
        own = torch.stack([domain_quantiles(row, knots) for row in flat])
    own = own.to(flat.device).float().reshape(n, knots)
    # value -> rank is piecewise linear on the image's own quantiles, rank -> value on the target's, and both
    # use the same evenly spaced ranks: the composition is one interpolation from the own quantiles onto the
    # target's (reversed for the inversion)
    goal = target.float().to(flat.device)
    goal = (goal.flip(0) if invert else goal).expand(n, knots)
    out = torch.empty(flat.shape, dtype=x.dtype, device=flat.device)
    # in chunks: the interpolation's temporaries (indices, four gathers) would otherwise be ten volumes' worth
    step = 1 << 21
    for start in range(0, flat.shape[1], step):
        v = flat[:, start:start + step].float()
        y = _interp(v, own, goal)
        out[:, start:start + step] = y.masked_fill_(~(v > BACKGROUND_LEVEL), -1.0)
    return out.reshape(x.shape)


def neighbour_offsets(context: int) -> list[int]:
    """Slice offsets of the 2.5D neighbours, in channel order: -context, ..., -1, 1, ..., context."""
    return [d for d in range(-context, context + 1) if d]


def neighbour_indices(index: torch.Tensor, offset: int, count: int) -> torch.Tensor:
    """``index + offset`` clamped to ``[0, count)``: beyond the first or last slice the edge slice repeats."""
    return (index + offset).clamp_(0, count - 1)


class HistogramTarget(nn.Module):
    """The target domain's foreground quantiles, a buffer so they travel in the generator's state dict."""

    def __init__(self, knots: int = MAP_KNOTS) -> None:
        super().__init__()
        self.register_buffer("quantiles", torch.linspace(-1.0, 1.0, knots))

    def set(self, quantiles: torch.Tensor) -> None:
        self.quantiles.copy_(torch.as_tensor(quantiles, dtype=self.quantiles.dtype))


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """A normalised 1D Gaussian of standard deviation ``sigma`` pixels, truncated at 3 sigma."""
    radius = max(int(np.ceil(3.0 * sigma)), 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth_foreground(x: torch.Tensor, foreground: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of ``x`` (N, C, H, W) smoothed in-plane by a Gaussian of ``sigma`` pixels inside
    ``foreground`` ((N, 1, H, W) for every channel, or (N, C, H, W)) only; the background is left as it is.

    A normalised convolution: the blur of ``x * mask`` divided by the blur of the mask, so that the background
    level (-1) does not bleed into the brain's rim and darken it.
    """
    if sigma <= 0:
        return x
    kernel = gaussian_kernel1d(sigma).to(x.device)
    radius = kernel.numel() // 2
    channels = x.shape[1]
    # fp32 even under autocast: a bf16 sum of ~20 products loses the levels' third digit
    with torch.autocast(device_type=x.device.type, enabled=False):
        xs = x.float()
        mask = foreground.float().expand(-1, channels, -1, -1) if foreground.shape[1] == 1 else foreground.float()
        kh = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        kw = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

        def blur(t: torch.Tensor) -> torch.Tensor:
            t = nn.functional.conv2d(nn.functional.pad(t, (0, 0, radius, radius)), kh, groups=channels)
            return nn.functional.conv2d(nn.functional.pad(t, (radius, radius, 0, 0)), kw, groups=channels)

        smoothed = blur(xs * mask) / blur(mask).clamp_min(1e-6)
        out = torch.where(mask > 0, smoothed, xs)
    return out.to(x.dtype)


class ResidualGenerator(nn.Module):
    """``base + gate * net(x)``: the network learns a correction to the inverted-histogram-matched input.

    ``base`` is :func:`inverted_histogram_match` of the whole volume, given as a second input channel (training
    data and :class:`~medsynth.inference.Translator` compute it once per volume, see :meth:`volume_base`), or,
    for a one-channel input (a generated image in the cycle), of each slice on its own. On few training
    patients this generalises better than learning the whole contrast change: an unseen tumour that is dark in
    T1 already comes out bright in T2 from the base. The background stays -1. Without ``net`` it is the
    baseline alone. ``net_input="base"`` shows the network the base instead of the image. ``smooth`` > 0
    smooths the base (and the neighbours' bases) in-plane inside the brain with a Gaussian of that many pixels
    first (:func:`smooth_foreground`, ``ModelConfig.base_smooth``).
    """

    def __init__(self, net: nn.Module | None, knots: int = MAP_KNOTS, net_input: str = "image",
                 gate_scale: float = 1.0, context: int = 0, smooth: float = 0.0) -> None:
        super().__init__()
        if net_input not in ("image", "base"):
            raise ValueError(f"unknown residual input {net_input!r}: use image or base")
        if context and net_input != "base":
            raise ValueError("2.5D context needs the network to see the base (residual input 'base')")
        #: neighbouring slices on each side whose bases the network sees (channels 2, 3, ... of the input)
        self.context = int(context)
        self.net = net
        self.net_input = net_input
        # ReZero-style gate, zero at the start: an untrained network is exactly the baseline (a randomly
        # initialised one would add noise of a third of the range and start far below it)
        self.gate = nn.Parameter(torch.zeros(()))
        # a constant factor on the gate: Adam moves a parameter by about the learning rate per step whatever its
        # gradient, so the factor is the gate's own learning-rate multiplier (see ModelConfig.gate_scale)
        self.gate_scale = float(gate_scale)
        if not np.isfinite(smooth) or smooth < 0:
            raise ValueError(f"base smoothing must be a finite number, not negative: {smooth:g}")
        self.smooth = float(smooth)
        self.target = HistogramTarget(knots)
        self.stride = getattr(net, "stride", 4) if net is not None else 1

    def volume_base(self, volume: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """The base channel of a whole normalised (1, X, Y, Z) volume (``own``: the volume's quantiles, when
        ``volume`` is a table of its levels rather than the volume)."""
        own = None if own is None else own[None]
        return inverted_histogram_match(volume[None].float(), self.target.quantiles.float(), own)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) with channels [image, base, neighbours' bases...]; the image alone (a generated
        image in the cycle) gets its slice's own base, and missing neighbours are that base again."""
        x0 = x[:, :1]
        foreground = x0 > BACKGROUND_LEVEL
        base = x[:, 1:2] if x.shape[1] > 1 else inverted_histogram_match(x0, self.target.quantiles)
        base = smooth_foreground(base, foreground, self.smooth)
        if self.net is None:
            return base
        if self.net_input == "image":
            seen = x0
        elif self.context:
            width = 2 * self.context
            if x.shape[1] >= 2 + width:
                neighbours = x[:, 2:2 + width]
                # a neighbour's brain is not this slice's: its background (-1) must not enter the blur
                neighbours = smooth_foreground(neighbours, foreground & (neighbours > BACKGROUND_LEVEL), self.smooth)
            else:
                neighbours = base.expand(-1, width, -1, -1)
            seen = torch.cat([base, neighbours], dim=1)
        else:
            seen = base
        y = (base + (self.gate * self.gate_scale).to(base.dtype) * self.net(seen)).clamp(-1.0, 1.0)
        return torch.where(foreground, y, torch.full_like(y, -1.0))


def build_generator(config: ModelConfig, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """The generator named by ``config.generator`` (``identity`` is for tests and baselines, ``map`` is the
    inverted histogram match alone, the classical baseline), wrapped in a :class:`ResidualGenerator` when
    ``config.residual == "invert"``."""
    if config.generator == "identity":
        return IdentityGenerator()
    if config.base_smooth and config.residual != "invert" and config.generator != "map":
        raise ValueError("smoothing the base is for residual generators (residual 'invert')")
    if config.generator == "map":
        return ResidualGenerator(None, smooth=config.base_smooth)
    if config.residual == "invert":
        # 2.5D: the base of the slice and of its neighbours
        in_channels = 1 + 2 * config.context
    elif config.context:
        raise ValueError("2.5D context is for residual generators (residual 'invert', residual input 'base')")
    if config.generator in ("resnet9", "resnet6"):
        net: nn.Module = ResnetGenerator(in_channels, out_channels, config.ngf, int(config.generator[-1]),
                                         config.norm, config.dropout, config.upsample)
    elif config.generator == "unet":
        net = UnetGenerator(in_channels, out_channels, config.ngf, config.norm, config.dropout)
    else:
        raise ValueError(f"unknown generator {config.generator!r}: use resnet9, resnet6 or unet")
    if config.residual == "invert":
        return ResidualGenerator(net, net_input=config.residual_input, gate_scale=config.gate_scale,
                                 context=config.context, smooth=config.base_smooth)
    if config.residual != "none":
        raise ValueError(f"unknown residual {config.residual!r}: use none or invert")
    return net


def histogram_targets(generator: nn.Module) -> list[HistogramTarget]:
    """The :class:`HistogramTarget` modules inside a generator (none for a plain network)."""
    return [m for m in generator.modules() if isinstance(m, HistogramTarget)]


def residual_of(generator: nn.Module) -> ResidualGenerator | None:
    """The :class:`ResidualGenerator` a (possibly compiled or DDP-wrapped) generator is, or None."""
    net = getattr(generator, "_orig_mod", getattr(generator, "module", generator))
    return net if isinstance(net, ResidualGenerator) else None


def build_discriminator(config: ModelConfig, in_channels: int = 1) -> nn.Module:
    """MONAI's ``PatchDiscriminator``; with 3 layers it is the 70x70 PatchGAN of pix2pix/CycleGAN."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=2, channels=config.ndf, in_channels=in_channels, out_channels=1,
                              num_layers_d=config.n_layers_d, kernel_size=4, norm=config.norm.upper(),
                              bias=config.norm != "instance", padding=1)


def generator_stride(config: ModelConfig) -> int:
    """What the generator's input height and width must be multiples of."""
    return {"unet": UnetGenerator.stride, "identity": IdentityGenerator.stride,
            "map": 1}.get(config.generator, ResnetGenerator.stride)


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
