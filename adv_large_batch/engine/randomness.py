"""Per-example randomness that does not depend on how the global batch is spread.

Dropout masks and random starts must differ between the workers (Horovod ranks) and
tf.distribute replicas of a data-parallel run: otherwise row i of every worker draws the
same mask and start, the dropout noise no longer averages over workers, and P workers
are not one process on the global batch.  Seeding every process with ``--seed`` and
broadcasting the variables (seed-generator states included) makes them identical, so
the randomness here never comes from a running state at all.  Every draw is a pure
function of

    (run seed, stream, batch counter, global micro-batch index, pass)

where the batch counter is the trainer's checkpointed ``batches_seen`` and the global
micro-batch index is the micro-batch's place among all micro-batches of the global
batch (worker r, replica j, micro-batch i: ``(r * replicas + j) * n + i``).  Hence:

* workers and replicas draw different masks and starts (their indices differ);
* a run on P workers x n micro-batches draws exactly what one process accumulating
  P x n micro-batches of the same global batch draws;
* a resumed run draws what the uninterrupted run drew (the counter is checkpointed),
  and a broadcast of the variables cannot make the workers' draws equal.

Keras' dropout layers draw from their own ``SeedGenerator``; ``reseed`` overwrites the
state of every generator of a model with a key of this kind before a forward pass (each
replica writes its own copy: the state variables have no aggregation), so the layers
then draw per-micro-batch, per-pass masks.  Two passes reseeded with the same key draw
the same masks (ScaLA's ``--adv-dropout shared``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from adv_large_batch import keras_internals

# Streams: independent families of draws of one step.
DROPOUT, SCALA_START, CONADV_CURRENT, CONADV_FUTURE = 0, 1, 2, 3


def draw_key(seed: int, stream: int, counter: Any, micro: Any, extra: Any = 0) -> Any:
    """A shape-[2] int32 stateless seed for one family of draws of one micro-batch.

    ``counter`` is the batch counter (the step), ``micro`` the global micro-batch
    index and ``extra`` a further index (the forward pass of the micro-batch).
    Distinct arguments give statistically independent keys (``stateless_fold_in``).
    """
    import tensorflow as tf

    key = tf.constant([seed, stream], tf.int64)
    for data in (counter, micro, extra):
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))
    return key


def seed_generators(model: keras.layers.Layer) -> list[Any]:
    """Every ``keras.random.SeedGenerator`` owned by ``model`` or its sublayers, in a
    fixed order (``keras_internals.flatten_layers``'s: the same in every process)."""
    found: list[Any] = []
    seen: set[int] = set()
    for layer in keras_internals.flatten_layers(model, include_self=True, recursive=True):
        for generator in keras_internals.own_seed_generators(layer):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
    return found


def reseed(generators: Sequence[Any], key: Any) -> None:
    """Set generator ``i``'s state to ``fold_in(key, i)``: the next draws of every layer
    are a function of ``key`` alone."""
    import tensorflow as tf

    for i, generator in enumerate(generators):
        state = tf.random.experimental.stateless_fold_in(key, i)
        generator.state.assign(tf.cast(state, generator.state.dtype))


def replica_slot(worker_rank: int) -> Any:
    """This replica's index among all replicas of all workers (int64)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return int(worker_rank) * replicas + tf.cast(replica, tf.int64)


# ---- the JAX backend: the same keys from jax.random ---------------------------------
def jax_draw_key(seed: int, stream: int, counter: Any, micro: Any, extra: Any = 0) -> Any:
    """``draw_key`` on JAX: uint32 ``[2]`` key data, a pure function of the arguments
    (``jax.random.fold_in``; the values differ from TensorFlow's, the contract is the same)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.wrap_key_data(jnp.asarray([seed, stream], jnp.uint32))
    for data in (counter, micro, extra):
        key = jax.random.fold_in(key, jnp.asarray(data, jnp.uint32))
    return jax.random.key_data(key)


def jax_generator_states(key: Any, count: int) -> list[Any]:
    """The states ``reseed`` would give ``count`` generators on JAX: ``fold_in(key, i)``."""
    import jax

    wrapped = jax.random.wrap_key_data(key)
    return [jax.random.key_data(jax.random.fold_in(wrapped, i)) for i in range(count)]


__all__ = [
    "CONADV_CURRENT",
    "CONADV_FUTURE",
    "DROPOUT",
    "SCALA_START",
    "draw_key",
    "jax_draw_key",
    "jax_generator_states",
    "replica_slot",
    "reseed",
    "seed_generators",
]
