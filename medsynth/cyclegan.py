"""The CycleGAN: two generators, two PatchGAN discriminators, image pools, losses and one training step.

Naming: ``g_ab`` translates domain A to B, ``g_ba`` B to A; ``d_a`` judges whether an image is a real A, ``d_b``
a real B. The objective is the reference implementation's: LSGAN adversarial terms, cycle L1 weighted by
``lambda_cycle``, identity L1 weighted by ``lambda_identity * lambda_cycle``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsynth.config import TrainConfig
from medsynth.files import atomic_save
from medsynth.intensity import BACKGROUND_LEVEL
from medsynth.networks import build_discriminator, build_generator, init_weights, histogram_targets

MODEL_FORMAT = "medsynth-model"
MODEL_VERSION = 1
#: a loss key that starts with it counts the steps its term applies to (``_steps_lesion_a``: the steps whose batch had
#: a lesion); the training log averages that term over those steps, and logs nothing for a window without any
COUNT_PREFIX = "_steps_"


class ImagePool:
    """History of generated images shown to the discriminators (Shrivastava et al.), as in the reference.

    Until the pool is full every image goes in and comes out; afterwards each image is, with probability 0.5,
    swapped for a random stored one. Randomness comes from the pool's own generator so a resumed run makes the
    same choices.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same size: new images and, once full, some from the history."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if torch.rand(1, generator=self.generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (1,), generator=self.generator))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Images (on the CPU) and the generator's state, for checkpoints."""
        return {"images": [im.cpu() for im in self.images], "rng": self.generator.get_state(), "size": self.size}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict`."""
        self.images = [im.to(device) for im in state["images"]]
        self.generator.set_state(state["rng"])
        self.size = int(state["size"])


class GeneratorPass(nn.Module):
    """Both generators in one forward, so DistributedDataParallel sees one call per step."""

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module) -> None:
        super().__init__()
        self.g_ab = g_ab
        self.g_ba = g_ba

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor, identity: bool = True,
                cycle: bool = True) -> dict[str, torch.Tensor]:
        # real images may carry a second channel, the residual generators' base (see ResidualGenerator); the
        # generated ones, the identity inputs and everything the losses see are the image channel alone
        fake_b = self.g_ab(real_a)
        fake_a = self.g_ba(real_b)
        out = {"fake_b": fake_b, "fake_a": fake_a}
        if cycle:
            out["rec_a"] = self.g_ba(fake_b)
            out["rec_b"] = self.g_ab(fake_a)
        if identity:
            out["idt_a"] = self.g_ba(real_a[:, :1])
            out["idt_b"] = self.g_ab(real_b[:, :1])
        return out


class DiscriminatorPass(nn.Module):
    """Both discriminators in one forward, returning the last (logit) map of MONAI's PatchDiscriminator."""

    def __init__(self, d_a: nn.Module, d_b: nn.Module) -> None:
        super().__init__()
        self.d_a = d_a
        self.d_b = d_b

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d_a(a)[-1], self.d_b(b)[-1]


class CycleGAN(nn.Module):
    """Networks, losses and the training step.

    Args:
        config: the training configuration (network sizes, loss weights, pool size).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        from monai.losses import PatchAdversarialLoss

        self.config = config
        self.generators = GeneratorPass(build_generator(config.model), build_generator(config.model))
        self.discriminators = DiscriminatorPass(build_discriminator(config.model), build_discriminator(config.model))
        for net in (self.generators, self.discriminators):
            init_weights(net, config.init_gain)
        # plain LSGAN: MONAI otherwise puts a LeakyReLU in front of the MSE
        self.adversarial = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.l1 = nn.L1Loss()
        self.ssim = None
        if config.lambda_ssim > 0:
            from monai.losses import SSIMLoss

            self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0)
        self.pool_a = ImagePool(config.pool_size, seed=config.seed * 2 + 1)
        self.pool_b = ImagePool(config.pool_size, seed=config.seed * 2 + 2)

    @property
    def g_ab(self) -> nn.Module:
        return self.generators.g_ab

    @property
    def g_ba(self) -> nn.Module:
        return self.generators.g_ba

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """Adam for both generators together and for both discriminators together, as the reference does."""
        c = self.config
        opt_g = torch.optim.Adam(self.generators.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        opt_d = torch.optim.Adam(self.discriminators.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        return opt_g, opt_d

    def set_histogram_targets(self, quantiles_a: torch.Tensor, quantiles_b: torch.Tensor) -> None:
        """Give the residual generators (``residual="invert"``) their target domains' foreground quantiles (see
        :func:`medsynth.networks.domain_quantiles`): G_ab matches to B's histogram, G_ba to A's."""
        for net, target in ((self.g_ab, quantiles_b), (self.g_ba, quantiles_a)):
            for m in histogram_targets(net):
                m.set(torch.as_tensor(target))

    def schedulers(self, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> list[Any]:
        """Constant until :attr:`TrainConfig.decay_from`, then linear decay to zero at ``steps``."""
        start = self.config.decay_from
        decay = max(self.config.total_steps - start, 1)

        def factor(step: int) -> float:
            return 1.0 - max(0, step - start) / decay

        return [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (opt_g, opt_d)]

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor, opt_g: torch.optim.Optimizer,
                   opt_d: torch.optim.Optimizer, generators: nn.Module | None = None,
                   discriminators: nn.Module | None = None, autocast: bool = False,
                   target_a: torch.Tensor | None = None, target_b: torch.Tensor | None = None,
                   extra_a: torch.Tensor | None = None, extra_b: torch.Tensor | None = None,
                   lesion: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One iteration: update both generators, then both discriminators.

        Args:
            real_a: batch of domain-A slices (N, 1, H, W) in [-1, 1].
            real_b: batch of domain-B slices.
            opt_g: optimiser of the generators.
            opt_d: optimiser of the discriminators.
            generators: the (possibly DDP-wrapped or compiled) :class:`GeneratorPass`; defaults to our own.
            discriminators: likewise for :class:`DiscriminatorPass`.
            autocast: bf16 autocast (on CUDA, or on a CPU with native bf16).
            target_a: for paired batches, the A image registered to ``real_b`` (the target of G_ba(real_b));
                with ``target_b`` it adds the paired L1 term. ``real_a``/``real_b`` may carry intensity
                augmentation, the targets do not.
            target_b: the B image registered to ``real_a``.
            extra_a: unpaired domain-A slices (laid out as ``real_a``) beside paired batches: they join ``real_a``
                in the adversarial, cycle and identity terms and as real A for the discriminator, never the paired
                ones.
            extra_b: likewise for domain B.
            lesion: for paired batches, where each pair's synthetic lesion is ((N, 1, H, W) weights in [0, 1],
                zeros without one): with ``lambda_lesion`` it adds the mean absolute error inside the lesions, in
                both directions (the pair is registered, so the lesion is at the same place in both).

        Returns:
            Detached loss tensors; nothing here waits for the device, so logging decides when to sync.
        """
        c = self.config
        generators = generators if generators is not None else self.generators
        discriminators = discriminators if discriminators is not None else self.discriminators
        device_type = real_a.device.type
        use_adv = c.lambda_adv > 0
        use_cycle = c.lambda_cycle > 0
        use_identity = c.lambda_identity > 0 and use_cycle
        use_paired = target_a is not None and target_b is not None and c.lambda_paired > 0
        # the paired terms see the first n_a (n_b) images of each batch; unpaired slices follow them
        n_a, n_b = real_a.shape[0], real_b.shape[0]
        if extra_a is not None:
            real_a = torch.cat([real_a, extra_a])
        if extra_b is not None:
            real_b = torch.cat([real_b, extra_b])
        # residual training data carry [image, base, neighbours' bases (2.5D), target image]: the generators see all
        # but the last, the losses and discriminators the target image (histogram-standardised or as normalised
        # alone, TrainConfig.target_norm; plain data: the image alone)
        inputs_a, inputs_b = generator_inputs(real_a), generator_inputs(real_b)
        real_a, real_b = _loss_image(real_a), _loss_image(real_b)

        # generators: the discriminators are only judges here
        self.discriminators.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        losses: dict[str, torch.Tensor] = {}
        # what the log needs beside the losses (step counts under COUNT_PREFIX), kept out of the generators' sum
        counts: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            out = generators(inputs_a, inputs_b, use_identity, use_cycle)
            if use_adv:
                judge_a, judge_b = self.discriminators(out["fake_a"], out["fake_b"])
        if use_adv:
            losses["g_ab"] = c.lambda_adv * self.adversarial(judge_b.float(), target_is_real=True, for_discriminator=False)
            losses["g_ba"] = c.lambda_adv * self.adversarial(judge_a.float(), target_is_real=True, for_discriminator=False)
        if use_cycle:
            losses["cycle_a"] = self.l1(out["rec_a"].float(), real_a) * c.lambda_cycle
            losses["cycle_b"] = self.l1(out["rec_b"].float(), real_b) * c.lambda_cycle
        if use_identity:
            weight = c.lambda_cycle * c.lambda_identity
            losses["idt_a"] = self.l1(out["idt_a"].float(), real_a) * weight
            losses["idt_b"] = self.l1(out["idt_b"].float(), real_b) * weight
        if use_paired:
            paired_b, paired_a = out["fake_b"][:n_a].float(), out["fake_a"][:n_b].float()
            losses["paired_b"] = self.l1(paired_b, _loss_image(target_b)) * c.lambda_paired
            losses["paired_a"] = self.l1(paired_a, _loss_image(target_a)) * c.lambda_paired
            if self.ssim is not None:
                # on [0, 1], as the evaluation scores it
                losses["ssim_b"] = self.ssim((paired_b + 1) / 2, (_loss_image(target_b) + 1) / 2) * c.lambda_ssim
                losses["ssim_a"] = self.ssim((paired_a + 1) / 2, (_loss_image(target_a) + 1) / 2) * c.lambda_ssim
            if lesion is not None and c.lambda_lesion > 0:
                w = lesion[:n_a].float()
                # a mean over the lesions' pixels, not the slice's: a lesion counts as much as the slice around it,
                # however small (a batch without lesions adds zero)
                total = w.sum()
                area = total.clamp_min(1.0)
                losses["lesion_b"] = (w * (paired_b - _loss_image(target_b)).abs()).sum() / area * c.lambda_lesion
                losses["lesion_a"] = (w * (paired_a - _loss_image(target_a)).abs()).sum() / area * c.lambda_lesion
                # whether this step had a lesion to weigh: the log averages the term over such steps only
                lesioned = (total > 0).float()
                counts[COUNT_PREFIX + "lesion_b"] = counts[COUNT_PREFIX + "lesion_a"] = lesioned
            if c.lambda_histogram > 0:
                # where both images of the pair are tissue: the translation's background is the source's
                losses["hist_b"] = histogram_loss(paired_b, _loss_image(target_b),
                                                  _foreground(inputs_a[:n_a]) & _foreground(target_b)) * c.lambda_histogram
                losses["hist_a"] = histogram_loss(paired_a, _loss_image(target_a),
                                                  _foreground(inputs_b[:n_b]) & _foreground(target_a)) * c.lambda_histogram
        if not losses:
            raise ValueError("nothing to learn: every loss weight is zero (or --paired is off with only a paired loss)")
        loss_g = torch.stack(list(losses.values())).sum()
        loss_g.backward()
        opt_g.step()

        if use_adv:
            # discriminators: real against pooled fakes
            self.discriminators.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            fake_a = self.pool_a.query(out["fake_a"].detach().float())
            fake_b = self.pool_b.query(out["fake_b"].detach().float())
            # with unpaired slices the real and generated batches of a domain may differ in size
            m_a, m_b = real_a.shape[0], real_b.shape[0]
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                # one forward over real and fake together (instance norm is per image, so this changes nothing)
                # keeps DistributedDataParallel at one call per backward
                logit_a, logit_b = discriminators(torch.cat([real_a, fake_a]), torch.cat([real_b, fake_b]))
            real_logit_a, fake_logit_a = logit_a[:m_a], logit_a[m_a:]
            real_logit_b, fake_logit_b = logit_b[:m_b], logit_b[m_b:]
            loss_d_a = 0.5 * (self.adversarial(real_logit_a.float(), target_is_real=True, for_discriminator=True)
                              + self.adversarial(fake_logit_a.float(), target_is_real=False, for_discriminator=True))
            loss_d_b = 0.5 * (self.adversarial(real_logit_b.float(), target_is_real=True, for_discriminator=True)
                              + self.adversarial(fake_logit_b.float(), target_is_real=False, for_discriminator=True))
            (loss_d_a + loss_d_b).backward()
            opt_d.step()
            losses.update(d_a=loss_d_a, d_b=loss_d_b)
        return {k: v.detach() for k, v in (losses | counts).items()} | {"_fake_b": out["fake_b"][:n_a].detach(),
                                                                         "_fake_a": out["fake_a"][:n_b].detach()}


def histogram_loss(pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between the sorted values of ``pred`` and ``target`` inside ``foreground``, per
    image, averaged over the batch: the 1-D Wasserstein distance between their intensity histograms.

    It does not care where a value lies, only that the translation has as many bright (and dark) pixels as the
    target: where L1 and SSIM meet a pixel whose target they cannot tell (thin CSF in a sulcus, a lesion's edge),
    they pull it toward its surroundings and compress the histogram's ends, which this term charges.

    Args:
        pred, target: (N, 1, H, W) images.
        foreground: (N, 1, H, W) booleans; an image without foreground adds nothing.
    """
    terms = [(torch.sort(p[m]).values - torch.sort(t[m]).values).abs().mean()
             for p, t, m in zip(pred, target, foreground) if bool(m.any())]
    return torch.stack(terms).mean() if terms else pred.sum() * 0.0


def _foreground(x: torch.Tensor) -> torch.Tensor:
    """Where the first channel of normalised data is tissue (the background is exactly -1)."""
    return x[:, :1] > BACKGROUND_LEVEL


def _loss_image(x: torch.Tensor) -> torch.Tensor:
    """The channel losses compare with: the target image of residual data (the last of three or more channels; see
    :attr:`~medsynth.config.TrainConfig.target_norm`), else the image."""
    return x[:, -1:] if x.shape[1] >= 3 else x[:, :1]


def generator_inputs(x: torch.Tensor) -> torch.Tensor:
    """What a generator is given of a training batch: residual data without their last channel, the target image
    the losses compare with; plain data as they are."""
    return x[:, :-1] if x.shape[1] >= 3 else x


def export_model(path: str | Path, config: TrainConfig, g_ab: nn.Module, g_ba: nn.Module,
                 stats: dict[str, dict[str, float]], extra: dict[str, Any] | None = None, half: bool = False,
                 calibration: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the inference-ready model: both generators, the configuration, each domain's intensity statistics
    and the domain names, in a file that ``torch.load(..., weights_only=True)`` reads.

    Args:
        path: output ``model.pt``.
        config: the training configuration.
        g_ab: generator from domain A to B.
        g_ba: generator from B to A.
        stats: ``{domain name: IntensityStats dict}``.
        extra: more JSON-like information (validation figures, steps).
        half: store weights as float16 (halves the file; they are computed in float32 again at load).
        calibration: output curves by direction (:mod:`medsynth.curves`; ``medsynth-calibrate`` adds them).
    """
    def weights(net: nn.Module) -> dict[str, torch.Tensor]:
        net = getattr(net, "_orig_mod", getattr(net, "module", net))
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in state.items()}

    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "domains": list(config.names),
        "config": config.to_dict(),
        "stats": stats,
        "generators": {"a_to_b": weights(g_ab), "b_to_a": weights(g_ba)},
        "extra": extra or {},
    }
    if calibration:
        payload["calibration"] = calibration
    return atomic_save(payload, Path(path))


def parameters_of(*nets: nn.Module) -> list[nn.Parameter]:
    """All parameters of several networks (for gradient clipping or counting)."""
    return list(itertools.chain.from_iterable(n.parameters() for n in nets))
