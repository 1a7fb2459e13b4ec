"""Scratch memory of a micro-batch loop on XLA:CPU, as a loop and unrolled, side by side.

The figures behind ``adv_large_batch.engine.jax_trainer.CPU_UNROLL_LIMIT``: a two-layer
MLP's gradient (512 x 512 weights, 256 rows a micro-batch) summed over ``--length``
micro-batches with ``jax.lax.scan``, compiled once per ``unroll``; printed per unroll:
compile seconds and the compiled program's temporaries (``memory_analysis()``), and their
ratio to the loop's (unroll 1).  Runs on JAX alone (no Keras, no TensorFlow)::

    KERAS_BACKEND=jax .venv/bin/python benchmarks/unroll_memory.py --length 32
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import jax
    import jax.numpy as jnp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=32, help="micro-batches")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--rows", type=int, default=256, help="rows a micro-batch")
    args = p.parse_args()

    def body(carry, x):  # noqa: ANN001, ANN202
        def loss(w1, w2):  # noqa: ANN001, ANN202
            h = jnp.tanh(jnp.tanh(x @ w1) @ w2)
            return jnp.sum(h * h)

        g1, g2 = jax.grad(loss, argnums=(0, 1))(carry["w1"], carry["w2"])
        return {**carry, "g1": carry["g1"] + g1, "g2": carry["g2"] + g2}, None

    carry = {k: jnp.zeros((args.width, args.width)) for k in ("w1", "w2", "g1", "g2")}
    xs = jnp.ones((args.length, args.rows, args.width))
    print(f"[unroll] {jax.default_backend()}, {args.length} micro-batches", flush=True)
    loop_mib = None
    for unroll in sorted({1, 4, 8, args.length}):
        step = jax.jit(lambda c, x, u=unroll: jax.lax.scan(body, c, x, unroll=u))
        t0 = time.perf_counter()
        compiled = step.lower(carry, xs).compile()
        seconds = time.perf_counter() - t0
        mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
        loop_mib = loop_mib or mib
        print(f"[unroll] unroll {unroll:4d}: compile {seconds:5.2f} s, temporaries "
              f"{mib:8.1f} MiB ({mib / loop_mib:5.1f}x the loop's)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
