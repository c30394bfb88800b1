"""Configuration dataclasses, with the reference CycleGAN's defaults, saved as JSON beside every model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AXES = ("axial", "coronal", "sagittal")
#: Conversion's slicing axes: one of :data:`AXES`, or ``all`` (the three passes fused, :mod:`medsynth.fusion`)
AXIS_CHOICES = AXES + ("all",)
#: Training's slicing axes: one of :data:`AXES`, or ``all`` (multi-planar: each sample along a random one of the
#: three, so that one model sees each head's anatomy in three orientations and serves ``--axis all`` conversion)
TRAIN_AXES = AXES + ("all",)

#: Index of the slicing axis in a RAS-oriented (I, J, K) array: sagittal slices are along x (R), coronal
#: along y (A), axial along z (S).
AXIS_INDEX = {"sagittal": 0, "coronal": 1, "axial": 2}
GENERATORS = ("resnet9", "resnet6", "unet")


def describe_axes(axis: str) -> str:
    """A training axis in words: ``axial``, or ``axial, coronal and sagittal`` for ``all``."""
    return "axial, coronal and sagittal" if axis == "all" else axis


@dataclass
class ModelConfig:
    """What is needed to rebuild the networks.

    Attributes:
        generator: ``resnet9`` (default, as in the CycleGAN paper for 256 px), ``resnet6`` or ``unet``.
        ngf: filters in the generator's first layer.
        ndf: filters in the discriminator's first layer.
        n_layers_d: strided layers of the PatchGAN (3 gives the 70x70 receptive field).
        norm: ``instance`` (the reference's choice for CycleGAN) or ``batch``.
        dropout: dropout in the ResNet blocks (the reference leaves it off for CycleGAN).
        upsample: ``transpose`` (the reference's transposed convolutions) or ``nearest`` (resize-convolution,
            which avoids checkerboard artefacts).
        residual: ``none`` (the reference) or ``invert``: the generator adds its output to a fixed monotone
            intensity map (the source's histogram, inverted, matched to the target domain's; learned from the
            training data) and so starts from the classical baseline and learns only what it misses.
        residual_input: what the residual network sees: ``image`` (the normalised input) or ``base`` (the
            inverted histogram match itself, whose histogram is the same for every patient: a correction learned
            on it does not depend on how one scanner's intensities differ from another's).
        gate_scale: the residual correction is ``gate_scale x gate x net(...)`` with a learned ``gate`` that starts
            at zero. With Adam each step moves ``gate`` by about the learning rate, so at scale 1 the correction
            can reach only about ``lr x steps`` (0.15 of the [-1, 1] range after 1,400 steps at 2e-4), far less
            than the errors of the baseline it corrects; a larger scale lets it grow as fast as the network learns.
        context: 2.5D input: the residual network (``residual_input="base"``) also sees the base of this many
            neighbouring slices on each side, so that neighbouring slices are translated consistently (0: 2D).
        base_smooth: the residual generator smooths its base in-plane inside the brain with a Gaussian of this
            many pixels (standard deviation; 0: off) before the network sees it and before the correction is added.
            A monotone map carries the source's noise and partial-volume texture into the output pixel for pixel,
            which the target image does not share; smoothing it removes what no correction can predict.
    """

    generator: str = "resnet9"
    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3
    norm: str = "instance"
    dropout: float = 0.0
    upsample: str = "transpose"
    residual: str = "none"
    residual_input: str = "image"
    gate_scale: float = 1.0
    context: int = 0
    base_smooth: float = 0.0


RESIDUALS = ("none", "invert")
RESIDUAL_INPUTS = ("image", "base")
#: where synthetic lesions may go (:attr:`TrainConfig.lesion_site`, ``medsynth.lesions``)
LESION_SITES = ("anywhere", "white")
#: what a residual generator's losses and discriminators compare with (:attr:`TrainConfig.target_norm`)
TARGET_NORMS = ("histogram", "percentile")


@dataclass
class TrainConfig:
    """Every option of ``medsynth-train``; the defaults follow the reference CycleGAN.

    ``steps`` iterations in all; the last ``decay_steps`` of them (default: half, as the reference's 100
    constant and 100 decaying epochs) decay the learning rate linearly to zero.

    ``paired`` matches the two sets by case name (co-registered pairs, e.g. BraTS): both images of a pair get
    the same slice, crop, flip and affine, and ``lambda_paired`` x (|G_ab(a) - b| + |G_ba(b) - a|) joins the
    CycleGAN objective, and ``lambda_ssim`` x (1 - SSIM) of the same pairs (MONAI's ``SSIMLoss``, 2D, on [0, 1]),
    which keeps the local contrast that L1 alone averages away, and ``lambda_histogram`` x the L1 distance between
    the sorted foreground intensities of each translation and its target (:func:`medsynth.cyclegan.histogram_loss`,
    the 1-D Wasserstein distance of their histograms), which charges a compressed bright or dark end wherever it
    lies, as L1 and SSIM do not where a pixel's target is uncertain. ``lambda_adv = 0`` with ``lambda_cycle = 0``
    leaves plain paired regression (no discriminators are run). ``extra_a``/``extra_b`` (``--unpaired-t1/-t2``, with
    ``paired``) are volumes without partners: a slice of one joins every step's adversarial, cycle and identity
    terms and its domain's real images for the discriminator, never the paired terms. ``axis`` is the slicing
    axis of training samples; ``all`` draws each sample's axis at random among the three (``val_axis`` and the
    sample grids stay on theirs: axial by default, as conversion).
    """

    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    names: tuple[str, str] = ("t1", "t2")
    out: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    size: int = 256
    axis: str = "axial"
    min_foreground: float = 0.1
    steps: int = 200_000
    decay_steps: int | None = None
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_adv: float = 1.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    init_gain: float = 0.02
    paired: bool = False
    lambda_paired: float = 10.0
    lambda_ssim: float = 0.0
    lambda_histogram: float = 0.0
    extra_a: list[str] = field(default_factory=list)
    extra_b: list[str] = field(default_factory=list)
    augment: bool = True
    intensity_augment: bool = False
    #: probability that a paired sample gets synthetic oedema-like blobs (T1 moderately dark, T2 bright;
    #: ``medsynth.lesions``)
    lesion_augment: float = 0.0
    #: range of the T1 foreground quantile a synthetic oedema takes (0.12-0.40: about grey matter's level)
    lesion_dark: tuple[float, float] = (0.12, 0.40)
    #: weight of a second paired L1 term, the mean absolute error inside the synthetic lesions (each lesion pixel
    #: weighted by its blend weight) in both directions: 0 leaves the lesions to the whole slice's L1, where they
    #: are a few per cent of the pixels
    lambda_lesion: float = 0.0
    #: smallest and largest semi-axis of a synthetic oedema blob, in pixels of the training slices (1-3 blobs,
    #: overlapping, make one lesion)
    lesion_radius: tuple[float, float] = (4.0, 16.0)
    #: probability that a synthetic oedema gets a core, bright in T1 and intermediate grey in T2
    lesion_core: float = 0.5
    #: where synthetic lesions go: ``anywhere`` in the brain, or ``white`` (centred in the first domain's white
    #: matter and shaped by it, as vasogenic oedema is; ``medsynth.lesions``)
    lesion_site: str = "anywhere"
    #: with ``intensity_augment`` and a residual generator: the random bias field, contrast change and noise reach
    #: the base the network sees (its base is re-derived from the augmented image, rank for rank, as conversion's
    #: histogram match of a whole volume would give), not only the image channel the base was already taken from
    augment_base: bool = False
    #: what the losses and discriminators of a residual generator compare with: each target volume matched onto its
    #: domain's pooled histogram (``histogram``: the training heads' tissues at the same levels whatever their
    #: scanners made of them, at the price of each head's own contrast, which a large lesion's share of the
    #: histogram shifts), or as normalised alone (``percentile``: its 0.5-99.5 foreground percentiles to [-1, 1],
    #: the scale ``medsynth-eval`` scores in, each head's contrast kept). Other generators always see the latter.
    target_norm: str = "histogram"
    flip: bool = True
    enhance: list[str] = field(default_factory=list)
    #: ``n4``: every volume divided by its N4 bias field before normalisation, at training and (the model file
    #: records it) at conversion (:mod:`medsynth.bias`); ``none``: as read
    bias_correction: str = "none"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    channels_last: bool = False
    compile: bool = False
    workers: int = -1
    cache_dir: str | None = None
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    val_a: list[str] = field(default_factory=list)
    val_b: list[str] = field(default_factory=list)
    val_every: int = 2000
    val_axis: str = "axial"
    #: start both generators (and each domain's intensity statistics and histogram) from this model (a
    #: ``model.pt``, a run folder, or ``"default"``: the packaged one) instead of random weights; ``""``: none
    init: str = ""
    #: what the model was trained on, set by training: ``"volume"`` or ``"image2d"``; ``""`` in models older than
    #: this field (``medsynth.inference.model_image_kind`` derives it from their file lists)
    image_kind: str = ""

    def __post_init__(self) -> None:
        # directions are looked up in lower case ("t1-to-t2"), so domain names are stored that way
        self.names = tuple(str(n).strip().lower() for n in self.names)  # type: ignore[assignment]

    @property
    def train_axes(self) -> tuple[str, ...]:
        """The slicing axes training samples are drawn along (all three for ``axis="all"``)."""
        return AXES if self.axis == "all" else (self.axis,)

    @property
    def total_steps(self) -> int:
        """Iterations in the whole run."""
        return self.steps

    @property
    def decay_from(self) -> int:
        """The step after which the learning rate decays linearly to zero at :attr:`total_steps`."""
        decay = self.steps // 2 if self.decay_steps is None else min(self.decay_steps, self.steps)
        return self.steps - decay

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["model"] = model_config_from_dict(values.get("model", {}))
        for name in ("names", "lesion_dark", "lesion_radius"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write as indented JSON, atomically."""
        from medsynth.files import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a JSON file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


#: ``medsynth-train`` on a machine without a GPU (``--recipe cpu``, the default there): every option not given on
#: the command line takes these values, chosen by the leave-one-out study in ``scripts/results/study_cpu.md``
#: to finish in about an hour on two cores. With a GPU (``--recipe reference``) the reference's defaults hold.
CPU_RECIPE: dict[str, Any] = {"generator": "resnet6", "ngf": 16, "ndf": 32, "upsample": "nearest", "size": 128,
                              "steps": 20_000}
#: added to :data:`CPU_RECIPE` for ``--paired`` data
CPU_PAIRED_RECIPE: dict[str, Any] = {"residual": "invert", "residual_input": "base",
                                     "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
                                     "lambda_ssim": 30.0, "gate_scale": 10.0,
                                     "intensity_augment": True, "augment_base": True, "lesion_augment": 0.5,
                                     "base_smooth": 0.7}
RECIPES = ("auto", "cpu", "reference")


def recipe_values(recipe: str, paired: bool) -> dict[str, Any]:
    """Option values of a recipe (``cpu`` or ``reference``); the reference's are the dataclass defaults."""
    if recipe == "reference":
        return {}
    if recipe != "cpu":
        raise ValueError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")
    return CPU_RECIPE | (CPU_PAIRED_RECIPE if paired else {})


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a :class:`ModelConfig`, ignoring unknown keys."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in data.items() if k in known})
