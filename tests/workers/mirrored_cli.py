"""``adv-large-batch`` on 2 logical CPU devices (``--strategy mirrored`` then has 2 replicas):
``python tests/workers/mirrored_cli.py <command> <flags...>``; exits with the command's status."""

from __future__ import annotations

import sys

import tensorflow as tf

if __name__ == "__main__":
    cpu = tf.config.list_physical_devices("CPU")[0]  # before the TF runtime starts
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from adv_large_batch import cli

    sys.exit(cli.main(sys.argv[1:]))
