"""Generators and the PatchGAN discriminator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.config import ModelConfig
from medsynth.networks import (ResnetGenerator, build_discriminator, build_generator, generator_stride,
                               init_weights)


@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
@pytest.mark.parametrize("generator, blocks", [("resnet9", 9), ("resnet6", 6)])
def test_resnet_generators(generator: str, blocks: int, upsample: str) -> None:
    net = build_generator(ModelConfig(generator=generator, ngf=4, upsample=upsample))
    kinds = {type(m).__name__ for m in net.modules()}
    assert ("ConvTranspose2d" in kinds) == (upsample == "transpose") and ("Upsample" in kinds) == (upsample == "nearest")
    assert sum(type(m).__name__ == "ResnetBlock" for m in net.modules()) == blocks
    out = net(torch.randn(2, 1, 36, 28))
    assert out.shape == (2, 1, 36, 28) and out.abs().max() <= 1
    assert generator_stride(ModelConfig(generator=generator)) == 4


def test_unet_generator_needs_multiples_of_16() -> None:
    net = build_generator(ModelConfig(generator="unet", ngf=4))
    out = net(torch.randn(1, 1, 32, 48))
    assert out.shape == (1, 1, 32, 48) and out.abs().max() <= 1
    assert generator_stride(ModelConfig(generator="unet")) == 16


def test_patchgan_is_the_70x70_discriminator() -> None:
    disc = build_discriminator(ModelConfig(ndf=8))
    logits = disc(torch.randn(1, 1, 256, 256))[-1]
    assert logits.shape == (1, 1, 30, 30)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in disc.modules())
    # one output pixel sees 70x70 input pixels; instance norm mixes the whole image, so measure the receptive
    # field on the same layers with batch norm in eval mode (a per-channel affine map)
    local = build_discriminator(ModelConfig(ndf=8, norm="batch")).eval()
    x = torch.zeros(1, 1, 256, 256, requires_grad=True)
    local(x)[-1][0, 0, 15, 15].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert int(rows.max() - rows.min()) + 1 == 70


def test_init_weights_is_normal_0_002() -> None:
    net = ResnetGenerator(ngf=16, n_blocks=2)
    init_weights(net, 0.02)
    weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.mean())) < 2e-3 and float(weights.std()) == pytest.approx(0.02, rel=0.05)


def test_unknown_generator() -> None:
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator(ModelConfig(generator="vit"))


def test_inverted_histogram_match_reverses_ranks_onto_the_target() -> None:
    from medsynth.networks import ResidualGenerator, domain_quantiles, inverted_histogram_match

    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16) * 1.8 - 0.9
    x[:, :, :3] = -1.0  # background
    target = domain_quantiles(torch.rand(5000) ** 2 * 2 - 1)
    y = inverted_histogram_match(x, target)
    assert torch.all(y[:, :, :3] == -1)
    for i in range(2):
        fg = x[i] > -1
        order = torch.argsort(x[i][fg])
        assert torch.all(torch.diff(y[i][fg][order]) <= 1e-5)  # brighter in, darker out
        # the output's histogram is the target's
        assert torch.allclose(domain_quantiles(y[i]), target, atol=0.03)
    generator = ResidualGenerator(None)
    generator.target.set(target)
    assert torch.allclose(generator(x), y)
    # a given base channel (the whole volume's) is used as it is
    base = torch.full_like(x, 0.25)
    assert torch.equal(generator(torch.cat([x, base], 1)), base)


@pytest.mark.parametrize("invert", [True, False])
def test_histogram_match_is_the_rank_map_through_both_histograms(invert: bool) -> None:
    """The one interpolation used equals the definition: value -> rank on the image's own quantiles, then
    rank (or 1 - rank) -> value on the target's."""
    from medsynth.networks import domain_quantiles, histogram_match

    rng = np.random.default_rng(3)
    x = torch.from_numpy((rng.gamma(2.0, 0.2, size=(1, 40, 40, 9)) - 0.95).clip(-1, 1).astype(np.float32))
    x[..., :2] = -1.0
    target = domain_quantiles(torch.from_numpy(rng.beta(2, 5, 20000).astype(np.float32) * 2 - 1))
    y = histogram_match(x, target, invert=invert).numpy()
    own = domain_quantiles(x).numpy().astype(np.float64)
    grid = np.linspace(0, 1, own.size)
    v = x.numpy().astype(np.float64)
    ranks = np.interp(v, own, grid)
    expected = np.interp(1 - ranks if invert else ranks, grid, target.numpy().astype(np.float64))
    fg = v > -1 + 1e-3
    assert np.all(y[~fg] == -1)
    assert np.abs(y[fg] - expected[fg]).max() < 5e-4  # the knots are nudged apart by 1e-6 each


def test_context_widens_the_residual_network_and_needs_the_base() -> None:
    from medsynth.config import ModelConfig
    from medsynth.networks import ResidualGenerator, build_generator

    g = build_generator(ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="base", context=2))
    assert isinstance(g, ResidualGenerator) and g.context == 2
    assert g.net.model[1].in_channels == 5  # the base and two neighbours on each side
    with torch.no_grad():
        g.gate.fill_(0.1)
    x = torch.rand(2, 6, 32, 32) * 2 - 1
    assert g(x).shape == (2, 1, 32, 32)
    # a generated image alone (the cycle) gets its own base, repeated as its neighbours
    assert g(x[:, :1]).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="base"):
        build_generator(ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="image", context=1))
    with pytest.raises(ValueError, match="residual"):
        build_generator(ModelConfig(generator="resnet6", ngf=4, context=1))


def test_gate_scale_multiplies_the_correction() -> None:
    from medsynth.config import ModelConfig
    from medsynth.networks import build_generator

    torch.manual_seed(0)
    x = torch.rand(1, 2, 32, 32) * 1.6 - 0.8  # foreground, away from the clamp at +-1
    outs = []
    for scale in (1.0, 10.0):
        torch.manual_seed(1)
        g = build_generator(ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="base",
                                        gate_scale=scale))
        with torch.no_grad():
            g.gate.fill_(0.01)
        outs.append(g(x) - x[:, 1:2])
    assert torch.allclose(outs[1], 10 * outs[0], atol=1e-5)


def test_base_smoothing_removes_noise_keeps_levels_and_the_rim() -> None:
    from medsynth.networks import smooth_foreground

    torch.manual_seed(0)
    x = torch.full((1, 1, 48, 48), -1.0)
    fg = torch.zeros(1, 1, 48, 48, dtype=torch.bool)
    fg[..., 8:40, 8:40] = True
    x[..., 8:40, 8:24] = 0.6  # two tissues, noisy
    x[..., 8:40, 24:40] = -0.2
    noisy = torch.where(fg, x + 0.1 * torch.randn_like(x), x)
    y = smooth_foreground(noisy, fg, 1.2)
    inner_l, inner_r = (..., slice(12, 36), slice(12, 20)), (..., slice(12, 36), slice(28, 36))
    # the noise is mostly gone inside each tissue, their levels stay
    assert y[inner_l].std() < 0.4 * noisy[inner_l].std() and y[inner_r].std() < 0.4 * noisy[inner_r].std()
    assert abs(y[inner_l].mean() - 0.6) < 0.02 and abs(y[inner_r].mean() + 0.2) < 0.02
    # the background is untouched and does not darken the brain's rim (a plain blur would pull it toward -1)
    assert torch.equal(y[~fg], noisy[~fg])
    assert abs(y[..., 8, 12:20].mean() - 0.6) < 0.05
    assert torch.equal(smooth_foreground(noisy, fg, 0.0), noisy)


def test_base_smooth_is_what_an_untrained_residual_generator_gives() -> None:
    from medsynth.networks import ResidualGenerator, smooth_foreground

    torch.manual_seed(0)
    x = torch.rand(2, 2, 32, 32) * 1.6 - 0.8
    x[..., :4, :] = -1.0  # background rows
    g = build_generator(ModelConfig(generator="resnet6", ngf=4, residual="invert", residual_input="base",
                                    base_smooth=0.8))
    assert isinstance(g, ResidualGenerator) and g.smooth == 0.8
    fg = x[:, :1] > -1.0 + 1e-3
    expected = torch.where(fg, smooth_foreground(x[:, 1:2], fg, 0.8), torch.full_like(x[:, 1:2], -1.0))
    # gate zero: exactly the smoothed base; the baseline alone ("map") smooths the same way
    assert torch.allclose(g(x), expected, atol=1e-6)
    assert torch.allclose(build_generator(ModelConfig(generator="map", base_smooth=0.8))(x), smooth_foreground(
        x[:, 1:2], fg, 0.8), atol=1e-6)
    with pytest.raises(ValueError, match="residual"):
        build_generator(ModelConfig(generator="resnet6", ngf=4, base_smooth=1.0))
