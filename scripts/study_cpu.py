#!/usr/bin/env python
"""Quality per CPU hour: T1 <-> T2 recipes, each trained leave-one-out over the shared BraTS patients.

For every recipe and every fold (train on all patients but one, validate on that one), a run of
``medsynth.train`` records held-out masked PSNR / SSIM of both directions against training minutes
(``metrics.json`` of the run). The figures of a recipe are the mean over its folds at each validation step;
a recipe is chosen on that mean, never on one patient. The fair baseline of each fold (invert the T1, match
its histogram to the pooled T2 of the fold's training patients) is scored on the same held-out patient.

Usage::

    python scripts/study_cpu.py --out study/ --minutes 5            # every recipe, every fold
    python scripts/study_cpu.py --out study/ --recipes paired_residual --minutes 5
    python scripts/study_cpu.py --out study/ --report-only          # table, JSON and PNG from finished runs
    python scripts/study_cpu.py --out study/ --report-only --lesion --recipes ssim30_gate10 --packaged-seen
        # every finished fold (and the packaged model) inside the lesion masks: results/study_lesion.{md,json}

Writes ``scripts/results/study_cpu.{md,json,png}`` (``--results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "brain_t1t2"

#: the networks of the packaged CPU model: small enough to train in minutes on two cores
BASE: dict[str, Any] = {"model": {"generator": "resnet6", "ngf": 16, "ndf": 32, "upsample": "nearest"},
                        "size": 128, "batch_size": 1}


def _ssim30(model: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """The second pass's packaged recipe (paired residual on the base, SSIM x 30) with ``changes`` (``model``:
    changes of the networks)."""
    return {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
            "intensity_augment": True, "lambda_ssim": 30.0, **changes,
            "model": {"residual": "invert", "residual_input": "base", **(model or {})}}


def _packaged(**changes: Any) -> dict[str, Any]:
    """The packaged recipe (the seventh pass's ``..._mnislab5_2052``) with ``changes`` (``steps=4104``, ``seed=1``,
    a new option...): every variant of it says only what it changes (``model``: changes of its networks)."""
    model = {"gate_scale": 10.0, "base_smooth": 0.7} | changes.pop("model", {})
    return _ssim30(**({"steps": 2052, "augment_base": True, "lesion_augment": 0.5, "extra_pairs": ["mni152_slab5"],
                       "model": model} | changes))

#: recipe -> TrainConfig overrides (``model`` merged into BASE's); ``steps_per_minute`` is planned from a
#: measurement of the step on this machine so that each fold gets about ``--minutes`` of training
RECIPES: dict[str, dict[str, Any]] = {
    # the recipe the previous packaged model was trained with: unpaired, one thread, fp32
    "unpaired_1thread_fp32": {"threads": 1, "amp": False},
    # the same objective on both cores with bf16 autocast
    "unpaired_fast": {},
    # plain paired L1 regression (no discriminators)
    "paired": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0},
    # paired L1 as a correction of the inverted-histogram map, with intensity augmentation of the inputs
    "paired_residual": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
                        "intensity_augment": True, "model": {"residual": "invert"}},
    # the same, the network seeing the inverted histogram match (the same histogram for every patient)
    "paired_residual_std": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
                            "intensity_augment": True, "model": {"residual": "invert", "residual_input": "base"}},
    # the same with an SSIM term beside the L1 (L1 alone regresses to the median and flattens local contrast)
    "paired_residual_std_ssim": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
                                 "intensity_augment": True, "lambda_ssim": 10.0,
                                 "model": {"residual": "invert", "residual_input": "base"}},
    # the SSIM term weighted three times higher (the fold means tie the fair baseline on SSIM at 10)
    "paired_residual_std_ssim30": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
                                   "intensity_augment": True, "lambda_ssim": 30.0,
                                   "model": {"residual": "invert", "residual_input": "base"}},
    # the packaged recipe on whole slices (240 px: the instance-norm statistics the model sees at conversion)
    "paired_residual_std_ssim_whole": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0,
                                       "lambda_identity": 0.0, "intensity_augment": True, "lambda_ssim": 10.0,
                                       "size": 240, "model": {"residual": "invert", "residual_input": "base"}},
    # the second pass's packaged recipe (SSIM x 30) on whole slices: instance-norm statistics as at conversion
    "ssim30_whole": _ssim30(size=240),
    # the same, twice as wide; with MONAI's U-Net; four times as many steps
    "ssim30_ngf32": _ssim30(model={"ngf": 32}),
    "ssim30_unet": _ssim30(model={"generator": "unet"}),
    "ssim30_long": _ssim30(steps=5472),
    # the residual gate's learning rate x 10 and x 30 (at x 1 the gate, and with it the largest correction, reaches
    # only about 0.15 of the range in 1,368 steps); x 10 is the packaged recipe now
    "ssim30_gate10": _ssim30(model={"gate_scale": 10.0}),
    "ssim30_gate30": _ssim30(model={"gate_scale": 30.0}),
    # with the faster gate: 2.5D (the bases of one or two neighbouring slices on each side), wider, longer, SSIM x
    # 100, dropout 0.5 in the ResNet blocks (pix2pix's regulariser), 1.5x the steps
    "ssim30_gate10_context1": _ssim30(model={"gate_scale": 10.0, "context": 1}),
    "ssim30_gate10_context2": _ssim30(model={"gate_scale": 10.0, "context": 2}),
    "ssim30_gate10_ngf32": _ssim30(model={"gate_scale": 10.0, "ngf": 32}),
    "ssim30_gate10_long": _ssim30(steps=5472, model={"gate_scale": 10.0}),
    "ssim100_gate10": _ssim30(lambda_ssim=100.0, model={"gate_scale": 10.0}),
    "ssim30_gate10_dropout": _ssim30(model={"gate_scale": 10.0, "dropout": 0.5}),
    "ssim30_gate10_2052": _ssim30(steps=2052, model={"gate_scale": 10.0}),
    # the packaged recipe with synthetic tumour-like lesions (medsynth.lesions: oedema at grey matter's T1 level and
    # CSF-bright in T2, half with a T1-bright, T2-grey core; smooth borders) in half the paired samples: two training
    # patients show too few lesions (scripts/results/study_lesion.md)
    "ssim30_gate10_lesions": _ssim30(lesion_augment=0.5, model={"gate_scale": 10.0}),
    # the first blobs (medsynth.lesions before tumour-like levels): T1 as dark as CSF (quantile 0.03-0.25), no cores;
    # a monotone map already renders such a blob bright, so they teach little (run as ssim30_gate10_lesions then)
    "ssim30_gate10_lesions_csf": _ssim30(lesion_augment=0.5, lesion_dark=[0.03, 0.25], lesion_core=0.0,
                                         model={"gate_scale": 10.0}),
    # intensity augmentation that reaches the base the network sees (--augment-base): before it, the bias field,
    # contrast and noise changed only the image channel, which a network reading the base never looks at
    "ssim30_gate10_augbase": _ssim30(augment_base=True, model={"gate_scale": 10.0}),
    # both: tumour-like lesions (oedema at grey matter's T1 level, half with a T1-bright core) and --augment-base
    "ssim30_gate10_augbase_lesions": _ssim30(augment_base=True, lesion_augment=0.5, model={"gate_scale": 10.0}),
    # the same, 1.5x the steps (without augmentation that reaching the base, longer runs fitted the training scanners)
    "ssim30_gate10_augbase_lesions_2052": _ssim30(steps=2052, augment_base=True, lesion_augment=0.5,
                                                  model={"gate_scale": 10.0}),
    # the same with the base smoothed in-plane inside the brain (--base-smooth, Gaussian sigma in pixels): a Gaussian
    # of 0.7 voxel on the output (the probe of extra_scores) raised held-out SSIM by 0.01-0.06, so part of the error
    # is the source's noise and texture, which the monotone map carries through pixel for pixel
    "ssim30_gate10_augbase_lesions_smooth07": _ssim30(augment_base=True, lesion_augment=0.5,
                                                      model={"gate_scale": 10.0, "base_smooth": 0.7}),
    "ssim30_gate10_augbase_lesions_smooth12": _ssim30(augment_base=True, lesion_augment=0.5,
                                                      model={"gate_scale": 10.0, "base_smooth": 1.2}),
    # the three again with another seed (weights, slices, crops, augmentation): the folds of one seed differ by up to
    # 0.8 dB between recipes this close, so these are chosen on the means over both seeds
    "ssim30_gate10_augbase_lesions_seed1": _ssim30(seed=1, augment_base=True, lesion_augment=0.5,
                                                   model={"gate_scale": 10.0}),
    "ssim30_gate10_augbase_lesions_smooth07_seed1": _ssim30(seed=1, augment_base=True, lesion_augment=0.5,
                                                            model={"gate_scale": 10.0, "base_smooth": 0.7}),
    "ssim30_gate10_augbase_lesions_smooth12_seed1": _ssim30(seed=1, augment_base=True, lesion_augment=0.5,
                                                            model={"gate_scale": 10.0, "base_smooth": 1.2}),
    # the packaged recipe with one more, healthy training pair: the MNI avg152 T1/T2 templates, skull-stripped and
    # resampled to 1 mm (scripts/make_template_pair.py); extra anatomy and its T1/T2 relation, no pathology
    "ssim30_gate10_augbase_lesions_smooth07_mni": _ssim30(augment_base=True, lesion_augment=0.5, extra_pairs=["mni152"],
                                                          model={"gate_scale": 10.0, "base_smooth": 0.7}),
    "ssim30_gate10_augbase_lesions_smooth07_mni_seed1": _ssim30(seed=1, augment_base=True, lesion_augment=0.5,
                                                                extra_pairs=["mni152"],
                                                                model={"gate_scale": 10.0, "base_smooth": 0.7}),
    # the same, 1.5x the steps: with a third pair the data may bear a longer run (with two, 1,400-2,000 steps were best)
    "ssim30_gate10_augbase_lesions_smooth07_mni_2052": _ssim30(steps=2052, augment_base=True, lesion_augment=0.5,
                                                               extra_pairs=["mni152"],
                                                               model={"gate_scale": 10.0, "base_smooth": 0.7}),
    "ssim30_gate10_augbase_lesions_smooth07_mni_2052_seed1": _ssim30(seed=1, steps=2052, augment_base=True,
                                                                     lesion_augment=0.5, extra_pairs=["mni152"],
                                                                     model={"gate_scale": 10.0, "base_smooth": 0.7}),
    # the packaged recipe with the template pair made thick-slice (5 mm along S-I), as the patients' scans are:
    # the axial slices the network trains on then carry the same partial-volume mixing as the patients'
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052": _packaged(),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_seed1": _packaged(seed=1),
    # the packaged recipe with its synthetic lesions where vasogenic oedema lies (--lesion-site white: centred in the
    # T1's white matter and shaped by it): lesions anywhere teach that grey-matter-level T1 may turn T2-bright, and
    # the held-out patients' normal tissue comes out too bright (brain bias +0.08 in T1 -> T2, study_slab.md)
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_white": _packaged(lesion_site="white"),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_white_seed1": _packaged(seed=1, lesion_site="white"),
    # the packaged recipe with the histogram term (--lambda-histogram: L1 between the sorted foreground intensities of
    # translation and target): on the held-out patients its output's bright end (CSF) is compressed, the 99th
    # percentile at 0.62 of the real T2's 99.5th where the real one is at 0.89-0.95 and the median is right
    # (study_ceiling.md), and the metrics' per-image normalisation turns that into a whole brain too bright
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_hist10": _packaged(lambda_histogram=10.0),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_hist10_seed1": _packaged(seed=1, lambda_histogram=10.0),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_hist30": _packaged(lambda_histogram=30.0),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_hist30_seed1": _packaged(seed=1, lambda_histogram=30.0),
    # the packaged recipe twice as long: on heads it trained on it reaches only 16.1 / 13.9 dB where the network fitted
    # to one head reaches 22 (study_ceiling.md), so it underfits; the last run longer than 2,052 steps (ssim30_gate10_long,
    # second pass) predates the regularisers added since (augmentation reaching the base, synthetic lesions, base
    # smoothing, the template pair), which may now let a longer run generalise instead of fitting the training scanners
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_4104": _packaged(steps=4104),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_4104_seed1": _packaged(seed=1, steps=4104),
    # a third seed of both, read only for T2 -> T1: the tenth pass's lead (that direction wants the longer run) was
    # read off seeds 0 and 1, so it is tested on a seed neither had
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_seed2": _packaged(seed=2),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_4104_seed2": _packaged(seed=2, steps=4104),
    # ceilings, not leave-one-out (``train_on``): the packaged recipe with the held-out patient among its training
    # pairs (how much of the error is generalisation), and the network fitted to the held-out patient alone, four
    # times as long with no augmentation (how much this network and slice-wise T1/T2 data allow at all)
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_seen": _packaged(train_on="all"),
    # the packaged recipe with the ten IXI T1s (healthy, other people, no T2) as unpaired anatomy: an adversarial term
    # (PatchGAN, LSGAN x 1) judges every T1 -> T2 translation, paired and IXI alike, against the training T2s (and every
    # T2 -> T1 one against the pairs' and the IXI T1s). Every pass so far regressed with L1 and SSIM alone, which on a
    # head it did not train on compresses the T2's bright end (study_ceiling.md); a discriminator charges that wherever
    # it shows, and twelve heads' anatomy is more than three. No cycle term: with it a step costs 2.9x the packaged
    # one's (0.43 s against 0.15 s), and the residual over the base already carries the anatomy through
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_ixi": _packaged(unpaired_t1=["ixi_slab5"], lambda_adv=1.0),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_ixi_seed1": _packaged(seed=1, unpaired_t1=["ixi_slab5"],
                                                                                lambda_adv=1.0),
    # the same adversarial term without the IXI heads (one seed; to read, not to choose): what the discriminator does
    # on the pairs alone
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_adv": _packaged(lambda_adv=1.0),
    # the packaged recipe trained multi-planar (--axis all): each sample's slices along a random one of the three axes.
    # The axial model converted along the other axes scores higher PSNR on unseen heads (sagittal: T1 -> T2 above
    # axial on all six folds of two seeds), and fusing the three more still (+0.75 dB), though it never trained on
    # them: each head's anatomy seen three ways is three times the distinct slices of two heads
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_planes": _packaged(axis="all"),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_planes_seed1": _packaged(seed=1, axis="all"),
    # a third seed, read with seed 1 for T2 -> T1 only (the question seed 0 suggested; study_planes.md)
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_planes_seed2": _packaged(seed=2, axis="all"),
    # the packaged recipe on bias-corrected volumes (--bias-correction n4): every training volume divided by its N4
    # field, each input corrected before conversion and its field put back on the translation (the receive coils'
    # field is one for every image of a session: the real target carries much of the source's). A probe on the
    # fourteenth pass's seed-0 folds of the recipe without the template pair: T1 -> T2 +0.98 dB, T2 -> T1 +1.65 dB
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_n4": _packaged(bias_correction="n4"),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_n4_seed1": _packaged(seed=1, bias_correction="n4"),
    # the same with the field fitted on the histogram's main peak only (--bias-correction n4-peak): a large lesion
    # lies outside it, so neither the corrected input nor the restored field carries the lesion (study_n4.md: a
    # field over the whole brain took 2-2.5 dB off the lesions)
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_n4peak": _packaged(bias_correction="n4-peak"),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_n4peak_seed1": _packaged(seed=1, bias_correction="n4-peak"),
    # the packaged recipe with MONAI's U-Net (ngf 16: 16-32-64-128-128 filters, four stride-2 levels) as the
    # correction network instead of the ResNet-6 (two). Written for a wider view of a lesion, which it does not have:
    # 63 px of receptive field against the ResNet-6's 121 (study_unet.md); about as many weights
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_unet": _packaged(model={"generator": "unet"}),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_unet_seed1": _packaged(seed=1, model={"generator": "unet"}),
    # the packaged recipe with synthetic lesions in every training pair (--lesion-augment 1.0) instead of half: the
    # oedema still comes out too dark on the means (bias -0.075 T1 -> T2), so more of the T1-grey/T2-bright relation
    "ssim30_gate10_augbase_lesions10_smooth07_mnislab5_2052": _packaged(lesion_augment=1.0),
    "ssim30_gate10_augbase_lesions10_smooth07_mnislab5_2052_seed1": _packaged(seed=1, lesion_augment=1.0),
    # the packaged recipe with synthetic oedema blobs up to twice as large (--lesion-radius 4 32, semi-axes in px of
    # the 1 mm training slices): a glioma's oedema of 30-150 mL spans 40-65 mm, beyond one 16 px blob, and the
    # network may have learned that a T2-bright lesion is a small one
    "ssim30_gate10_augbase_lesionsbig_smooth07_mnislab5_2052": _packaged(lesion_radius=[4.0, 32.0]),
    "ssim30_gate10_augbase_lesionsbig_smooth07_mnislab5_2052_seed1": _packaged(seed=1, lesion_radius=[4.0, 32.0]),
    # the packaged recipe with a second paired L1 over the synthetic lesions alone (--lambda-lesion 10, the paired
    # L1's weight): the fold models render a large oedema as dark when they trained on it as when they did not
    # (check_oedema_level.py), a fit the whole slice's L1 leaves to a few per cent of its pixels
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_lesionl1": _packaged(lambda_lesion=10.0),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_lesionl1_seed1": _packaged(seed=1, lambda_lesion=10.0),
    # the packaged recipe with the reference CycleGAN's generator depth, ResNet-9 (nine residual blocks at a quarter
    # of the resolution instead of six): about 169 px of receptive field against 121, 1.45x the weights, 1.17x the
    # network's time on a 240 px slice here
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_resnet9": _packaged(model={"generator": "resnet9"}),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_resnet9_seed1": _packaged(seed=1,
                                                                                  model={"generator": "resnet9"}),
    # the packaged recipe with four crops per step instead of one (--batch-size 4, the same 2,052 steps and learning
    # rate): each update averages over heads, lesioned and plain samples instead of following one crop, so rare
    # regions (a real oedema, the synthetic lesions, thin CSF) weigh in every step; 3.4x the step's time here
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_batch4": _packaged(batch_size=4),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_batch4_seed1": _packaged(seed=1, batch_size=4),
    # the packaged recipe with each training target as normalised alone (--target-norm percentile: its 0.5-99.5 %
    # foreground percentiles to [-1, 1], the scale medsynth-eval scores in) instead of matched onto the pooled T2 (or
    # T1) histogram: the match teaches AURORA_sample's oedema at 0.60-0.61 of its brain's range where its T2 has it
    # at 0.67, and TCGA-DU-7294's white matter 0.03-0.05 too bright (scripts/study_data/intros/study_pctnorm.md)
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_pctnorm": _packaged(target_norm="percentile"),
    "ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052_pctnorm_seed1": _packaged(seed=1, target_norm="percentile"),
    # the packaged recipe without the template pair: study_allpairs.py trains it on one, two and three patients and
    # scores every model on the template pair, the one registered head none of them saw
    "ssim30_gate10_augbase_lesions_smooth07_2052_notemplate": _packaged(extra_pairs=[]),
    "ssim30_gate10_smooth07_self_8208": _ssim30(train_on="held_out", steps=8208, intensity_augment=False,
                                                model={"gate_scale": 10.0, "base_smooth": 0.7}),
    # the same on whole slices (240 px: the instance-norm statistics the model sees at conversion)
    "paired_residual_whole": {"paired": True, "lambda_adv": 0.0, "lambda_cycle": 0.0, "lambda_identity": 0.0,
                              "intensity_augment": True, "size": 240, "model": {"residual": "invert"}},
    # mixed: CycleGAN objective plus the paired term (Jin et al. 2019), residual, augmentation
    "mixed_residual": {"paired": True, "intensity_augment": True, "model": {"residual": "invert"}},
}


def train_on(recipe: str) -> str:
    """Who trains a recipe's fold: ``others`` (leave-one-out), or a ceiling's ``all`` (the held-out patient too) or
    ``held_out`` (it alone)."""
    return RECIPES.get(recipe, {}).get("train_on", "others")


def cases(data: Path = DATA) -> list[Path]:
    """The paired patients of ``data``, by default the shared ones (folders holding t1.nii.gz and t2.nii.gz)."""
    return sorted(p for p in data.iterdir() if (p / "t1.nii.gz").exists() and (p / "t2.nii.gz").exists())


#: extra training pairs a recipe may name (``extra_pairs``): name -> (the script module whose
#: ``make_pair(folder, **options)`` writes the pair, its options)
EXTRA_PAIRS: dict[str, tuple[str, dict[str, Any]]] = {
    "mni152": ("make_template_pair", {}),
    # thick slices as the patients' scans have (their through-plane blur: x5-6 along S-I on the 1 mm grid)
    "mni152_slab5": ("make_template_pair", {"slab_mm": 5.0}),
}


#: unpaired T1 volumes a recipe may name (``unpaired_t1``): name -> (the script module whose
#: ``make_brains(folder, **options)`` writes them, its options)
UNPAIRED_T1: dict[str, tuple[str, dict[str, Any]]] = {
    # the ten IXI T1s, skull-stripped by the registered MNI brain mask, 1 mm, 5 mm slabs along S-I
    "ixi_slab5": ("make_ixi_brains", {}),
}


def unpaired_t1(name: str, root: Path) -> list[Path]:
    """The volumes of an unpaired T1 set, made under ``root`` on first use."""
    import importlib

    module, options = UNPAIRED_T1[name]
    folder = importlib.import_module(module).make_brains(root / name, **options)
    return sorted(folder.glob("*.nii.gz"))


def extra_pair(name: str, root: Path) -> Path:
    """The folder of an extra training pair (``t1.nii.gz``, ``t2.nii.gz``), made under ``root`` on first use."""
    import importlib

    module, options = EXTRA_PAIRS[name]
    return importlib.import_module(module).make_pair(root / name, **options)


def build_config(recipe: str, train_cases: list[Path], held_out: Path, out: Path, steps: int,
                 val_every: int, seed: int = 0, extra_root: Path | None = None) -> Any:
    """The TrainConfig of one fold. Extra pairs the recipe names are made under ``extra_root`` (default: the
    study's root, ``out/../../_extra``) and join the training cases; the held-out patient is never among the extra
    pairs (it is among ``train_cases`` only in a ceiling recipe's fold, see ``train_on``)."""
    from medsynth.config import ModelConfig, TrainConfig

    spec = json.loads(json.dumps(BASE))
    override = json.loads(json.dumps(RECIPES[recipe]))
    spec["model"].update(override.pop("model", {}))
    override.pop("train_on", None)  # who trains is the caller's (run_fold's) business
    extras = override.pop("extra_pairs", [])
    unpaired = override.pop("unpaired_t1", [])
    root = extra_root if extra_root is not None else out.parent.parent / "_extra"
    if extras:
        train_cases = [*train_cases, *(extra_pair(name, root) for name in extras)]
    if unpaired:
        override["extra_a"] = [str(p) for name in unpaired for p in unpaired_t1(name, root)]
    spec.update(override)
    # a recipe may fix its own step count (a longer run of another recipe) and seed (a repeat of another recipe)
    steps = int(spec.pop("steps", steps))
    seed = int(spec.pop("seed", seed))
    model = ModelConfig(**spec.pop("model"))
    return TrainConfig(a=[str(c / "t1.nii.gz") for c in train_cases], b=[str(c / "t2.nii.gz") for c in train_cases],
                       out=str(out), model=model, steps=steps, val_a=[str(held_out / "t1.nii.gz")],
                       val_b=[str(held_out / "t2.nii.gz")], val_every=val_every, sample_every=max(steps // 2, 1),
                       checkpoint_every=steps, log_every=50, seed=seed, **spec)


def fair_baseline(run: Path, held_out: Path) -> dict[str, dict[str, float]]:
    """Masked PSNR/SSIM/MAE of the fair baseline (the run's intensity maps alone) on the held-out patient."""
    from medsynth.evaluation import masked_metrics
    from medsynth.inference import fair_baseline_translator
    from medsynth.io import load_image

    translator = fair_baseline_translator(run / "model.pt", device="cpu")
    t1, t2 = load_image(held_out / "t1.nii.gz"), load_image(held_out / "t2.nii.gz")
    mask = (t1.array > 0) & (t2.array > 0)
    out = {}
    for direction, (src, ref) in zip(translator.directions, ((t1, t2), (t2, t1))):
        pred = translator.translate(src, direction=direction, axis="axial")
        out[direction] = masked_metrics(pred.array, ref.array, mask)
    return out


def oracle_baseline(held_out: Path) -> dict[str, dict[str, float]]:
    """The oracle baseline on the held-out patient (invert, match to that patient's own real target histogram:
    what ``medsynth-eval`` calls ``baseline``; no user has the target they want to make)."""
    from medsynth.evaluation import baseline_translate, masked_metrics
    from medsynth.io import load_image

    t1, t2 = load_image(held_out / "t1.nii.gz").array, load_image(held_out / "t2.nii.gz").array
    mask = (t1 > 0) & (t2 > 0)
    return {"t1-to-t2": masked_metrics(baseline_translate(t1, t2, mask), t2, mask),
            "t2-to-t1": masked_metrics(baseline_translate(t2, t1, mask), t1, mask)}


def measure_speed(recipe: str, train_cases: list[Path], tmp: Path, steps: int = 25) -> float:
    """Seconds per step of a recipe on this machine (a short run, validation off)."""
    import shutil

    from medsynth.training import train

    out = tmp / f"speed_{recipe}"
    shutil.rmtree(out, ignore_errors=True)
    config = build_config(recipe, train_cases, train_cases[0], out, steps, val_every=10**9, extra_root=tmp / "_extra")
    config.val_a, config.val_b = [], []
    config.sample_every = config.checkpoint_every = 10**9
    import torch

    train(config, progress=False)
    # the trainer's own clock: data and steps, not start-up
    seconds = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["train_seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return seconds / steps


def run_fold(recipe: str, fold: Path, all_cases: list[Path], root: Path, minutes: float,
             seconds_per_step: float, points: int, steps: int | None = None, threads: int | None = None) -> Path:
    from medsynth.training import train

    out = root / recipe / fold.name
    if (out / "model.pt").exists():
        return out
    steps = steps or max(int(minutes * 60 / seconds_per_step), 10)
    train_cases = {"others": [c for c in all_cases if c != fold], "all": list(all_cases),
                   "held_out": [fold]}[train_on(recipe)]
    config = build_config(recipe, train_cases, fold, out, steps, val_every=max(steps // points, 1))
    config.threads = threads if threads is not None else config.threads
    print(f"[{recipe} / held out {fold.name}] {steps} steps (~{minutes:g} min at {seconds_per_step:.3f} s/step)",
          flush=True)
    train(config, progress=False)
    baseline = fair_baseline(out, fold)
    (out / "fair_baseline.json").write_text(json.dumps(baseline, indent=2) + "\n")
    return out


def extra_scores(run: Path, held_out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """The final model of a fold on its held-out patient two more ways, cached in ``extra_scores.json``: the three
    axes fused (``--axis all``), and the axial output after a 0.7-voxel Gaussian (a probe of how much of the error
    is uncorrelated high-frequency content, e.g. the source's noise carried through the base; not a product step)."""
    cache = run / "extra_scores.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from scipy.ndimage import gaussian_filter

    from medsynth.evaluation import masked_metrics
    from medsynth.inference import Translator
    from medsynth.io import load_image

    translator = Translator.from_file(run / "model.pt", device="cpu")
    t1, t2 = load_image(held_out / "t1.nii.gz"), load_image(held_out / "t2.nii.gz")
    mask = (t1.array > 0) & (t2.array > 0)
    out: dict[str, dict[str, dict[str, float]]] = {"all": {}, "axial_gauss0.7": {}}
    for direction, (src, ref) in zip(translator.directions, ((t1, t2), (t2, t1))):
        fused = translator.translate(src, direction=direction, axis="all").array
        out["all"][direction] = masked_metrics(fused, ref.array, mask)
        axial = translator.translate(src, direction=direction, axis="axial").array
        smooth = np.where(src.array > 0, gaussian_filter(axial, 0.7), axial)
        out["axial_gauss0.7"][direction] = masked_metrics(smooth, ref.array, mask)
    cache.write_text(json.dumps(out, indent=2) + "\n")
    return out


def write_results(results: Path, name: str, md: list[str], result: dict[str, Any]) -> None:
    """A study's ``name``.md (the lines of ``md``) and ``name``.json (``result``, NaN kept as written) in
    ``results``, each written atomically; the report is printed too."""
    from medsynth.files import write_atomic

    results.mkdir(parents=True, exist_ok=True)
    write_atomic(results / f"{name}.md", "\n".join(md))
    write_atomic(results / f"{name}.json", json.dumps(result, indent=1, allow_nan=True) + "\n")
    print("\n".join(md))


#: lesion masks of the shared patients (``scripts/make_lesion_masks.py``): 1 oedema, 2 core
LESIONS = HERE / "study_data" / "lesion_masks"
#: the packaged model's recipe and held-out patient: that fold's run is the packaged model itself
PACKAGED = ("ssim30_gate10_augbase_lesions_smooth07_mnislab5_2052", "BraTS-GLI-00001-000")
REGIONS = ("brain", "oedema", "core", "lesion")


def held_out_case(held_out: Path) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """A patient's T1 and T2 (:class:`medsynth.io.Image`) and the regions it is scored in: ``brain`` (both images
    above zero) and, from its lesion mask, ``oedema`` (label 1), ``core`` (label 2) and ``lesion`` (both)."""
    from medsynth.io import load_image

    t1, t2 = load_image(held_out / "t1.nii.gz"), load_image(held_out / "t2.nii.gz")
    labels = load_image(LESIONS / f"{held_out.name}.nii.gz", allow_constant=True).array
    mask = (t1.array > 0) & (t2.array > 0)
    return t1, t2, {"brain": mask, "oedema": labels == 1, "core": labels == 2, "lesion": labels > 0}


def lesion_scores(model: Path, held_out: Path, cache: Path | None = None, axis: str = "axial") -> dict[str, Any]:
    """A model on its held-out patient, whole brain and inside each lesion label, against the fair and oracle
    baselines: ``{direction: {"model"|"fair"|"oracle": {region: {psnr, ssim, mae, voxels}}}}`` (regions: brain,
    oedema = label 1, core = label 2, lesion = both; images normalised over the brain, see
    :func:`medsynth.evaluation.region_metrics`). Cached in ``cache``."""
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    from medsynth.evaluation import baseline_translate, region_metrics
    from medsynth.inference import Translator, fair_baseline_translator

    translator = Translator.from_file(model, device="cpu")
    fair = fair_baseline_translator(model, device="cpu")
    t1, t2, regions = held_out_case(held_out)
    mask = regions["brain"]
    out: dict[str, Any] = {"model": str(model)}
    for direction, (src, ref) in zip(translator.directions, ((t1, t2), (t2, t1))):
        images = {"model": translator.translate(src, direction=direction, axis=axis).array,
                  "fair": fair.translate(src, direction=direction, axis=axis).array,
                  "oracle": baseline_translate(src.array, ref.array, mask)}
        out[direction] = {k: region_metrics(v, ref.array, mask, regions) for k, v in images.items()}
    if cache is not None:
        cache.write_text(json.dumps(out, indent=2, allow_nan=True) + "\n")
    return out


#: the pseudo-recipe of ``--packaged-seen``: the packaged model on every patient, two of which trained it
SEEN = "packaged_model_incl_its_training_patients"


def fold_means(folds: list[dict[str, Any]], regions: tuple[str, ...] = REGIONS) -> dict[str, Any]:
    """Means over folds of :func:`lesion_scores` dicts: ``{direction: {kind: {region: {psnr, ssim, mae, bias,
    folds}}}}``; a region some patient lacks (no core) is averaged over the folds that have it (``folds``: how many)."""
    means: dict[str, Any] = {}
    for d in ("t1-to-t2", "t2-to-t1"):
        means[d] = {}
        for kind in ("model", "fair", "oracle"):
            means[d][kind] = {}
            for region in regions:
                have = [f[d][kind][region] for f in folds if f[d][kind][region]["voxels"]]
                means[d][kind][region] = {m: float(np.mean([h[m] for h in have])) if have else float("nan")
                                          for m in ("psnr", "ssim", "mae", "bias")} | {"folds": len(have)}
    return means


def lesion_study(root: Path, recipes: list[str], packaged_seen: bool = False, axis: str = "axial") -> dict[str, Any]:
    """:func:`lesion_scores` of every finished fold of ``recipes`` in ``root`` (the packaged model standing in for
    its own fold, :data:`PACKAGED`), and per recipe the means over folds; ``packaged_seen``: also the packaged
    model on all three patients (:data:`SEEN`: not a leave-one-out figure, two of them trained it); ``axis``: the
    conversion's (``all``: fused, cached apart from the axial scores)."""
    suffix = "" if axis == "axial" else f"_{axis}"
    from medsynth.inference import default_model_path

    result: dict[str, Any] = {"recipes": {}}
    for recipe in recipes + ([SEEN] if packaged_seen else []):
        folds: dict[str, Any] = {}
        for case in cases():
            run = root / recipe / case.name
            if recipe != SEEN and (run / "model.pt").exists():
                model, cache = run / "model.pt", run / f"lesion_scores{suffix}.json"
            elif recipe == SEEN or (recipe, case.name) == PACKAGED:
                # the packaged model on this patient: one cache whichever pseudo-recipe asks
                model = default_model_path()
                cache = root / PACKAGED[0] / f"packaged_{case.name}_lesion_scores{suffix}.json"
                cache.parent.mkdir(parents=True, exist_ok=True)
            else:
                continue
            print(f"[{recipe} / {case.name}] scoring {model}", flush=True)
            folds[case.name] = lesion_scores(model, case, cache, axis)
            config = run / "config.json"
            folds[case.name]["train_minutes"] = (json.loads((run / "metrics.json").read_text())[-1]["train_minutes"]
                                                 if (run / "metrics.json").exists() else None)
            folds[case.name]["steps"] = json.loads(config.read_text())["steps"] if config.exists() else 1368
        if not folds:
            continue
        means = fold_means(list(folds.values()))
        minutes = [f["train_minutes"] for f in folds.values() if f["train_minutes"] is not None]
        result["recipes"][recipe] = {"folds": folds, "means": means,
                                     "train_minutes": float(np.mean(minutes)) if minutes else None}
    return result


def seed_families(names: list[str]) -> dict[str, list[str]]:
    """Recipes that are repeats of one another with other seeds (``X`` and ``X_seed1``, ...), by family ``X``:
    only families with more than one seed."""
    import re

    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(re.sub(r"_seed\d+$", "", name), []).append(name)
    return {k: v for k, v in families.items() if len(v) > 1}


def seed_rule_lines(result: dict[str, Any]) -> list[str]:
    """The selection rule's inputs on the means over seeds (each seed's leave-one-out fold means, averaged):
    whole-brain means beating the oracle's (of 4), lesion-region means (oedema, core, both; PSNR and SSIM, both
    directions) above both baselines (of 12), and the sum of whole-brain and lesion (1+2) PSNR over both
    directions."""
    families = seed_families(list(result["recipes"]))
    if not families:
        return []
    lines = ["", "Means over seeds (each seed's fold means, averaged; the selection rule's inputs: whole-brain means "
             "above the oracle's, of 4; lesion-region means above both baselines, of 12; whole-brain + lesion PSNR "
             "summed over both directions):", "",
             "| family | seeds | T1->T2 brain | T2->T1 brain | T1->T2 lesion | T2->T1 lesion | oracle beaten | "
             "lesion above both | brain + lesion PSNR |", "|---|---|---|---|---|---|---|---|---|"]
    for family, members in families.items():
        def mean(d: str, kind: str, region: str, m: str) -> float:
            return float(np.mean([result["recipes"][r]["means"][d][kind][region][m] for r in members]))

        beaten = sum(mean(d, "model", "brain", m) > mean(d, "oracle", "brain", m)
                     for d in ("t1-to-t2", "t2-to-t1") for m in ("psnr", "ssim"))
        above = sum(mean(d, "model", g, m) > max(mean(d, "fair", g, m), mean(d, "oracle", g, m))
                    for d in ("t1-to-t2", "t2-to-t1") for g in ("oedema", "core", "lesion") for m in ("psnr", "ssim"))
        total = sum(mean(d, "model", g, "psnr") for d in ("t1-to-t2", "t2-to-t1") for g in ("brain", "lesion"))
        cells = [f"{mean(d, 'model', g, 'psnr'):.2f} / {mean(d, 'model', g, 'ssim'):.3f}"
                 for g in ("brain", "lesion") for d in ("t1-to-t2", "t2-to-t1")]
        lines.append(f"| {family} | {len(members)} | " + " | ".join(cells) + f" | {beaten}/4 | {above}/12 | "
                     f"{total:.2f} |")
    return lines


def lesion_report(result: dict[str, Any], results_dir: Path, name: str = "study_lesion", intro: str = "") -> None:
    """``<name>.md`` (fold means and per patient, whole brain and lesion regions) and ``<name>.json``."""
    from medsynth.benchmark import machine as machine_info
    from medsynth.files import write_atomic

    result["machine"] = machine_info()

    def cell(s: dict[str, float]) -> str:
        return "-" if not np.isfinite(s["psnr"]) else f"{s['psnr']:.2f} / {s['ssim']:.3f} / {s['bias']:+.3f}"

    head = ("| recipe | folds | train min | direction | image | brain | oedema (1) | core (2) | lesion (1+2) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = ["Means over the folds (PSNR dB / SSIM / bias = mean of prediction - reference on the [0, 1]-normalised "
             "images, negative: too dark; each region's mean over the folds that have it: TCGA-DU-7294 has no core):",
             "", head]
    for recipe, r in result["recipes"].items():
        minutes = "-" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
        for d in ("t1-to-t2", "t2-to-t1"):
            for kind, label in (("model", "**model**"), ("fair", "fair baseline"), ("oracle", "oracle baseline")):
                m = r["means"][d][kind]
                lines.append(f"| {recipe} | {len(r['folds'])} | {minutes} | {d} | {label} | "
                             + " | ".join(cell(m[g]) for g in REGIONS) + " |")
    lines += seed_rule_lines(result)
    lines += ["", "Per held-out patient (PSNR dB / SSIM / bias):", "",
              "| recipe | held out | direction | image | brain | oedema (1) | core (2) | lesion (1+2) |",
              "|---|---|---|---|---|---|---|---|"]
    for recipe, r in result["recipes"].items():
        for case, f in r["folds"].items():
            for d in ("t1-to-t2", "t2-to-t1"):
                for kind, label in (("model", "**model**"), ("fair", "fair baseline"), ("oracle", "oracle baseline")):
                    lines.append(f"| {recipe} | {case} | {d} | {label} | "
                                 + " | ".join(cell(f[d][kind][g]) for g in REGIONS) + " |")
    table = "\n".join(lines)
    print(table)
    results_dir.mkdir(parents=True, exist_ok=True)
    safe = json.loads(json.dumps(result, allow_nan=True).replace("NaN", "null"))
    write_atomic(results_dir / f"{name}.json", json.dumps(safe, indent=2) + "\n")
    # a ceiling recipe scores patients it trained on: the title must not call such a report leave-one-out
    ceilings = [r for r in result["recipes"] if train_on(r) != "others"]
    heading = "Lesion regions (leave-one-out" + (", and ceilings that are not)" if ceilings else ")")
    write_atomic(results_dir / f"{name}.md", f"# {heading}\n\n{intro}{table}\n")
    print(f"wrote {results_dir / name}.md, .json")


_ORACLES: dict[str, Any] = {}


def _oracle(case: str) -> dict[str, dict[str, float]]:
    if case not in _ORACLES:
        _ORACLES[case] = oracle_baseline(DATA / case)
    return _ORACLES[case]


def collect(root: Path, extra: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Every finished run's curve, and per recipe the mean over folds at each validation point (``extra``: and
    :func:`extra_scores` of each final model; ``only``: these recipes, not every one found)."""
    result: dict[str, Any] = {"recipes": {}}
    wanted = set(only) if only else set(RECIPES)
    for recipe_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name in RECIPES and p.name in wanted):
        folds = {}
        for run in sorted(recipe_dir.iterdir()):
            if not (run / "metrics.json").exists() or not (run / "fair_baseline.json").exists():
                continue
            config = json.loads((run / "config.json").read_text())
            folds[run.name] = {"curve": json.loads((run / "metrics.json").read_text()),
                               "fair_baseline": json.loads((run / "fair_baseline.json").read_text()),
                               "steps": config["steps"]}
            if extra and (run / "model.pt").exists():
                folds[run.name]["extra"] = extra_scores(run, DATA / run.name)
        if not folds:
            continue
        n_points = min(len(f["curve"]) for f in folds.values())
        directions = [k for k in next(iter(folds.values()))["fair_baseline"]]
        mean_curve = []
        for i in range(n_points):
            point: dict[str, Any] = {"train_minutes": float(np.mean([f["curve"][i]["train_minutes"] for f in folds.values()]))}
            for d in directions:
                point[d] = {m: float(np.mean([f["curve"][i][d][m] for f in folds.values()])) for m in ("psnr", "ssim", "mae")}
            mean_curve.append(point)
        baseline = {d: {m: float(np.mean([f["fair_baseline"][d][m] for f in folds.values()])) for m in ("psnr", "ssim", "mae")}
                    for d in directions}
        oracles = {case: _oracle(case) for case in folds}
        oracle = {d: {m: float(np.mean([oracles[c][d][m] for c in folds])) for m in ("psnr", "ssim", "mae")}
                  for d in directions}
        extras = {}
        if all("extra" in f for f in folds.values()):
            for kind in next(iter(folds.values()))["extra"]:
                extras[kind] = {d: {m: float(np.mean([f["extra"][kind][d][m] for f in folds.values()]))
                                    for m in ("psnr", "ssim", "mae")} for d in directions}
        result["recipes"][recipe_dir.name] = {"folds": folds, "mean_curve": mean_curve, "extra_means": extras,
                                              "fair_baseline": baseline,
                                              "oracle_baseline": oracle,
                                              "spec": RECIPES[recipe_dir.name], "n_folds": len(folds)}
    return result


def report(result: dict[str, Any], results_dir: Path, out_name: str = "study_cpu", title: str = "",
           intro: str = "") -> None:
    """Markdown table, JSON and a PNG of held-out PSNR and SSIM against training minutes."""
    from medsynth.benchmark import machine as machine_info
    from medsynth.files import write_atomic

    result["machine"] = machine_info()
    lines = ["| recipe | folds | steps | train min | T1->T2 PSNR | T1->T2 SSIM | T2->T1 PSNR | T2->T1 SSIM | fair baseline T1->T2 | fair baseline T2->T1 | oracle T1->T2 | oracle T2->T1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["recipes"].items():
        last = r["mean_curve"][-1]
        d1, d2 = list(r["fair_baseline"])
        b1, b2 = r["fair_baseline"][d1], r["fair_baseline"][d2]
        o1, o2 = r["oracle_baseline"][d1], r["oracle_baseline"][d2]
        steps = sorted({f["steps"] for f in r["folds"].values()})
        lines.append(f"| {name} | {r['n_folds']} | {'/'.join(map(str, steps))} | {last['train_minutes']:.1f} | "
                     f"{last[d1]['psnr']:.2f} | {last[d1]['ssim']:.3f} | {last[d2]['psnr']:.2f} | {last[d2]['ssim']:.3f} | "
                     f"{b1['psnr']:.2f} / {b1['ssim']:.3f} | {b2['psnr']:.2f} / {b2['ssim']:.3f} | "
                     f"{o1['psnr']:.2f} / {o1['ssim']:.3f} | {o2['psnr']:.2f} / {o2['ssim']:.3f} |")
    with_extra = {n: r for n, r in result["recipes"].items() if r.get("extra_means")}
    if with_extra:
        lines += ["", "The same final models converted with the three axes fused (`--axis all`), and the axial output "
                  "after a 0.7-voxel Gaussian (a probe, not a product step), fold means, PSNR dB / SSIM:", "",
                  "| recipe | folds | axial T1->T2 | axial T2->T1 | all T1->T2 | all T2->T1 | Gaussian T1->T2 | Gaussian T2->T1 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in with_extra.items():
            last = r["mean_curve"][-1]
            cells = [f"{last[d]['psnr']:.2f} / {last[d]['ssim']:.3f}" for d in ("t1-to-t2", "t2-to-t1")]
            for kind in ("all", "axial_gauss0.7"):
                cells += [f"{r['extra_means'][kind][d]['psnr']:.2f} / {r['extra_means'][kind][d]['ssim']:.3f}"
                          for d in ("t1-to-t2", "t2-to-t1")]
            lines.append(f"| {name} | {r['n_folds']} | " + " | ".join(cells) + " |")
        families = seed_families(list(with_extra))
        if families:
            lines += ["", "The same, means over seeds:", "",
                      "| family | seeds | axial T1->T2 | axial T2->T1 | all T1->T2 | all T2->T1 | all >= axial |",
                      "|---|---|---|---|---|---|---|"]
            for family, members in families.items():
                def mean(kind: str, d: str, m: str) -> float:
                    return float(np.mean([with_extra[r]["mean_curve"][-1][d][m] if kind == "axial"
                                          else with_extra[r]["extra_means"][kind][d][m] for r in members]))

                cells = [f"{mean(k, d, 'psnr'):.2f} / {mean(k, d, 'ssim'):.3f}"
                         for k in ("axial", "all") for d in ("t1-to-t2", "t2-to-t1")]
                at_least = sum(mean("all", d, m) >= mean("axial", d, m)
                               for d in ("t1-to-t2", "t2-to-t1") for m in ("psnr", "ssim"))
                lines.append(f"| {family} | {len(members)} | " + " | ".join(cells) + f" | {at_least}/4 |")
    lines += ["", "Per held-out patient (final model of each fold; fair baseline of that fold; PSNR dB / SSIM):", "",
              "| recipe | held out | T1->T2 | fair | oracle | T2->T1 | fair | oracle |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["recipes"].items():
        for case, f in r["folds"].items():
            last, fair, oracle = f["curve"][-1], f["fair_baseline"], _oracle(case)
            cells = []
            for d in ("t1-to-t2", "t2-to-t1"):
                cells += [f"{last[d]['psnr']:.2f} / {last[d]['ssim']:.3f}", f"{fair[d]['psnr']:.2f} / {fair[d]['ssim']:.3f}",
                          f"{oracle[d]['psnr']:.2f} / {oracle[d]['ssim']:.3f}"]
            lines.append(f"| {name} | {case} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(results_dir / f"{out_name}.json", json.dumps(result, indent=2) + "\n")
    write_atomic(results_dir / f"{out_name}.md",
                 f"# Quality per CPU minute (leave-one-out means){title}\n\n{intro}" + table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    most = max((r["n_folds"] for r in result["recipes"].values()), default=0)
    for name, r in result["recipes"].items():
        minutes = [p["train_minutes"] for p in r["mean_curve"]]
        for col, d in enumerate(list(r["fair_baseline"])):
            for row, metric in enumerate(("psnr", "ssim")):
                label = name if r["n_folds"] == most else f"{name} ({r['n_folds']} folds)"
                line, = axes[row][col].plot(minutes, [p[d][metric] for p in r["mean_curve"]], marker="o", label=label)
    for col, d in enumerate(("t1-to-t2", "t2-to-t1")):
        # the baselines of the recipes that ran every fold (a recipe stopped early has its own folds' means)
        full = [r for r in result["recipes"].values() if r["n_folds"] == most and d in r["fair_baseline"]]
        for row, metric in enumerate(("psnr", "ssim")):
            if full:
                axes[row][col].axhline(float(np.mean([r["fair_baseline"][d][metric] for r in full])), color="k",
                                       ls="--", label="fair baseline")
                axes[row][col].axhline(float(np.mean([r["oracle_baseline"][d][metric] for r in full])), color="k",
                                       ls=":", label="oracle baseline")
            axes[row][col].set_title(f"{d}: held-out {metric.upper()} (mean over folds)")
            axes[row][col].set_xlabel("training minutes (2-core CPU)")
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir / f"{out_name}.png", dpi=90)
    print(f"wrote {results_dir / out_name}.md, .json, .png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("study"), help="folder for the runs")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    p.add_argument("--minutes", type=float, default=5.0, help="training minutes per fold (planned from speed)")
    p.add_argument("--points", type=int, default=5, help="validation points per run")
    p.add_argument("--steps", type=int, default=None,
                   help="a fixed number of steps per fold instead of --minutes (for runs beside other work)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--name", default="study_cpu", help="results file name")
    p.add_argument("--only", default=None, help="report only these comma-separated recipes (default: every one found)")
    p.add_argument("--folds", default=None,
                   help="train only these comma-separated held-out cases (default: every fold)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per training (default: every core)")
    p.add_argument("--convert-axis", choices=("axial", "all"), default="axial",
                   help="with --lesion --report-only: score the conversion along this axis (all: the three fused)")
    p.add_argument("--lesion", action="store_true",
                   help="score every finished fold (and the packaged model on its held-out patient) inside the lesion "
                        "masks of scripts/study_data/lesion_masks: writes --name (default study_lesion) .md/.json")
    p.add_argument("--packaged-seen", action="store_true",
                   help="with --lesion: also the packaged model on all three patients (two of which it was trained on)")
    p.add_argument("--extra", action="store_true",
                   help="also score each final model with the axes fused and with a Gaussian probe")
    p.add_argument("--intro", type=Path, default=None,
                   help="a Markdown file whose text opens the report (what was asked, the rule, what was chosen)")
    args = p.parse_args(argv)
    intro = args.intro.read_text().strip() + "\n\n" if args.intro else ""
    if not DATA.exists():
        print(f"error: {DATA}: the shared BraTS patients are needed", file=sys.stderr)
        return 2
    all_cases = cases()
    if args.lesion and args.report_only:
        only = args.only.split(",") if args.only else [r for r in args.recipes.split(",") if r]
        name = "study_lesion" if args.name == "study_cpu" else args.name
        lesion_report(lesion_study(args.out, only, args.packaged_seen, args.convert_axis), args.results, name, intro)
        return 0
    if not args.report_only:
        for recipe in [r for r in args.recipes.split(",") if r]:
            if recipe not in RECIPES:
                print(f"error: {recipe}: unknown recipe ({', '.join(RECIPES)})", file=sys.stderr)
                return 2
            seconds = measure_speed(recipe, all_cases[:2], args.out) if args.steps is None else 1.0
            print(f"{recipe}: {seconds:.3f} s/step", flush=True)
            wanted = set(args.folds.split(",")) if args.folds else None
            for fold in all_cases:
                if wanted is None or fold.name in wanted:
                    run_fold(recipe, fold, all_cases, args.out, args.minutes, seconds, args.points, args.steps,
                             threads=args.threads)
    report(collect(args.out, args.extra, args.only.split(",") if args.only else None), args.results, args.name,
           intro=intro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
