"""One Keras backend's side of ``bench_image_backends.py``: a persistent process (its backend
from ``KERAS_BACKEND``) that builds one ``ConAdv`` trainer per schedule on a CIFAR ResNet,
steps each through the warm-up, then answers JSON lines on stdin:

    {"op": "run", "variant": "shared", "count": 3}  ->  {"seconds": ..., "cpu_s": ...}

Every schedule (``SCHEDULES``) is ``adv_large_batch.conadv.ConAdv`` on a fresh
``build_image_model(--model, --image-shape, 10, width=--width)`` (split BN for the
adversarial ones; ``keras.utils.set_random_seed(0)`` before each build), LARS(0.1), sparse
cross-entropy, per-device batch ``--batch`` in micro-batches of ``--micro-batch-size`` (0:
none).  Its input is ``--batches-per-variant`` fixed in-memory elements of
``data/numpy_images.image_batches`` over seeded random uint8 images (so float32 in [0, 1],
the same values on both backends, no TensorFlow input pipeline): ``(x, y)`` for baseline and
DisAdv, the paired ``({"images", "next_images", "next_labels"}, y)`` for ConAdv with
staleness tau; the worker cycles through them with ``train_on_batch``.

The warm-up steps each schedule ``max(--warmup, tau + 1, batches)`` times, so the compile /
trace, the optimizer's slots and the first tau (buffer-filling, DisAdv-like) steps of a
buffered schedule are never timed; its seconds (compile included) are in the ready line.
Then every schedule takes one more untimed step once all are built (on TensorFlow the
first call of a trainer after another trainer was built retraces: ~1 s more).
A ``run`` ends with the loss on the host (``train_on_batch`` returns NumPy), so its
seconds cover finished steps.  ``--no-tensorflow`` makes importing TensorFlow fail (the
JAX worker: its path never needs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
from bench_common import serve_steps  # this folder is on the path of a script run here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: schedule -> ConAdvConfig knobs (eps 3 pixels, PGD-1, the library's defaults otherwise)
SCHEDULES: dict[str, dict[str, Any]] = {
    "baseline": {"method": "baseline"},
    "disadv": {"method": "disadv"},
    "separate": {"method": "conadv", "staleness": 1},
    "shared": {"method": "conadv", "attack_pass": "shared"},
    "separate-tau2": {"method": "conadv", "staleness": 2},
}


def build(
    knobs: dict[str, Any],
    model: str,
    image_shape: tuple[int, ...],
    batch: int,
    micro_batch_size: int | None,
    num_classes: int = 10,
    width: int = 16,
) -> Any:
    """A compiled ``ConAdv`` trainer of one schedule (``knobs``: ``ConAdvConfig``'s, eps 3
    pixels unless given) on a fresh ``build_image_model(model, ...)``, LARS(0.1)."""
    import keras

    from adv_large_batch.conadv import ConAdv, ConAdvConfig
    from adv_large_batch.models.image_models import build_image_model
    from adv_large_batch.optimizers import LARS

    config = ConAdvConfig(**{"eps": 3.0, **knobs})
    keras.utils.set_random_seed(0)
    network = build_image_model(
        model, tuple(image_shape), num_classes, split_bn=config.adversarial, width=width
    )
    trainer = ConAdv(
        network, config, micro_batch_size=micro_batch_size or None, seed=0,
        batch_size=batch if config.buffered else None,
    )  # fmt: skip
    trainer.compile(
        optimizer=LARS(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return trainer


def elements(
    staleness: int, batch: int, count: int, image_shape: tuple[int, ...], num_classes: int = 10
) -> list[tuple]:
    """``count`` training elements of ``batch`` seeded random images in [0, 1]
    (``numpy_images.image_batches``; paired for ``staleness`` >= 1)."""
    from adv_large_batch.data.numpy_images import image_batches

    rows = batch * (count + staleness)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(rows, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=rows).astype(np.int32)
    stream = image_batches(images, labels, batch, seed=0, staleness=staleness)
    return [next(stream) for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="+", required=True, choices=list(SCHEDULES))
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-shape", type=int, nargs=3, default=[32, 32, 3])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=128)
    p.add_argument("--batches-per-variant", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-tensorflow", action="store_true")
    args = p.parse_args()
    if args.no_tensorflow:
        sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
        import no_tensorflow

        no_tensorflow.block()
    import keras

    models, data, cursor, warmup_s = {}, {}, {}, {}
    for variant in args.variants:
        knobs = SCHEDULES[variant]
        model = build(knobs, args.model, args.image_shape, args.batch, args.micro_batch_size,
                      width=args.width)  # fmt: skip
        tau = model.config.staleness if model.config.buffered else 0
        batches = elements(tau, args.batch, args.batches_per_variant, args.image_shape)
        models[variant], data[variant] = model, batches
        t0 = time.perf_counter()
        steps = max(args.warmup, tau + 1, len(data[variant]))
        for i in range(steps):  # compile, slots, the buffer's first tau steps: never timed
            model.train_on_batch(*data[variant][i % len(data[variant])])
        warmup_s[variant] = time.perf_counter() - t0
        cursor[variant] = steps
    for variant, model in models.items():  # TensorFlow's first call of a trainer after
        batches = data[variant]  # another one was built takes ~1 s more (a retrace)
        model.train_on_batch(*batches[cursor[variant] % len(batches)])
        cursor[variant] += 1
    programs = {v: getattr(m, "compiled_programs", None) for v, m in models.items()}
    print(json.dumps({"ready": True, "backend": keras.config.backend(), "warmup_s": warmup_s,
                      "programs": programs}), flush=True)  # fmt: skip
    serve_steps(models, data, cursor)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
