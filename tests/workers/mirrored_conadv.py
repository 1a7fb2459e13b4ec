"""MirroredStrategy worker for tests/conadv/test_conadv_distributed.py: ConAdv on 2 logical CPUs.

Splits the CPU into 2 logical devices; Keras hands replica r the contiguous half r of
each global batch, each replica attacks its own half (its own slot of the
per-replica adversarial buffer) and the optimizer sums the replicas' gradients of
1/2-scaled losses.  The same ``train_and_dump`` as ``hvd_conadv.py``, so the
reference is that script run alone.  Writes ``<out>/mirrored.npz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPLICAS = 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, help="global batch")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume-check", action="store_true", help="run resume_check instead")
    parser.add_argument("--attack-pass", default="separate", choices=("separate", "shared"))
    args = parser.parse_args()
    cpu = tf.config.list_physical_devices("CPU")[0]  # before the TF runtime starts
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )

    from adv_large_batch.engine.distributed import get_backend
    from tests.workers.hvd_conadv import resume_check, train_and_dump

    dist = get_backend("mirrored")
    assert dist.num_replicas_in_sync == REPLICAS, dist
    if args.resume_check:
        resume_check("mirrored", args.out)
        return
    micro = args.batch // REPLICAS
    train_and_dump(dist, args.batch, micro, args.out, "mirrored", attack_pass=args.attack_pass)


if __name__ == "__main__":
    main()
