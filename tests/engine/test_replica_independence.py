"""Under MirroredStrategy, replica 1's work never waits for replica 0's adversarial work.

``tf.timestamp`` (the step timers) and ``Assert`` are stateful ops without a resource
input; inside ``tf.function`` TensorFlow's automatic control dependencies chain such
ops in program order, and MirroredStrategy traces the replicas one after the other, so
a timer that closes replica 0's attack used to gate replica 1's first timestamp, and
with it replica 1's whole step.  The trainer takes its timestamps out of that chain
(``engine.timing.timestamp``) and has no in-graph assertions; this walks the traced step of
ConAdv (the next-batch attack) and DisAdv (the current-batch attack), whose attacks run
in the step's outer graph.  (ScaLA's ascent runs inside its cond/while bodies, whose
timers were never chained across replicas.)
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from adv_large_batch.engine.distributed import get_backend
    from adv_large_batch.optimizers import LAMB
    dist = get_backend("mirrored")
    CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with dist.scope():
        if sys.argv[1] == "conadv":
            from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
            from tests.conadv.test_conadv import image_batches, tiny_cnn
            model = ConAdv(tiny_cnn(), ConAdvConfig(method="conadv", eps=8, staleness=1),
                           micro_batch_size=2, backend=dist, seed=0, batch_size=4)
            ds = pair_with_future(image_batches(4), 1)
            region, consumer = "next_batch_attack/", "adv_buffer_write/"
        else:  # disadv: the attack of the current batch, before the update
            from adv_large_batch.conadv import ConAdv, ConAdvConfig
            from tests.conadv.test_conadv import image_batches, tiny_cnn
            model = ConAdv(tiny_cnn(), ConAdvConfig(method="disadv", eps=8),
                           micro_batch_size=2, backend=dist, seed=0)
            ds = image_batches(4)
            region, consumer = "current_batch_attack/", None
        model.compile(optimizer=LAMB(1e-3), loss=CE)
    model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)  # builds everything
    strategy = dist.strategy
    spec = strategy.experimental_distribute_dataset(ds).element_spec

    @tf.function
    def step(data):
        return strategy.run(model.train_step, args=(data,))

    graph = step.get_concrete_function(spec).graph

    def ancestors(op):
        seen, stack = set(), [op]
        while stack:
            current = stack.pop()
            for parent in [t.op for t in current.inputs] + list(current.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    stack.append(parent)
        return seen

    ops = graph.get_operations()
    mine = [op for op in ops if op.name.startswith("replica_1/" + region)]
    theirs = {op.name for op in ops if op.name.startswith(region)}
    waits = sorted({op.name for op in mine if ancestors(op) & theirs})
    # The walk sees real dependencies: replica 0's consumer of its own attack (ConAdv's
    # buffer write; ScaLA's conditional update) has the attack among its ancestors.
    if consumer:
        users = [op for op in ops if op.name.startswith(consumer)]
    else:  # DisAdv's conditional update
        users = [op for op in ops if op.type in ("If", "StatelessIf")]
    joined = any(ancestors(op) & theirs for op in users)
    print("RESULT " + json.dumps({"mine": len(mine), "theirs": len(theirs), "waits": waits[:5],
                                  "joined": joined}))
    """
)


@pytest.mark.parametrize("method", ["conadv", "disadv"])
def test_replica_one_does_not_wait_for_replica_zero_attack(method):
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(Path(__file__).parents[2]),
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, method], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["mine"] > 0 and result["theirs"] > 0, result  # both replicas attack
    assert result["joined"], result
    assert result["waits"] == [], f"replica 1's attack waits for replica 0's: {result}"
