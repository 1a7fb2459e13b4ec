"""TensorBoard output of a run: the scalars a user watches, trust ratios, a profile."""

import tensorflow as tf

from adv_large_batch import cli


def scalar_tags(folder):
    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def scalar_values(folder, tag):
    """The values logged under ``tag``, in step order, read back from the event files."""
    found = []
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    number = (
                        float(tf.make_ndarray(value.tensor))
                        if value.HasField("tensor")
                        else value.simple_value
                    )
                    found.append((event.step, number))
    return [number for _, number in sorted(found)]


def test_tensorboard_scalars_trust_ratios_and_profile(tmp_path):
    logdir = tmp_path / "tb"
    args = [
        "finetune",
        "--model",
        "tiny-random",
        "--train-limit",
        "128",
        "--eval-limit",
        "32",
        "--batch-size",
        "32",
        "--micro-batch-size",
        "16",
        "--epochs",
        "1",
        "--max-seq-length",
        "24",
        "--method",
        "scala",
        "--adv-start-epoch",
        "0",
        "--optimizer",
        "lamb",
        "--lr",
        "1e-3",
        "--log-trust-ratios",
        "--profile",
        "--logdir",
        str(logdir),
        "--verbose",
        "0",
    ]
    assert cli.main(args) == 0
    train = scalar_tags(logdir / "train")
    for tag in (
        "epoch_task_loss",
        "epoch_regulariser",
        "epoch_perturbation_linf",
        "epoch_perturbation_l2",
        "epoch_grad_norm",
        "epoch_adv_on",
        "epoch_learning_rate",
        "epoch_examples_per_s",
        "epoch_accuracy",
        "epoch_adv_time_s",
        "epoch_step_time_s",
    ):
        assert tag in train, (tag, sorted(train))
    # ScaLA with the perturbation on from the start: the ascent takes part of every step.
    [adv] = scalar_values(logdir / "train", "epoch_adv_time_s")
    [step] = scalar_values(logdir / "train", "epoch_step_time_s")
    print(f"adv_time_s={adv:.4f} step_time_s={step:.4f}")
    assert 0 < adv < step, (adv, step)
    assert "epoch_accuracy" in scalar_tags(logdir / "validation")
    trust = scalar_tags(logdir / "trust_ratios")
    assert any(t.startswith("trust_ratio/") and "query/kernel" in t for t in trust), sorted(trust)
    assert list((logdir / "train" / "plugins" / "profile").rglob("*.xplane.pb"))
