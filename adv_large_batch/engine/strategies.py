"""The names of the data-parallel strategies (``--strategy``), importable on any backend.

``engine/distributed.py`` (TensorFlow: single, Horovod, tf.distribute) implements them;
on the JAX backend only ``auto`` and ``single`` run (``engine/jax_distribution.py``) and
``TENSORFLOW_STRATEGIES`` are refused before any work (``commands/jax_checks.py``).
"""

from __future__ import annotations

#: ``distributed.get_backend``'s kinds (the choices of ``--strategy``).
BACKEND_KINDS = ("auto", "single", "horovod", "mirrored", "tpu", "multiworker")

#: The kinds that are Horovod or ``tf.distribute`` strategies (TensorFlow only).
TENSORFLOW_STRATEGIES = ("horovod", "mirrored", "tpu", "multiworker")

MULTIWORKER_REFUSED = (
    "--strategy multiworker (tf.distribute.MultiWorkerMirroredStrategy) is not supported: "
    "Keras 3.15's model.fit fails under it with more than one worker (keras-team/keras#20585, "
    "'Invalid reduction dimension 0 for input with 0 dimensions'); run one process per GPU "
    "with horovodrun and --strategy horovod (see horovodrun_scripts/), or --strategy mirrored "
    "for the GPUs of one machine"
)

__all__ = ["BACKEND_KINDS", "MULTIWORKER_REFUSED", "TENSORFLOW_STRATEGIES"]
