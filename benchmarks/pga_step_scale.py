"""Which PGA step does something at the paper's radius? Raw vs normalised ascent.

ScaLA's step is y1 = clip_eps(y0 + rho * grad_y r). At eps = 1e-5 the raw
gradient of r is tiny, so rho * grad stays far inside the ball and y1 is almost
y0; a normalised step (SMART: l-inf, FreeLB: l2) of size rho lands on the
boundary. This script measures, on real data and the real pretrained encoder,
for each step rule: |grad| (max), how far y moved, ||y1||_inf, and r(y0) -> r(y1)
with dropout off so r is the effect of the perturbation alone.

    .venv/bin/python benchmarks/pga_step_scale.py [--batches 4] [--precision mixed_bfloat16]
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from adv_large_batch.data import text_pipeline, text_tasks
from adv_large_batch.models.inputs import PADDING_MASK, TOKEN_IDS, trim_to_longest
from adv_large_batch.models.text_classifiers import build_network, default_model_path
from adv_large_batch.scala import perturbation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", type=float, default=1e-5)
    parser.add_argument("--step", type=float, default=1e-4)
    parser.add_argument(
        "--precision", default="float32", choices=("float32", "mixed_float16", "mixed_bfloat16")
    )
    args = parser.parse_args()
    import keras

    keras.mixed_precision.set_global_policy(args.precision)

    task = text_tasks.load_task("rotten_tomatoes")
    split = task.train.take(args.batches * args.batch_size)
    net, tokenizer = build_network(default_model_path(), 2, seed=0)
    feats = text_pipeline.tokenize(split, tokenizer, 64)
    rows = {norm: [] for norm in perturbation.STEP_NORMS}
    for b in range(args.batches):
        sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
        x = trim_to_longest({k: tf.constant(v[sl]) for k, v in feats.items()})
        e = net.embed_tokens(x[TOKEN_IDS])
        clean = net.logits_from_embeddings(e, x, training=False)

        def r_of(y):
            perturbed = tf.cast(tf.cast(e, tf.float32) + y, e.dtype)  # as ScaLA does
            return perturbation.symmetric_kl_from_logits(
                clean, net.logits_from_embeddings(perturbed, x)
            )

        y0 = perturbation.random_start(tf.shape(e), args.eps, "uniform", seed=tf.constant([b, 7]))
        clean = tf.cast(clean, tf.float32)
        y0 = perturbation.mask_padding(y0, x[PADDING_MASK])
        with tf.GradientTape() as tape:
            tape.watch(y0)
            r0 = r_of(y0)
        grad = tape.gradient(r0, y0)
        for norm in perturbation.STEP_NORMS:
            y1 = perturbation.ascent_step(y0, grad, args.step, args.eps, norm, x[PADDING_MASK])
            rows[norm].append(
                [
                    float(tf.reduce_max(tf.abs(grad))),
                    float(tf.reduce_max(tf.abs(y1 - y0))),
                    float(tf.reduce_max(tf.abs(y1))),
                    float(r0),
                    float(r_of(y1)),
                ]
            )
    print(
        f"eps={args.eps} rho={args.step} batches={args.batches}x{args.batch_size} "
        f"precision={args.precision} (dropout off)"
    )
    print(
        f"{'step':6s} {'max|grad|':>10s} {'max|y1-y0|':>11s} {'|y1|_inf':>9s} "
        f"{'r(y0)':>10s} {'r(y1)':>10s} {'r(y1)/r(y0)':>12s}"
    )
    for norm, vals in rows.items():
        g, moved, linf, r0, r1 = np.mean(vals, axis=0)
        print(
            f"{norm:6s} {g:10.3e} {moved:11.3e} {linf:9.2e} {r0:10.3e} {r1:10.3e} {r1 / r0:12.2f}"
        )


if __name__ == "__main__":
    main()
