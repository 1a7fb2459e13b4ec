"""Time breakdown of one fine-tuning step: baseline vs ScaLA PGA-1 vs PGA-K (ScaLA figure 2).

On the bundled all-MiniLM-L6-v2 and real Rotten Tomatoes batches (dynamic padding,
the trainer's own trimming), it alternates, round after round, compiled callables
that each run one step on the next batch:

* ``forward``: the clean forward pass and the loss;
* ``forward_backward``: the same plus the weight gradients;
* ``baseline``: the whole training step (forward, backward, LAMB update);
* ``ascent_1`` / ``ascent_K``: the clean forward, then the perturbation alone (random
  start, K ascent steps on the token-embedding output, projection);
* ``scala_1`` / ``scala_K``: the whole ScaLA step with PGA-1 / PGA-K on;
* ``run_lamb`` / ``run_halfway``: N steps of LAMB, and N steps of ScaLA that turn the
  perturbation on after N/2 (the delayed injection of a whole run).

Then per variant: forward = forward, backward = forward_backward - forward,
optimizer = baseline - forward_backward, ascent = ascent_K - forward, adversarial
pass (the extra forward + backward through the perturbed embeddings) = scala_K -
baseline - ascent.  Ratios are medians over rounds of ratios taken within a round
(rounds where other processes used > ``--quiet-threshold`` of the cores are redone).

Arithmetic floor, counting a forward pass as F and a backward pass as 2F
(input and weight gradients): baseline = 3F; ScaLA PGA-K adds K ascent steps
(forward + input-gradient backward, 2F each) and the adversarial pass (3F), so
ScaLA / baseline >= (6 + 2K) / 3: 2.67 for PGA-1.

    .venv/bin/python benchmarks/time_breakdown.py --json-out runs/bench/time_breakdown.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import Rounds, machine, timed_call, wait_for_quiet  # noqa: E402


def floor_ratio(k: int) -> float:
    """ScaLA PGA-K step / baseline step in forward-pass units: (6 + 2K) / 3."""
    return (6 + 2 * k) / 3


def breakdown(t: dict[str, float], k: int) -> dict[str, float]:
    """Per-part seconds of a step from the measured medians (see the module docstring);
    ``k`` = 0 for the baseline step, else the K of the ScaLA PGA-K step."""
    parts = {
        "forward": t["forward"],
        "backward": t["forward_backward"] - t["forward"],
        "optimizer": t["baseline"] - t["forward_backward"],
    }
    if k == 0:
        return parts
    ascent = t[f"ascent_{k}"] - t["forward"]
    return {**parts, "ascent": ascent, "adversarial_pass": t[f"scala_{k}"] - t["baseline"] - ascent}


def build(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The compiled callables, each running one step on the next real batch."""
    import keras
    import tensorflow as tf

    from adv_large_batch.data import text_pipeline, text_tasks
    from adv_large_batch.models.inputs import TOKEN_IDS, trim_to_longest
    from adv_large_batch.models.text_classifiers import build_network, default_model_path
    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    network, tokenizer = build_network(default_model_path(), 2, 0)
    task = text_tasks.load_task("rotten_tomatoes")
    split = task.train.take(args.batch_size * args.batches)
    feats = text_pipeline.tokenize(split, tokenizer, args.max_length)
    ds = (
        tf.data.Dataset.from_tensor_slices((feats, split.labels.astype(np.int32)))
        .batch(args.batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(2)
    )
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def trainer(method: str, steps: int, start: int = 0) -> ScaLA:
        model = ScaLA(network, ScaLAConfig(method=method, steps=steps, start_step=start))
        model.compile(optimizer=LAMB(1e-4), loss=ce)
        model.build_before_tracing(ds.element_spec)
        return model

    models = {
        "baseline": trainer("baseline", 1),
        "scala_1": trainer("scala", 1),
        f"scala_{args.k}": trainer("scala", args.k),
        "run_halfway": trainer("scala", 1, start=10**9),
    }

    @tf.function
    def forward(x: Any, y: Any) -> Any:
        return ce(y, network(trim_to_longest(x), training=True))

    @tf.function
    def forward_backward(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = ce(y, network(trim_to_longest(x), training=True))
        return tape.gradient(loss, network.trainable_variables)

    def ascent_fn(model: ScaLA) -> Callable[[Any, Any], Any]:
        @tf.function
        def ascent(x: Any, y: Any) -> Any:
            x = trim_to_longest(x)
            e = network.embed_tokens(x[TOKEN_IDS])
            clean = network.logits_from_embeddings(e, x, training=True)
            return model._perturbation(e, x, model._target(clean, y))[0]

        return ascent

    iterator = iter(ds)

    def on_next(fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
        def call() -> Any:
            x, y = next(iterator)
            out = fn(x, y)
            return [np.asarray(o) for o in tf.nest.flatten(out)[:1]]  # wait for the result

        return call

    def train_steps(model: ScaLA, count: int) -> Callable[[], Any]:
        def call() -> Any:
            logs = None
            for _ in range(count):
                logs = model.train_function(iterator)
            return float(np.asarray(logs["loss"]))

        return call

    for model in models.values():  # trace and build optimizer state
        model.make_train_function()
        train_steps(model, 2)()
    half = args.run_steps // 2
    halfway = models["run_halfway"]

    def run_halfway() -> Any:
        iterations = int(halfway.optimizer.iterations.numpy())
        halfway.adv_start_step.assign(iterations + half)  # on after N/2 steps of this run
        return train_steps(halfway, args.run_steps)()

    fns: dict[str, Callable[[], Any]] = {
        "forward": on_next(forward),
        "forward_backward": on_next(forward_backward),
        "ascent_1": on_next(ascent_fn(models["scala_1"])),
        f"ascent_{args.k}": on_next(ascent_fn(models[f"scala_{args.k}"])),
        "baseline": train_steps(models["baseline"], 1),
        "scala_1": train_steps(models["scala_1"], 1),
        f"scala_{args.k}": train_steps(models[f"scala_{args.k}"], 1),
        "run_lamb": train_steps(models["baseline"], args.run_steps),
        "run_halfway": run_halfway,
    }
    for fn in fns.values():  # trace the remaining functions
        fn()
    return fns


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="distinct real batches cycled")
    p.add_argument("--k", type=int, default=3, help="K of the PGA-K variant")
    p.add_argument("--steps", type=int, default=3, help="calls per variant per round")
    p.add_argument("--run-steps", type=int, default=8, help="N of the whole-run comparison")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quiet-threshold", type=float, default=0.15)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.k < 2 or args.run_steps < 2 or args.batch_size < 1 or args.rounds < 1:
        p.error("need --k >= 2, --run-steps >= 2, --batch-size >= 1, --rounds >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"[breakdown] {started} machine {machine()}")
    fns = build(args)
    per_call_steps = {"run_lamb": args.run_steps, "run_halfway": args.run_steps}
    rounds = Rounds(args.rounds, args.quiet_threshold)
    while rounds.more():
        wait_for_quiet(args.quiet_threshold, 30.0)
        row: dict[str, float] = {}
        load = []
        for name, fn in fns.items():
            seconds, others = timed_call(lambda fn=fn: [fn() for _ in range(args.steps)])
            row[name] = seconds / args.steps / per_call_steps.get(name, 1)
            load.append(others)
        row["scala_1/baseline"] = row["scala_1"] / row["baseline"]
        row[f"scala_{args.k}/baseline"] = row[f"scala_{args.k}"] / row["baseline"]
        row["run_halfway/run_lamb"] = row["run_halfway"] / row["run_lamb"]
        row["others"] = max(load)
        rounds.add(**row)
        print(
            f"[breakdown] round {len(rounds.rows) - 1}: baseline {row['baseline']:.3f} s, "
            f"PGA-1 x{row['scala_1/baseline']:.2f}, PGA-{args.k} "
            f"x{row[f'scala_{args.k}/baseline']:.2f}, half-way run "
            f"x{row['run_halfway/run_lamb']:.2f} (others {row['others']:.0%})"
        )
    med = {k: rounds.stat(k)["median"] for k in rounds.used()[0] if k != "others"}
    steps = {"baseline": 0, "scala PGA-1": 1, f"scala PGA-{args.k}": args.k}
    table = {label: breakdown(med, k) for label, k in steps.items()}
    print(f"\nbatch {args.batch_size}, max length {args.max_length}, {rounds.count()} rounds")
    print(
        "| step | forward s | backward s | optimizer s | ascent s | adversarial pass s |"
        " total s | / baseline [min, max] | arithmetic floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, k in steps.items():
        cells = [
            f"{table[label][p]:.3f}" if p in table[label] else "-"
            for p in ("forward", "backward", "optimizer", "ascent", "adversarial_pass")
        ]
        if k == 0:
            total, ratio, floor = med["baseline"], "1.00", 1.0
        else:
            total, floor = med[f"scala_{k}"], floor_ratio(k)
            ratio = "{median:.2f} [{min:.2f}, {max:.2f}]".format(
                **rounds.stat(f"scala_{k}/baseline")
            )
        print(f"| {label} | {' | '.join(cells)} | {total:.3f} | {ratio} | {floor:.2f} |")
    run = rounds.stat("run_halfway/run_lamb")
    print(
        f"\nwhole run of {args.run_steps} steps, PGA-1 on from half-way / LAMB run: "
        f"{run['median']:.2f} [{run['min']:.2f}, {run['max']:.2f}] "
        f"(floor {(1 + floor_ratio(1)) / 2:.2f})"
    )
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(
                {
                    "date": started,
                    "machine": machine(),
                    "args": vars(args),
                    "medians_s": med,
                    "breakdown_s": table,
                    "ratios": {k: rounds.stat(k) for k in med if "/" in k},
                    "rounds": rounds.rows,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
