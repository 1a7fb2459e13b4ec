"""The accelerator check of the JAX backend: ScaLA fine-tuning steps in bf16 on whatever
devices JAX sees (a GPU, a TPU; on a CPU only with ``--smoke``), no TensorFlow needed.

For each model (the bundled all-MiniLM-L6-v2 with its real weights, and a BERT-base-shaped
encoder with random weights: 12 layers, 768 wide, 12 heads, 3,072 FFN), each global batch
(32 and 1,024, the latter in micro-batches of ``--micro-batch-size``) and each method
(baseline, ScaLA PGA-1 from step 0), under ``mixed_bfloat16`` with LAMB, it compiles the
train step, runs ``--warmup`` steps, times ``--steps`` steps and prints:

* examples/s;
* model FLOP utilisation (MFU): the model's FLOPs per example (6 x non-embedding
  parameters x tokens + 12 x layers x tokens^2 x width for attention, forward and
  backward of ONE pass: what the baseline needs) x examples/s over the chip's bf16 peak;
* hardware FLOP utilisation (HFU): the step's own FLOP count (XLA's ``cost_analysis`` of
  the lowered step, its micro-batch loop body counted once per micro-batch: every pass
  ScaLA makes, the ascent included) x steps/s over the peak.

The bf16 peak comes from ``--peak-tflops`` or the device kind (H100/H200: 989 TFLOP/s dense,
A100: 312, v5e: 197, v4: 275).  The whole check stops starting new configurations after
``--budget-s`` seconds.  ``scripts/accelerator_check.sh`` installs the carried wheels and
runs this; ``--json-out`` keeps the figures.

    python benchmarks/accelerator_check.py --json-out accel.json       # on the GPU machine
    KERAS_BACKEND=jax python benchmarks/accelerator_check.py --smoke   # CPU: does it run?
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "TPU v5 lite": 197.0, "TPU v4": 275.0}
BERT_BASE = {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072}
TINY = {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 128}


def peak_tflops(args: argparse.Namespace) -> float | None:
    import jax

    if args.peak_tflops:
        return args.peak_tflops
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)


def network(name: str, seq: int, smoke: bool) -> Any:
    import keras_hub

    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier

    if name == "minilm":
        return PerturbableBertClassifier.from_preset(
            "bundled", num_classes=2, sequence_length=seq, seed=0
        )
    shape = TINY if smoke else BERT_BASE
    backbone = keras_hub.models.BertBackbone(vocabulary_size=30522, max_sequence_length=512,
                                             dropout=0.1, **shape)  # fmt: skip
    return PerturbableBertClassifier(backbone, num_classes=2)


def model_flops_per_example(net: Any, seq: int) -> float:
    """Forward + backward of one pass: 6 N T (non-embedding weights) + attention."""
    backbone = net.backbone
    import numpy as np

    def size(variables: Any) -> int:
        return sum(int(np.prod(v.shape)) for v in variables)

    n = size(net.trainable_weights) - size(backbone.token_embedding.weights)
    return 6.0 * n * seq + 12.0 * backbone.num_layers * seq * seq * backbone.hidden_dim


def compiled_flops(model: Any, x: Any, y: Any) -> float | None:
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    lowered = jax.jit(model.train_step).lower(state, (x, y))  # no second compile
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    # XLA counts a loop's body once: the micro-batch loop runs batch / micro times
    rows = len(y)
    return flops * (rows // (model.micro_batch_size or rows)) or None


def one_config(name: str, batch: int, method: str, args: argparse.Namespace) -> dict:
    import keras
    import numpy as np

    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    net = network(name, args.seq_len, args.smoke)
    micro = min(batch, args.micro_batch_size)
    model = ScaLA(net, ScaLAConfig(method=method, start_step=0), micro_batch_size=micro, seed=0)
    model.compile(optimizer=LAMB(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))  # fmt: skip
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1000, 29000, size=(batch, args.seq_len)).astype("int32"),
        "segment_ids": np.zeros((batch, args.seq_len), "int32"),
        "padding_mask": np.ones((batch, args.seq_len), "int32"),
    }
    y = rng.integers(0, 2, size=batch).astype("int32")
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        logs = model.train_on_batch(x, y, return_dict=True)
    float(logs["loss"])  # on the host: the steps are done
    step_s = (time.perf_counter() - t0) / args.steps
    flops = compiled_flops(model, x, y)
    row = {"model": name, "batch": batch, "micro_batch": micro, "method": method,
           "examples_per_s": batch / step_s, "step_s": step_s, "compile_s": compile_s,
           "model_flops_per_step": model_flops_per_example(net, args.seq_len) * batch,
           "compiled_flops_per_step": flops, "loss": float(logs["loss"])}  # fmt: skip
    peak = peak_tflops(args)
    if peak:
        row["mfu"] = row["model_flops_per_step"] / step_s / (peak * 1e12)
        row["hfu"] = None if flops is None else flops / step_s / (peak * 1e12)
    return row


def main() -> None:
    import jax
    import keras

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["minilm", "bert-base"])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 1024])
    p.add_argument("--methods", nargs="+", default=["baseline", "scala"])
    p.add_argument("--micro-batch-size", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--smoke", action="store_true", help="tiny shapes: check it runs (CPU)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.smoke:
        args.batches, args.steps, args.warmup, args.seq_len = [8, 32], 2, 1, 32
        args.micro_batch_size = 8
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    print(f"[accel] jax {jax.__version__} keras {keras.__version__} devices {jax.devices()} "
          f"peak {peak_tflops(args)} TFLOP/s bf16", flush=True)  # fmt: skip
    start, rows = time.perf_counter(), []
    for name in args.models:
        for batch in args.batches:
            for method in args.methods:
                if time.perf_counter() - start > args.budget_s:
                    print(f"[accel] budget spent: skipped {name} {batch} {method}", flush=True)
                    continue
                row = one_config(name, batch, method, args)
                rows.append(row)
                util = ""
                if "mfu" in row:
                    util = f" MFU {row['mfu']:.1%}"
                    util += "" if row["hfu"] is None else f" HFU {row['hfu']:.1%}"
                print(f"[accel] {name:9} batch {batch:5} ({row['micro_batch']}/micro) {method:8} "
                      f"{row['examples_per_s']:9.1f} ex/s{util} compile {row['compile_s']:.0f} s",
                      flush=True)  # fmt: skip
                keras.backend.clear_session()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"devices": [str(d) for d in jax.devices()], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
