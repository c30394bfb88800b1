"""The CycleGAN step, image pool, schedule and model file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsynth.config import ModelConfig, TrainConfig
from medsynth.cyclegan import CycleGAN, ImagePool, export_model


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig(model=ModelConfig(generator="resnet6", ngf=4, ndf=4), size=32, **kw)


def test_image_pool_fills_then_swaps_and_restores() -> None:
    pool = ImagePool(size=3, seed=1)
    first = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    state = pool.state_dict()
    later = torch.full((8, 1, 1, 1), 9.0)
    out = pool.query(later)
    assert out.shape == later.shape
    assert (out != 9).any() and (out == 9).any()  # some swapped for history, some passed through
    clone = ImagePool(size=3, seed=99)
    clone.load_state_dict(state)
    assert torch.equal(clone.query(later), out)  # same history and generator: same choices
    assert torch.equal(ImagePool(size=0).query(later), later)


def test_train_step_updates_both_sides_and_learns() -> None:
    torch.manual_seed(0)
    model = CycleGAN(tiny_config(lambda_identity=0.5, lr=1e-3))
    opt_g, opt_d = model.optimizers()
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    b = -a  # domain B is the inverse of A: a mapping the generators can learn
    g_before = [p.detach().clone() for p in model.generators.parameters()]
    d_before = [p.detach().clone() for p in model.discriminators.parameters()]
    first = model.train_step(a, b, opt_g, opt_d)
    assert {"g_ab", "g_ba", "cycle_a", "cycle_b", "idt_a", "idt_b", "d_a", "d_b"} <= set(first)
    assert all(torch.isfinite(v).all() for v in first.values())
    assert any(not torch.equal(x, p) for x, p in zip(g_before, model.generators.parameters()))
    assert any(not torch.equal(x, p) for x, p in zip(d_before, model.discriminators.parameters()))
    assert all(p.requires_grad for p in model.discriminators.parameters())
    assert opt_g.param_groups[0]["lr"] == 1e-3
    for _ in range(80):
        last = model.train_step(a, b, opt_g, opt_d)
    assert float(last["cycle_a"] + last["cycle_b"]) < 0.75 * float(first["cycle_a"] + first["cycle_b"])


def test_no_identity_terms_when_weight_is_zero() -> None:
    model = CycleGAN(tiny_config(lambda_identity=0.0))
    opt_g, opt_d = model.optimizers()
    losses = model.train_step(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), opt_g, opt_d)
    assert "idt_a" not in losses


def test_schedule_is_constant_then_linear_to_zero() -> None:
    model = CycleGAN(tiny_config(steps=8, decay_steps=4))
    opt_g, opt_d = model.optimizers()
    sched = model.schedulers(opt_g, opt_d)[0]
    lrs = []
    for _ in range(8):
        lrs.append(opt_g.param_groups[0]["lr"])
        opt_g.step()
        sched.step()
    lrs.append(opt_g.param_groups[0]["lr"])
    assert lrs == pytest.approx([2e-4] * 5 + [1.5e-4, 1e-4, 0.5e-4, 0.0])
    # --steps alone: the total, of which the second half decays (the reference's 100 + 100 epochs)
    assert tiny_config(steps=8).decay_from == 4 and tiny_config(steps=8).total_steps == 8


def test_exported_model_is_weights_only_and_halves(tmp_path: Path) -> None:
    model = CycleGAN(tiny_config())
    stats = {"t1": {"lo": 1.0, "hi": 2.0, "background": 0.0, "threshold": 0.5},
             "t2": {"lo": 1.0, "hi": 3.0, "background": 0.0, "threshold": 0.5}}
    full = export_model(tmp_path / "m.pt", model.config, model.g_ab, model.g_ba, stats)
    half = export_model(tmp_path / "h.pt", model.config, model.g_ab, model.g_ba, stats, half=True)
    payload = torch.load(half, weights_only=True)
    assert payload["format"] == "medsynth-model" and payload["domains"] == ["t1", "t2"]
    assert all(v.dtype == torch.float16 for v in payload["generators"]["a_to_b"].values() if v.is_floating_point())
    assert half.stat().st_size < 0.7 * full.stat().st_size


def test_histogram_loss_sees_the_histogram_not_the_places() -> None:
    from medsynth.cyclegan import histogram_loss

    torch.manual_seed(0)
    target = torch.rand(2, 1, 16, 16) * 2 - 1
    inside = torch.ones_like(target, dtype=torch.bool)
    inside[:, :, :4] = False
    # the same values elsewhere: no histogram difference, though L1 is large
    shuffled = target.flatten(1)[:, torch.randperm(256)].reshape_as(target)
    assert float(histogram_loss(shuffled, target, torch.ones_like(inside))) == pytest.approx(0.0, abs=1e-7)
    assert float((shuffled - target).abs().mean()) > 0.3
    # a compressed bright end: every value above 0.5 brought down to 0.5
    squashed = target.clamp(max=0.5)
    expected = float(torch.stack([(t[m] - s[m]).abs().mean() for t, s, m in zip(target, squashed, inside)]).mean())
    assert float(histogram_loss(squashed, target, inside)) == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01
    # only the foreground counts, and an image without any adds nothing
    changed = squashed.clone()
    changed[:, :, :4] = 5.0
    assert float(histogram_loss(changed, target, inside)) == pytest.approx(expected, rel=1e-5)
    empty = inside.clone()
    empty[1] = False
    first = float((target[0][inside[0]] - squashed[0][inside[0]]).abs().mean())
    assert float(histogram_loss(squashed, target, empty)) == pytest.approx(first, rel=1e-5)
    assert float(histogram_loss(squashed, target, torch.zeros_like(inside))) == 0.0


def test_paired_histogram_term_is_logged_and_trained() -> None:
    torch.manual_seed(0)
    config = tiny_config(paired=True, lambda_adv=0.0, lambda_cycle=0.0, lambda_histogram=10.0, lr=1e-3)
    model = CycleGAN(config)
    opt_g, opt_d = model.optimizers()
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    a[:, :, :6] = -1.0  # background
    b = torch.where(a > -1, -a, torch.full_like(a, -1.0))
    first = model.train_step(a, b, opt_g, opt_d, target_a=a, target_b=b)
    assert {"paired_a", "paired_b", "hist_a", "hist_b"} <= set(first) and "ssim_a" not in first
    for _ in range(60):
        last = model.train_step(a, b, opt_g, opt_d, target_a=a, target_b=b)
    assert float(last["hist_a"] + last["hist_b"]) < 0.5 * float(first["hist_a"] + first["hist_b"])
    plain = CycleGAN(tiny_config(paired=True, lambda_adv=0.0, lambda_cycle=0.0))
    assert "hist_a" not in plain.train_step(a, b, *plain.optimizers(), target_a=a, target_b=b)


def test_unpaired_slices_join_the_adversarial_and_cycle_terms_not_the_paired_ones() -> None:
    import copy

    torch.manual_seed(0)
    config = tiny_config(paired=True, lambda_adv=1.0, lambda_cycle=10.0, lambda_identity=0.0, lambda_ssim=3.0,
                         lambda_histogram=1.0, pool_size=0)
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    a[:, :, :6] = -1.0
    b = torch.where(a > -1, -a, torch.full_like(a, -1.0))
    # unpaired A slices unlike the pairs' (three of them against two pairs: the batches differ in size)
    extra = torch.where(a[:1].expand(3, -1, -1, -1) > -1, torch.rand(3, 1, 32, 32), torch.full((3, 1, 32, 32), -1.0))

    def step(with_extra: bool) -> tuple[dict[str, torch.Tensor], CycleGAN]:
        torch.manual_seed(1)
        model = copy.deepcopy(base)
        opt_g, opt_d = model.optimizers()
        return model.train_step(a, b, opt_g, opt_d, target_a=a, target_b=b,
                                extra_a=extra if with_extra else None), model

    base = CycleGAN(config)
    plain, _ = step(False)
    mixed, model = step(True)
    # instance norm works per image, so the pairs' translations, and every paired term, are those without extras
    for key in ("paired_a", "paired_b", "ssim_a", "ssim_b", "hist_a", "hist_b"):
        assert torch.equal(plain[key], mixed[key]), key
    assert mixed["_fake_b"].shape == (2, 1, 32, 32)
    # the extras enter the cycle of A, the adversarial term of G_ab and D_A's real images; not B's cycle
    assert not torch.allclose(plain["cycle_a"], mixed["cycle_a"])
    assert not torch.allclose(plain["g_ab"], mixed["g_ab"])
    assert not torch.allclose(plain["d_a"], mixed["d_a"])
    assert torch.equal(plain["cycle_b"], mixed["cycle_b"])
    assert all(torch.isfinite(v).all() for v in mixed.values())
    # and unpaired B slices likewise
    opt_g, opt_d = model.optimizers()
    both = model.train_step(a, b, opt_g, opt_d, target_a=a, target_b=b, extra_a=extra, extra_b=-extra)
    assert {"cycle_a", "cycle_b", "g_ab", "g_ba", "d_a", "d_b", "paired_a"} <= set(both)


def test_lesion_term_is_the_weighted_mean_error_inside_the_lesions_and_trains_them() -> None:
    """``lambda_lesion``: the mean absolute error inside the lesion weights, per direction; zero without a lesion;
    and training with it fits the lesion better than the same steps without it."""
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    a[:, :, :6] = -1.0
    b = torch.where(a > -1, -a, torch.full_like(a, -1.0))
    lesion = torch.zeros(2, 1, 32, 32)
    lesion[0, 0, 10:20, 12:22] = 1.0
    lesion[0, 0, 20, 12:22] = 0.5  # a soft edge counts by its weight
    # the lesion is bright in B where the monotone rest is not: the part a plain L1 gives a few per cent of the pixels
    b_lesion = torch.where(lesion > 0, torch.ones_like(b), b)

    def run(weight: float, steps: int) -> tuple[dict, CycleGAN]:
        torch.manual_seed(0)
        model = CycleGAN(tiny_config(paired=True, lambda_adv=0.0, lambda_cycle=0.0, lambda_lesion=weight, lr=2e-3))
        opt_g, opt_d = model.optimizers()
        for _ in range(steps):
            out = model.train_step(a, b_lesion, opt_g, opt_d, target_a=a, target_b=b_lesion, lesion=lesion)
        return out, model

    first, _ = run(10.0, 1)
    assert {"lesion_a", "lesion_b"} <= set(first)
    # the term logged is of the output before the step's update: the same networks freshly made (same seed)
    torch.manual_seed(0)
    fresh = CycleGAN(tiny_config(paired=True, lambda_adv=0.0, lambda_cycle=0.0, lambda_lesion=10.0))
    with torch.no_grad():
        before_b, before_a = fresh.generators.g_ab(a).float(), fresh.generators.g_ba(b_lesion).float()
    for key, before, target in (("lesion_b", before_b, b_lesion), ("lesion_a", before_a, a)):
        expected = float((lesion * (before - target).abs()).sum() / lesion.sum()) * 10.0
        assert float(first[key]) == pytest.approx(expected, rel=1e-3), key
    # no lesion in the batch: the term is there and zero
    none = fresh.train_step(a, b, *fresh.optimizers(), target_a=a, target_b=b, lesion=torch.zeros_like(lesion))
    assert float(none["lesion_a"]) == float(none["lesion_b"]) == 0.0
    # each step says whether it had a lesion, so that the log averages the term over those steps only
    assert float(first["_steps_lesion_b"]) == float(first["_steps_lesion_a"]) == 1.0
    assert float(none["_steps_lesion_b"]) == float(none["_steps_lesion_a"]) == 0.0
    # off by default, and without weights
    plain = CycleGAN(tiny_config(paired=True, lambda_adv=0.0, lambda_cycle=0.0))
    assert "lesion_b" not in plain.train_step(a, b, *plain.optimizers(), target_a=a, target_b=b, lesion=lesion)
    # trained with the term, the lesion's error falls further than with the plain L1 alone
    inside = lesion[0, 0] == 1

    def lesion_error(model: CycleGAN) -> float:
        with torch.no_grad():
            return float((model.generators.g_ab(a)[0, 0] - b_lesion[0, 0])[inside].abs().mean())

    assert lesion_error(run(10.0, 40)[1]) < lesion_error(run(0.0, 40)[1])
