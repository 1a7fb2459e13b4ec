"""``fit`` on raw strings with the step traced once vs twice, side by side.

The README's notebook path (ScaLA on the bundled MiniLM, raw strings, batch 64 in
micro-batches of 32): ``fit`` builds the optimizer and metrics before the step is traced
(``engine.inputs.batch_spec``, one trace) against the same ``fit`` that leaves the build
to the first trace (what arrays got before 2026-12-03: the step traced twice).  Each round
builds a fresh model per variant, alternating which goes first, and times one ``fit`` of
``--examples`` sentences (one epoch: the traces dominate); printed: seconds per variant,
traces counted, and the median within-round ratio once / twice::

    .venv/bin/python benchmarks/bench_trace_once.py --rounds 3
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_common import Rounds, machine, numpy_matmul_gflops, timed_call  # noqa: E402


def make_model(task, twice: bool):  # noqa: ANN001, ANN201
    """A compiled README ScaLA model counting its step's traces; ``twice``: no build first."""
    import keras

    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier
    from adv_large_batch.optimizers import OptimizerConfig, build_optimizer
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    class Counted(ScaLA):
        traces = 0

        def train_step(self, data):  # noqa: ANN001, ANN202
            self.traces += 1  # Python runs only while tracing
            return super().train_step(data)

        def _before_fit(self, x, y=None) -> None:  # noqa: ANN001
            if not twice:
                super()._before_fit(x, y)

    network = PerturbableBertClassifier.from_preset(
        "bundled", num_classes=2, sequence_length=64, seed=0
    )
    model = Counted(network, ScaLAConfig(start_epoch=1), micro_batch_size=32, seed=0)
    steps = len(task.train) // 64
    optimizer = build_optimizer(OptimizerConfig(lr=2e-3), total_steps=steps, global_batch_size=64)
    model.compile(
        optimizer=optimizer,
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=64, help="training sentences (one epoch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quiet-threshold", type=float, default=0.25)
    args = p.parse_args()
    if args.examples < 64 or args.rounds < 1:
        p.error(f"--examples must be >= 64 (one batch), got {args.examples}; --rounds >= 1")

    from adv_large_batch.data.text_tasks import load_text_task

    task = load_text_task("rotten_tomatoes", limit=args.examples)
    print(f"[trace-once] {machine()}, float32 matmul {numpy_matmul_gflops():.0f} GFLOP/s")
    rounds = Rounds(args.rounds, args.quiet_threshold)
    while rounds.more():
        turn = len(rounds.rows)
        seconds, traces, others = {}, {}, 0.0
        for name in ("once", "twice")[:: 1 if turn % 2 == 0 else -1]:
            model = make_model(task, twice=name == "twice")
            fit = lambda m=model: m.fit(  # noqa: E731
                task.train.texts, task.train.labels, batch_size=64, epochs=1, verbose=0
            )
            seconds[name], busy = timed_call(fit)
            traces[name] = model.traces
            others = max(others, busy)
        row = rounds.add(**seconds, ratio=seconds["once"] / seconds["twice"], others=others)
        print(
            f"[trace-once] round {turn}: once {seconds['once']:.1f} s ({traces['once']} trace), "
            f"twice {seconds['twice']:.1f} s ({traces['twice']} traces), "
            f"once / twice {row['ratio']:.2f}, other processes {others:.0%} of the cores",
            flush=True,
        )
    ratio, once, twice = (rounds.stat(key) for key in ("ratio", "once", "twice"))
    print(
        f"[trace-once] {rounds.count()}: fit once / twice median {ratio['median']:.2f} "
        f"(min {ratio['min']:.2f}, max {ratio['max']:.2f}); once {once['median']:.1f} s, "
        f"twice {twice['median']:.1f} s"
    )


if __name__ == "__main__":
    main()
