"""What ScaLA's regulariser measures at the paper's radius: the perturbation, or dropout?

ScaLA's train step (``adv_large_batch/scala.py``) runs the clean pass, the ascent and
the adversarial pass all with dropout on, each with its own dropout mask, as SMART
does.  With eps = 1e-5 the perturbation barely moves the logits, so most of the
symmetric KL between the clean and the adversarial logits may be the difference of
two dropout masks (an R-Drop-like consistency term).  This script splits it, on one
fixed batch of a finished run's checkpoint, averaged over ``--draws`` draws:

* ``task``: the cross-entropy with dropout (the loss the regulariser is added to);
* ``dropout only``: r between two dropout passes with no perturbation;
* ``scala (train)``: r exactly as the train step computes it (dropout on, random
  start + PGA-K);
* ``scala (no dropout)``: the same ascent and r with dropout off everywhere: the
  perturbation's own effect.

    .venv/bin/python benchmarks/regulariser_magnitude.py \\
        --checkpoint runs/repro/scala_checkpoints/lamb-512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any


def measure(checkpoint: str, batch_size: int, draws: int, seed: int) -> dict[str, Any]:
    """Medians over ``draws`` of the task loss and the three regulariser values."""
    import keras
    import tensorflow as tf

    from adv_large_batch.commands import sharpness
    from adv_large_batch.engine import checkpointing
    from adv_large_batch.models.inputs import PADDING_MASK, TOKEN_IDS
    from adv_large_batch.scala import ScaLAConfig, perturbation

    path, meta = sharpness.locate(checkpoint)
    problem = sharpness._text_problem(
        meta, sharpness.SharpnessConfig(checkpoint=checkpoint, batch_size=batch_size, seed=seed)
    )
    net, x, labels = problem.network, problem.inputs, problem.labels
    checkpointing.restore_variables(
        path, [v for v in net.weights if keras.backend.is_float_dtype(v.dtype)]
    )
    ascent = ("eps", "step_size", "steps", "step_norm", "init", "noise_scale")
    cfg = ScaLAConfig(**{k: v for k, v in meta.adversarial.items() if k in ascent})
    e = net.embed_tokens(x[TOKEN_IDS])
    mask = x[PADDING_MASK]

    def r_between(target: tf.Tensor, logits: tf.Tensor) -> float:
        return float(perturbation.symmetric_kl_from_logits(target, logits))

    def scala_r(training: bool, draw: int) -> float:
        target = tf.stop_gradient(net.logits_from_embeddings(e, x, training=training))

        def regulariser_of(y: tf.Tensor) -> tf.Tensor:
            logits = net.logits_from_embeddings(e + y, x, training=training)
            return perturbation.symmetric_kl_from_logits(target, logits)

        y0 = perturbation.random_start(
            tf.shape(e), cfg.eps, cfg.init, cfg.noise_scale, tf.constant([seed, draw], tf.int64)
        )
        delta, _ = perturbation.projected_gradient_ascent(
            regulariser_of, y0, cfg.step_size, cfg.eps, cfg.steps, cfg.step_norm, mask
        )
        return r_between(target, net.logits_from_embeddings(e + delta, x, training=training))

    names = ("task", "dropout only", "scala (train)", "scala (no dropout)")
    rows: dict[str, list[float]] = {name: [] for name in names}
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for draw in range(draws):
        a = net.logits_from_embeddings(e, x, training=True)
        b = net.logits_from_embeddings(e, x, training=True)
        rows["task"].append(float(xent(labels, a)))
        rows["dropout only"].append(r_between(a, b))
        rows["scala (train)"].append(scala_r(True, draw))
        rows["scala (no dropout)"].append(scala_r(False, draw))
    return {
        "checkpoint": path,
        "batch_size": batch_size,
        "draws": draws,
        "eps": cfg.eps,
        "step_size": cfg.step_size,
        "steps": cfg.steps,
        "medians": {k: statistics.median(v) for k, v in rows.items()},
        "values": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="runs/repro/scala_checkpoints/lamb-512")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--draws", args.draws)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    result = measure(args.checkpoint, args.batch_size, args.draws, args.seed)
    print(f"checkpoint {result['checkpoint']}, batch {args.batch_size}, {args.draws} draws")
    print(f"eps {result['eps']}, step {result['step_size']}, K {result['steps']}")
    print("| quantity | median |\n|---|---|")
    for name, value in result["medians"].items():
        print(f"| {name} | {value:.3g} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
