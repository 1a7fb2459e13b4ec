"""The PyTorch + Hugging Face peer of ``bench_vs_pytorch.py`` (runs in ``.bench-venv``).

A persistent worker: it loads the bundled all-MiniLM-L6-v2 folder with
``AutoModelForSequenceClassification`` (num_labels=2) and the pre-tokenised
batches that the benchmark saved (.npz), then answers one JSON command per
line on stdin with one JSON line on stdout, so the benchmark can interleave
rounds of the peer with rounds of ours while the other side waits.

Its step is the usual fine-tuning loop with dynamic padding: trim each batch to
its longest sequence (what ``DataCollatorWithPadding`` gives), forward with
labels, backward, ``AdamW.step()``, ``zero_grad``.

Commands (``{"op": ...}``):
  ``run``        ``batch``, ``start``, ``count``: time ``count`` steps on the saved
                 batches ``start, start+1, ...`` of that batch size (wrapping);
                 answers ``seconds``, ``cpu_s`` (this process's CPU time), ``examples``,
                 ``loss``.
  ``reset_peak`` resets this process's RSS high-water mark (``/proc/self/clear_refs``).
  ``peak``       answers ``VmHWM``, ``VmRSS``, ``RssAnon``, ``RssFile`` in MB.
  ``info``       versions, threads.
  ``quit``.

This file must not import ``adv_large_batch``: the peer never sees the library.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
import transformers


def proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Peer:
    def __init__(self, model_path: str, data_path: str, lr: float, weight_decay: float) -> None:
        torch.manual_seed(0)
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=2
        )
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, weight_decay=weight_decay
        )
        data = np.load(data_path)
        self.batches: dict[int, list[dict[str, torch.Tensor]]] = {}
        for key in data.files:
            if not key.endswith("/token_ids"):
                continue
            prefix = key[: -len("/token_ids")]
            size = int(prefix[1:])
            ids, seg, mask = (
                data[f"{prefix}/{k}"] for k in ("token_ids", "segment_ids", "padding_mask")
            )
            labels = data[f"{prefix}/labels"]
            self.batches[size] = [
                {
                    "input_ids": torch.from_numpy(ids[i].astype(np.int64)),
                    "token_type_ids": torch.from_numpy(seg[i].astype(np.int64)),
                    "attention_mask": torch.from_numpy(mask[i].astype(np.int64)),
                    "labels": torch.from_numpy(labels[i].astype(np.int64)),
                }
                for i in range(ids.shape[0])
            ]

    @staticmethod
    def collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dynamic padding: drop the columns no sequence of the batch uses."""
        longest = max(int(batch["attention_mask"].sum(dim=1).max()), 1)
        return {k: (v if k == "labels" else v[:, :longest]) for k, v in batch.items()}

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        out = self.model(**self.collate(batch))
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    def run(self, batch: int, start: int, count: int) -> dict[str, Any]:
        batches = self.batches[batch]
        loss = float("nan")
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(count):
            loss = self.step(batches[(start + i) % len(batches)])
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "cpu_s": time.process_time() - c0,
            "examples": batch * count,
            "loss": loss,
        }


def info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "attn_implementation": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face BERT folder")
    parser.add_argument("--data", required=True, help=".npz written by bench_vs_pytorch.py")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    args = parser.parse_args()
    import_rss = proc_status_mb("VmRSS")
    peer = Peer(args.model, args.data, args.lr, args.weight_decay)
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    details = info()
    details["attn_implementation"] = getattr(peer.model.config, "_attn_implementation", None)
    details["rss_after_import_mb"] = import_rss
    out.write(json.dumps({"ready": True, **details}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "run":
            reply = peer.run(int(cmd["batch"]), int(cmd["start"]), int(cmd["count"]))
        elif op == "reset_peak":
            reply = {"reset": reset_peak()}
        elif op == "peak":
            reply = {k: proc_status_mb(k) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
        elif op == "info":
            reply = details
        elif op == "quit":
            break
        else:
            reply = {"error": f"unknown op {op!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
