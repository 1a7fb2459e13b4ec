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

ConAdv part (``--parts ... conadv``): ResNet-50 (``build_image_model("resnet50", (224,
224, 3), 1000)``, split BN) on seeded random images in [0, 1], per-device batch
``--conadv-batch`` (256; micro-batches of ``--conadv-micro-batch-size``, 0 = none),
``mixed_bfloat16``, LARS, one ``ConAdv`` trainer per schedule (``--conadv-schedules``:
DisAdv, ConAdv shared, ConAdv separate tau = 1, baseline; the inputs already on the device,
paired t / t + tau for ConAdv, as ``bench_image_backends.py`` builds them).  Per schedule:
the first step (compile), ``--warmup`` steps (the buffer's first tau steps among them),
then ``--steps`` timed steps; it prints

* images/s (the b clean images of a step per step time);
* MFU: model FLOPs per step x steps/s over the bf16 peak, where the model FLOPs per step
  are F x (3 x update rows + 2 x attack rows x PGD steps): F = the network's forward FLOPs
  per image from XLA's ``cost_analysis`` of the lowered forward (a straight-line program;
  a count of the conv / dense layers' multiply-adds where that is unavailable: the line
  says which), a forward + backward = 3 F per row, PGD's forward + input backward = 2 F
  (no weight gradient).  Update rows: b (baseline), 2b ([clean; adversarial]); attack
  rows: b for DisAdv and separate, 0 for baseline and shared (its examples come out of the
  update's own backward);
* with ``--conadv-xla-flops``, XLA's own count of the lowered step (loop bodies counted
  once, so x micro-batches; both branches of the buffered schedules' start-up ``cond``
  counted: an over-count by one attack for separate and one FGSM pass for shared);
* the step-time ratios shared / DisAdv and separate / DisAdv.  separate runs DisAdv's
  FLOPs with the next batch's attack independent of the update, so separate / DisAdv
  well below 1 means the attack overlapped the update on the device; about 1 means it
  ran after it.  ``--trace-dir`` also writes a ``jax.profiler`` trace of two separate
  steps (TensorBoard's profile plugin / Perfetto) and reads back from it how long two or
  more of the device's streams ran at once (``stream_overlap``).

The bf16 peak comes from ``--peak-tflops`` or the device kind (H100/H200: 989 TFLOP/s dense,
A100: 312, v5e: 197, v4: 275).  The whole check starts no configuration after
``--budget-s`` seconds, and the ScaLA part none after ``--budget-s`` minus
``--conadv-reserve-s`` when the ConAdv part follows (so the whole run stays near 5 minutes
on one H200: each configuration's compile is most of its time).
``scripts/accelerator_check.sh`` installs the carried wheels and runs this; ``--json-out``
keeps the figures.

    python benchmarks/accelerator_check.py --json-out accel.json       # on the GPU machine
    python benchmarks/accelerator_check.py --parts conadv --trace-dir /tmp/trace
    KERAS_BACKEND=jax python benchmarks/accelerator_check.py --smoke --no-tensorflow  # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
# appended: an installed wheel (the device machine) comes first; its adv_large_batch has the
# models/ subpackage, which the repository's own folder has only through an editable install
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.dirname(os.path.abspath(__file__))
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


# ---- the ConAdv part ---------------------------------------------------------------------------
#: schedule -> (update rows, attack rows) per clean row of the batch
PASSES = {"baseline": (1, 0), "disadv": (2, 1), "separate": (2, 1), "shared": (2, 0),
          "separate-tau2": (2, 1)}  # fmt: skip


def conv_dense_flops(net: Any) -> float:
    """2 x the multiply-adds of the network's conv and dense layers per image (the output's
    spatial positions x the kernel's size): the fallback forward count."""
    import numpy as np

    total = 0.0
    for layer in net.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        out = tuple(layer.output.shape)
        spatial = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        total += 2.0 * float(np.prod(kernel.shape)) * spatial
    return total


def forward_flops(net: Any, image_shape: tuple[int, ...]) -> tuple[float, str]:
    """(forward FLOPs per image, where the figure comes from): XLA's ``cost_analysis`` of
    the lowered inference forward on 2 images (no loop, no branch: exact for XLA's
    count), else ``conv_dense_flops``."""
    import jax
    import numpy as np

    x = np.zeros((2, *image_shape), "float32")
    trainable = [v.value for v in net.trainable_variables]
    non_trainable = [v.value for v in net.non_trainable_variables]

    def forward(trainable: Any, non_trainable: Any, x: Any) -> Any:
        return net.stateless_call(trainable, non_trainable, x, training=False)[0]

    try:
        cost = jax.jit(forward).lower(trainable, non_trainable, x).cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float((cost or {}).get("flops", 0.0)) / 2
        if flops > 0:
            return flops, "XLA cost_analysis of the lowered forward"
    except Exception as err:  # noqa: BLE001  (any backend without cost analysis)
        print(f"[accel] no cost_analysis of the forward ({err!r}): counting conv/dense layers")
    return conv_dense_flops(net), "conv/dense multiply-adds x 2"


def xla_step_flops(model: Any, x: Any, y: Any) -> float | None:
    """XLA's count of the lowered train step (no second compile), x the micro-batches:
    XLA counts a loop body once; both branches of a ``cond`` are counted."""
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    cost = jax.jit(model.train_step).lower(state, (x, y)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", 0.0))
    rows = len(y)
    return flops * (rows // (model.micro_batch_size or rows)) or None


def conadv_config(schedule: str, args: argparse.Namespace, trace: bool) -> dict:
    """One schedule of the ConAdv part: compile, warm up, time; a row of figures."""
    import jax
    import keras
    from image_backend_worker import SCHEDULES, build, elements

    shape = tuple(args.conadv_image_shape)
    b, micro = args.conadv_batch, args.conadv_micro_batch_size
    model = build(SCHEDULES[schedule], args.conadv_model, shape, b, micro,
                  num_classes=args.conadv_classes, width=args.conadv_width)  # fmt: skip
    tau = model.config.staleness if model.config.buffered else 0
    data = jax.device_put(elements(tau, b, 2, shape, args.conadv_classes))  # on the device once
    t0 = time.perf_counter()
    model.train_on_batch(*data[0])
    compile_s = time.perf_counter() - t0
    step = 1
    for _ in range(max(args.warmup, tau + 1)):
        model.train_on_batch(*data[step % 2])
        step += 1
    t0 = time.perf_counter()
    for _ in range(args.steps):
        logs = model.train_on_batch(*data[step % 2], return_dict=True)
        step += 1
    float(logs["loss"])  # on the host: the steps are done
    step_s = (time.perf_counter() - t0) / args.steps
    if trace:  # after the timing: a profiler that fails (no CUPTI) costs no figure
        os.makedirs(args.trace_dir, exist_ok=True)
        try:
            with jax.profiler.trace(args.trace_dir):
                for _ in range(2):
                    logs = model.train_on_batch(*data[step % 2], return_dict=True)
                    step += 1
                float(logs["loss"])
        except Exception as err:  # noqa: BLE001
            print(f"[accel] no jax.profiler trace: {err!r}", flush=True)
    f, source = forward_flops(model.network, shape)
    update, attack = PASSES[schedule]
    flops = f * b * (3 * update + 2 * attack * model.config.steps)
    row = {"part": "conadv", "model": args.conadv_model, "image_shape": list(shape),
           "batch": b, "micro_batch": micro or None, "schedule": schedule,
           "images_per_s": b / step_s, "step_s": step_s, "compile_s": compile_s,
           "forward_flops_per_image": f, "forward_flops_source": source,
           "model_flops_per_step": flops, "loss": float(logs["loss"]),
           "policy": keras.mixed_precision.global_policy().name}  # fmt: skip
    if args.conadv_xla_flops:
        row["xla_step_flops"] = xla_step_flops(model, *data[0])
    peak = peak_tflops(args)
    if peak:
        row["mfu"] = flops / step_s / (peak * 1e12)
    return row


def _busy(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def stream_overlap(trace_dir: str) -> dict | None:
    """How much the device's streams ran at the same time in the newest trace under
    ``trace_dir`` (its ``*.trace.json.gz``): per device process (``/device:...``), the
    busy time of each ``Stream`` thread (the union of its events), their sum, the busy
    time of all of them together, and ``overlap_ms`` = sum - together (time during which
    two or more streams ran).  One stream, or overlap 0: nothing of the attack ran beside
    the update.  None when the trace has no device streams (a CPU run)."""
    import glob
    import gzip

    found = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
    if not found:
        return None
    with gzip.open(found[-1]) as f:
        events = json.load(f)["traceEvents"]
    names = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name")
    }
    devices = {pid for (pid, tid), n in names.items() if tid is None and "/device:" in n}
    streams: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        key = (e.get("pid"), e.get("tid"))
        if e.get("ph") != "X" or key[0] not in devices or "Stream" not in names.get(key, ""):
            continue
        label = f"{names[(key[0], None)]} {names[key]}"
        streams.setdefault(label, []).append((e["ts"], e["ts"] + e.get("dur", 0)))
    if not streams:
        return None
    each = {label: _busy(iv) / 1e3 for label, iv in streams.items()}
    together = _busy([i for iv in streams.values() for i in iv]) / 1e3
    total = sum(each.values())
    return {"streams_ms": each, "sum_ms": total, "together_ms": together,
            "overlap_ms": total - together, "trace": found[-1]}  # fmt: skip


def conadv_part(args: argparse.Namespace, start: float) -> tuple[list[dict], dict]:
    """Every schedule of ``--conadv-schedules`` in turn (none started after ``--budget-s``),
    then the step-time ratios against DisAdv."""
    import keras

    rows = []
    for schedule in args.conadv_schedules:
        if time.perf_counter() - start > args.budget_s:
            print(f"[accel] budget spent: skipped conadv {schedule}", flush=True)
            continue
        trace = bool(args.trace_dir) and schedule == "separate"
        row = conadv_config(schedule, args, trace)
        rows.append(row)
        util = f" MFU {row['mfu']:.1%}" if "mfu" in row else ""
        if row.get("xla_step_flops"):
            over = row["xla_step_flops"] / row["model_flops_per_step"]
            util += f" (XLA's step count / model FLOPs {over:.2f})"
        print(f"[accel] conadv {row['model']} {row['image_shape'][0]} px batch {row['batch']} "
              f"({row['micro_batch'] or 'no'} micro) {schedule:13} {row['images_per_s']:9.1f} "
              f"img/s{util} compile {row['compile_s']:.0f} s", flush=True)  # fmt: skip
        if trace:
            overlap = stream_overlap(args.trace_dir)
            row["stream_overlap"] = overlap
            print(f"[accel] jax.profiler trace of 2 separate steps in {args.trace_dir}", flush=True)
            if overlap is None:
                print("[accel] the trace has no device streams (a CPU run?)")
            else:
                print(
                    f"[accel] separate's device streams: {len(overlap['streams_ms'])} busy "
                    f"{overlap['sum_ms']:.1f} ms in all, {overlap['together_ms']:.1f} ms "
                    f"together: {overlap['overlap_ms']:.1f} ms with two or more streams "
                    "running (0: the attack did not run beside the update)",
                    flush=True,
                )
        keras.backend.clear_session()
    if rows:
        f = rows[0]
        print(f"[accel] conadv FLOPs: forward {f['forward_flops_per_image'] / 1e9:.4g} GFLOP/"
              f"image ({f['forward_flops_source']}); per step F x (3 x update rows + 2 x "
              "attack rows)", flush=True)  # fmt: skip
    step = {r["schedule"]: r["step_s"] for r in rows}
    ratios = {f"{s}/disadv": step[s] / step["disadv"] for s in step
              if s not in ("disadv", "baseline") and "disadv" in step}  # fmt: skip
    if ratios:
        listed = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
        print(
            f"[accel] conadv step-time ratios: {listed} (below 1: faster than DisAdv; "
            "separate/disadv well below 1 would mean its attack overlapped the update)",
            flush=True,
        )
    return rows, ratios


def block_tensorflow() -> None:
    """Importing TensorFlow fails from now on (``tests/workers/no_tensorflow.py``)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "workers"))
    import no_tensorflow

    no_tensorflow.block()


def scala_part(args: argparse.Namespace, start: float) -> list[dict]:
    """Every ScaLA configuration in turn; none started after the ScaLA part's budget."""
    import keras

    budget = args.budget_s - (args.conadv_reserve_s if "conadv" in args.parts else 0.0)
    rows = []
    for name in args.models:
        for batch in args.batches:
            for method in args.methods:
                if time.perf_counter() - start > budget:
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
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["scala", "conadv"], choices=["scala", "conadv"])
    p.add_argument("--models", nargs="+", default=["minilm", "bert-base"])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 1024])
    p.add_argument("--methods", nargs="+", default=["baseline", "scala"])
    p.add_argument("--micro-batch-size", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--conadv-schedules", nargs="+", default=["disadv", "shared", "separate",
                   "baseline"], choices=list(PASSES))  # fmt: skip
    p.add_argument("--conadv-model", default="resnet50")
    p.add_argument("--conadv-image-shape", type=int, nargs=3, default=[224, 224, 3])
    p.add_argument("--conadv-classes", type=int, default=1000)
    p.add_argument("--conadv-width", type=int, default=16, help="cifar_resnet* only")
    p.add_argument("--conadv-batch", type=int, default=256, help="per-device batch")
    p.add_argument("--conadv-micro-batch-size", type=int, default=0, help="0: none")
    p.add_argument(
        "--conadv-xla-flops",
        action="store_true",
        help="also lower each step for XLA's own FLOP count (a re-trace)",
    )
    p.add_argument("--trace-dir", default=None, help="jax.profiler trace of separate here")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument(
        "--budget-s",
        type=float,
        default=270.0,
        help="no configuration starts after this many seconds",
    )
    p.add_argument(
        "--conadv-reserve-s",
        type=float,
        default=150.0,
        help="of --budget-s, kept for the ConAdv part",
    )
    p.add_argument("--smoke", action="store_true", help="tiny shapes: check it runs (CPU)")
    p.add_argument("--no-tensorflow", action="store_true", help="make importing it fail")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.no_tensorflow:
        block_tensorflow()
    import jax
    import keras

    if args.smoke:
        args.batches, args.steps, args.warmup, args.seq_len = [8, 32], 2, 1, 32
        args.micro_batch_size = 8
        args.conadv_model, args.conadv_image_shape, args.conadv_classes = "cifar_resnet8", [
            16, 16, 3], 10  # fmt: skip
        args.conadv_width, args.conadv_batch, args.conadv_micro_batch_size = 4, 8, 4
        args.conadv_xla_flops = True
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    print(f"[accel] jax {jax.__version__} keras {keras.__version__} devices {jax.devices()} "
          f"peak {peak_tflops(args)} TFLOP/s bf16", flush=True)  # fmt: skip
    start = time.perf_counter()
    rows = scala_part(args, start) if "scala" in args.parts else []
    conadv, ratios = conadv_part(args, start) if "conadv" in args.parts else ([], {})
    print(f"[accel] done in {time.perf_counter() - start:.0f} s", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"devices": [str(d) for d in jax.devices()], "rows": rows,
                       "conadv": conadv, "conadv_ratios": ratios}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
