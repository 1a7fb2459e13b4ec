"""Horovod worker for tests/conadv/test_conadv_distributed.py: ConAdv (tau = 1) on 2 ranks.

Under ``horovodrun -np 2`` each rank starts from its own weights (seed 10 + rank) that
``BroadcastCallback`` replaces with rank 0's, takes its contiguous half of every global
batch from ``image_pipeline.train_stream`` (real Fashion-MNIST, seeded flip + crop), makes
its *own* adversarial examples (1-step PGD with a random start, split BN) for the next
batch, and the update averages only the weight gradients (one grouped allreduce).

Run alone with ``--batch`` = 2 x per-rank batch and ``--micro-batch`` = per-rank batch
it is the 1-process reference: it accumulates 2 micro-batches that are exactly the
ranks' halves, so every BatchNorm sees the same rows as on the ranks (see the test's
docstring).  ``train_and_dump`` is shared with ``mirrored_conadv.py``.
Writes ``<out>/<name>.npz`` (``name`` = ``rank{r}`` here).  With ``--resume-check`` it
runs ``resume_check`` instead (``train-images`` whole, stopped, resumed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

TRAIN_IMAGES, STEPS, SEED = 128, 4, 7


def per_replica(variable: Any) -> np.ndarray:
    """A per-worker buffer variable; under tf.distribute its replicas' values side by side
    (reading it plainly gives only replica 0's, its ``only_first_replica`` aggregation)."""
    values = getattr(getattr(variable, "_value", None), "values", None)
    if not values:
        return np.asarray(variable.numpy())
    return np.concatenate([np.asarray(v.numpy()) for v in values], axis=1)


def train_and_dump(
    dist: Any,
    batch: int,
    micro_batch: int,
    out: Path,
    name: str,
    fits: int = 1,
    attack_pass: str = "separate",
) -> None:
    """ConAdv on ``batch`` images per worker (per process for tf.distribute), ``STEPS`` steps,
    in one ``fit`` or in ``fits`` consecutive ones (each starts with a broadcast)."""
    import keras

    from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
    from adv_large_batch.data import image_datasets, image_pipeline
    from adv_large_batch.engine.distributed import BroadcastCallback, MetricAverageCallback
    from adv_large_batch.models.image_models import build_image_model
    from adv_large_batch.optimizers import build_optimizer, image_optimizer_config

    data = image_datasets.load_fashion_mnist().limit(TRAIN_IMAGES)
    arrays = image_pipeline.materialize(data.train, data.num_train, data.image_shape)
    augment = image_pipeline.seeded_augmenter("flip_crop", data.image_shape)

    def stream(start: int) -> Any:
        return pair_with_future(
            image_pipeline.train_stream(
                data.train,
                data.num_train,
                batch,
                SEED,
                augment,
                dist.rank,
                dist.size,
                start,
                arrays,
            ),
            1,
        )

    replica_batch = batch // dist.num_replicas_in_sync
    keras.utils.set_random_seed(10 + dist.rank)  # ranks differ until the broadcast
    with dist.scope():
        network = build_image_model("cifar_resnet8", data.image_shape, 10, width=4)
        optimizer = build_optimizer(
            image_optimizer_config(lr=2.0, warmup_steps=1),
            total_steps=STEPS,
            global_batch_size=batch * dist.size,
        )
        model = ConAdv(
            network,
            ConAdvConfig(method="conadv", eps=4.0, staleness=1, attack_pass=attack_pass),
            micro_batch_size=micro_batch,
            backend=dist,
            seed=SEED,
            batch_size=replica_batch,
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=dist.jit_compile,
        )
    callbacks = []
    if dist.name == "horovod":
        callbacks = [BroadcastCallback(dist), MetricAverageCallback(dist)]
    per_fit = STEPS // fits
    stale = []
    for i in range(fits):
        history = model.fit(
            stream(i * per_fit),
            epochs=1,
            steps_per_epoch=per_fit,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
        stale += [history.history["stale_fraction"][0] * per_fit]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / f"{name}.npz",
        *[v.numpy() for v in network.trainable_variables],
        slots=np.concatenate([np.ravel(v.numpy()) for v in optimizer.variables]),
        buffer_images=per_replica(model.buffer_images),
        buffer_labels=per_replica(model.buffer_labels),
        iterations=int(optimizer.iterations.numpy()),
        batches_seen=int(model.batches_seen.numpy()),
        stale_fraction=sum(stale) / STEPS,
        replicas=dist.num_replicas_in_sync,
        workers=dist.size,
    )
    print(f"{name} ({dist.name}): {history.history}", flush=True)


#: ``train-images`` runs of ``resume_check``: 4 steps per epoch, 8 in all, global batch 32.
RESUME_RUN = [
    "train-images",
    "--model", "cifar_resnet8", "--width", "4",
    "--train-limit", "128", "--eval-limit", "32",
    "--batch-size", "32", "--micro-batch-size", "16", "--epochs", "2",
    "--method", "conadv", "--staleness", "1", "--adv-eps", "4",
    "--augment", "flip_crop", "--seed", "3",
    "--checkpoint-every", "1", "--verbose", "0",
]  # fmt: skip


def resume_check(strategy: str, out: Path) -> None:
    """``train-images`` uninterrupted (``out/whole``), then stopped at step 3 (mid-epoch)
    and resumed (``out/cut``), in this process (a barrier between runs: each rank must
    see the chief's checkpoint complete)."""
    from adv_large_batch import cli
    from adv_large_batch.engine.distributed import get_backend

    dist = get_backend(strategy)
    run = [*RESUME_RUN, "--strategy", strategy]
    cut = [*run, "--checkpoint-dir", str(out / "cut")]
    for args in (
        [*run, "--checkpoint-dir", str(out / "whole")],
        [*cut, "--stop-at-step", "3"],
        [*cut, "--resume"],
    ):
        if cli.main(args) != 0:
            raise SystemExit(f"train-images failed: {args}")
        dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, help="per-rank batch")
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume-check", action="store_true", help="run resume_check instead")
    parser.add_argument("--fits", type=int, default=1, help="train in this many fit() calls")
    parser.add_argument("--attack-pass", default="separate", choices=("separate", "shared"))
    args = parser.parse_args()
    from adv_large_batch.engine.distributed import get_backend

    dist = get_backend()  # horovod under horovodrun, else single
    if args.resume_check:
        resume_check(dist.name, args.out)
        return
    train_and_dump(
        dist,
        args.batch,
        args.micro_batch,
        args.out,
        f"rank{dist.rank}",
        args.fits,
        args.attack_pass,
    )


if __name__ == "__main__":
    main()
