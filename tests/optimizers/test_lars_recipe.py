"""train-images' LARS defaults follow the published large-batch recipe (optimizers/recipes.py)."""

import dataclasses

import pytest

from adv_large_batch import cli
from adv_large_batch.commands.train_images import ImageTrainConfig
from adv_large_batch.flags import ConfigError, from_args
from adv_large_batch.optimizers import (
    OptimizerConfig,
    build_optimizer,
    build_schedule,
    resolve_recipe,
    scale_learning_rate,
)
from adv_large_batch.optimizers.recipes import PUBLISHED_LARS, lars_peak_lr, lars_recipe


def test_the_rule_lies_within_or_next_to_every_published_point():
    for batch, (low, high), _, source in PUBLISHED_LARS:
        peak = lars_peak_lr(batch)
        assert 0.9 * low <= peak <= 1.1 * high, (batch, peak, low, high, source)
    assert lars_peak_lr(32768) == pytest.approx(34.0)
    assert lars_peak_lr(98304) == pytest.approx(42.4, abs=0.1)  # the ConAdv authors' 43


def image_configs(*flags):
    args = cli.build_parser().parse_args(["train-images", *flags])
    return from_args(ImageTrainConfig, args), from_args(OptimizerConfig, args)


def peak_of(opt, batch, steps=100):
    """The schedule ``build_optimizer`` builds, and its value at the end of warm-up."""
    peak = scale_learning_rate(opt.lr, batch, opt.base_batch_size, opt.lr_scaling)
    schedule = build_schedule(opt, peak, steps)
    assert build_optimizer(opt, total_steps=steps, global_batch_size=batch) is not None
    return float(schedule(schedule.warmup_steps)), schedule


@pytest.mark.parametrize("batch", [1024, 32768, 98304])
def test_defaults_at_the_papers_batch_sizes(batch):
    """Before: lr 5.0 at 256, scaled linearly: peak 640 at 32K and 1,920 at 96K."""
    run_cfg, opt = image_configs("--batch-size", str(batch), "--epochs", "90")
    resolved = resolve_recipe(opt, run_cfg, steps_per_epoch=40)
    peak, schedule = peak_of(resolved, batch, steps=40 * 90)
    assert peak == pytest.approx(lars_peak_lr(batch), rel=1e-6)
    assert peak < 45
    assert schedule.warmup_steps == round(lars_recipe(batch, 90).warmup_epochs * 40)
    assert schedule.power == 2.0 and schedule.end_learning_rate == pytest.approx(1e-4)
    assert resolved.momentum == 0.9 and resolved.weight_decay == 5e-5
    assert run_cfg.label_smoothing == 0.1


def test_an_explicit_lr_still_wins():
    run_cfg, opt = image_configs("--batch-size", "4096", "--lr", "3", "--base-batch-size", "1024")
    resolved = resolve_recipe(opt, run_cfg, steps_per_epoch=10)
    peak, _ = peak_of(resolved, 4096)
    assert peak == pytest.approx(3 * 2.0)  # sqrt(4096 / 1024)
    run_cfg, opt = image_configs("--batch-size", "4096", "--warmup-epochs", "1")
    assert resolve_recipe(opt, run_cfg, steps_per_epoch=10).warmup_steps == 10


def test_warmup_is_at_most_half_a_short_run():
    assert lars_recipe(32768, epochs=10).warmup_epochs == 5.0


def test_the_recipe_is_lars_only():
    run_cfg, opt = image_configs("--optimizer", "sgd")
    with pytest.raises(ConfigError, match="needs an explicit --lr"):
        resolve_recipe(opt, run_cfg, steps_per_epoch=10)
    with pytest.raises(ConfigError, match="--lr is required"):
        build_optimizer(dataclasses.replace(opt, optimizer="sgd"), 10, 256)
