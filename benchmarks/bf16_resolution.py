"""Does a perturbation of radius eps survive ``mixed_bfloat16``? (ScaLA's eps vs bf16 resolution.)

Under ``mixed_bfloat16`` the token-embedding output e is bfloat16, and ScaLA forms the
perturbed input as ``cast(float32(e) + y, bfloat16)``.  bfloat16 keeps 8 significant bits,
so an entry of magnitude |e| moves only if |y| exceeds half its spacing, about
|e| * 2^-9.  This counts, over the real (non-padding) token-embedding outputs of the first
``--examples`` Rotten Tomatoes training snippets and the bundled MiniLM-L6, the fraction of
entries a corner of the l-inf ball (y = +-eps, random signs) leaves unchanged, for the
paper's radius and larger ones, and for the relative radius (``--adv-radius relative``,
eps times each example's embedding RMS).

    .venv/bin/python benchmarks/bf16_resolution.py [--examples 512]
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from adv_large_batch.data import text_pipeline, text_tasks
from adv_large_batch.models.inputs import PADDING_MASK, TOKEN_IDS
from adv_large_batch.models.text_classifiers import build_network, default_model_path


def unchanged_fraction(e: tf.Tensor, y: tf.Tensor, mask: tf.Tensor) -> float:
    """Fraction of unmasked entries with ``bf16(e + y) == bf16(e)`` (e, y float32)."""
    before = tf.cast(e, tf.bfloat16)
    after = tf.cast(e + y, tf.bfloat16)
    same = tf.cast(tf.equal(before, after), tf.float32) * mask
    return float(tf.reduce_sum(same) / tf.reduce_sum(mask * tf.ones_like(same)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--radii", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2])
    parser.add_argument("--relative-radius", type=float, default=0.1)
    args = parser.parse_args()
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")
    if any(eps <= 0 for eps in args.radii) or args.relative_radius <= 0:
        parser.error(f"radii must be > 0, got {args.radii} and {args.relative_radius}")

    task = text_tasks.load_task("rotten_tomatoes")
    net, tokenizer = build_network(default_model_path(), 2, seed=0)
    feats = text_pipeline.tokenize(task.train.take(args.examples), tokenizer, 64)
    e = tf.cast(net.embed_tokens(tf.constant(feats[TOKEN_IDS])), tf.float32)
    mask = tf.cast(tf.constant(feats[PADDING_MASK]), tf.float32)[..., None]
    signs = tf.sign(tf.random.stateless_uniform(tf.shape(e), [0, 1], -1.0, 1.0))
    live = tf.boolean_mask(tf.abs(e), tf.cast(mask[..., 0], tf.bool))
    median, rms_all = float(np.median(live.numpy())), float(tf.sqrt(tf.reduce_mean(live**2)))
    print(
        f"{args.examples} snippets, {int(tf.reduce_sum(mask))} tokens x {e.shape[-1]}: "
        f"median |e| {median:.4f}, RMS {rms_all:.4f}"
    )
    print(f"{'radius':>24s}  unchanged in bfloat16")
    for eps in args.radii:
        print(f"{eps:>24g}  {unchanged_fraction(e, eps * signs, mask):.4f}")
    rms = tf.sqrt(
        tf.reduce_sum(e**2 * mask, axis=[1, 2], keepdims=True)
        / tf.reduce_sum(mask * tf.ones_like(e), axis=[1, 2], keepdims=True)
    )
    rel = args.relative_radius
    label = f"{rel:g} x example RMS"
    print(f"{label:>24s}  {unchanged_fraction(e, rel * rms * signs, mask):.4f}")


if __name__ == "__main__":
    main()
