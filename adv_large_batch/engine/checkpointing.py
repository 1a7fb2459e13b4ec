"""Resumable step checkpoints: everything a run needs to continue bit-for-bit.

A checkpoint is a folder ``ckpt-<global step, 8 digits>/`` holding

* ``state.npz``: every model variable (weights, BatchNorm statistics, the
  seed-generator states behind dropout and the perturbations, ScaLA's
  ``adv_start_step``, ConAdv's buffered adversarial batch) and every optimizer
  variable (step counter, which drives the LR schedule, and the slots);
* ``meta.json``: the global step, epoch, step in the epoch, the variables' paths and
  (from the training commands) the run record (``run_record``: the command name, its run,
  adversarial and optimizer configs, workers and backend; the same record is the
  ``config`` of ``--metrics-out``), from which ``adv-large-batch sharpness`` rebuilds the
  network.

It is written as ``ckpt-N.partial/`` and renamed only when complete (a rename is
atomic on one filesystem), so a run killed while writing leaves a ``.partial``
folder that ``latest_checkpoint`` never picks.  ``meta.json`` records the size and
SHA-256 of ``state.npz``; a checkpoint whose meta does not parse or whose state does
not match (truncated, corrupted, half-copied) is not *intact*: ``--resume`` warns and
falls back to the newest intact one, and says clearly when there is none.  Only the
chief writes; every rank reads (the folder must be on a filesystem all ranks see, as
Horovod's own examples assume), and ``BroadcastCallback`` makes the ranks identical.

The data position, the ``N`` of ``ckpt-N`` and ``global_step`` in the meta, is the
trainer's batch counter ``batches_seen``: every training step advances it, whether its
update was applied or skipped (a non-finite loss, a mixed_float16 overflow), so a run
resumed at step N continues with batch N even after skipped steps.  The input pipeline
is a deterministic function of (seed, epoch), so a resumed run skips exactly the
batches already consumed (``data.text_pipeline.make_epoch_stream``,
``data.image_pipeline.train_stream``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
from typing import Any, Sequence

import keras
import numpy as np

from adv_large_batch.exits import CheckpointWriteError
from adv_large_batch.flags import ConfigError

_NAME = re.compile(r"^ckpt-(\d{8})$")


STATE_FILE = "state.npz"


#: The keys of the run record (``run_record``): the ``config`` of a run's --metrics-out and
#: the run part of every meta.json, read back by ``run_meta`` (``adv-large-batch sharpness``).
RUN_KEYS = ("command", "run", "adversarial", "optimizer", "workers", "backend")


def run_record(
    command: str, run: Any, adversarial: Any, optimizer_config: Any, backend: Any
) -> dict[str, Any]:
    """What a run was, JSON-ready: the command name, its three configs (frozen dataclasses:
    every flag's value) and where it ran.  A training command writes it as the ``config``
    of --metrics-out and as TensorBoard hparams; ``StepCheckpoint`` writes it into every
    meta.json beside the step, epoch and variable paths."""
    return {
        "command": command,
        "run": dataclasses.asdict(run),
        "adversarial": dataclasses.asdict(adversarial),
        "optimizer": dataclasses.asdict(optimizer_config),
        "workers": backend.size,
        "backend": backend.name,
    }


@dataclasses.dataclass(frozen=True)
class RunMeta:
    """What a checkpoint says about the run that wrote it (``run_meta``)."""

    path: str
    command: str
    run: dict[str, Any]  # the run's flags (RunConfig and the command's own)
    adversarial: dict[str, Any]
    optimizer: dict[str, Any]
    global_step: int


def run_meta(path: str, commands: Sequence[str]) -> RunMeta:
    """The run part of checkpoint ``path``'s meta; ``ConfigError`` when it lacks it (written
    before it was recorded) or names a command outside ``commands``.

    Reads both shapes: the run record (``run_record``) and the one before it, whose run
    flags are under ``config`` (and which has no workers and backend).
    """
    meta = read_meta(path)
    run_key = "run" if "run" in meta else "config"  # "config": the shape before run_record
    missing = [k for k in ("command", run_key, "adversarial", "paths") if k not in meta]
    if missing:
        raise ConfigError(
            f"{path}/meta.json has no {', '.join(missing)}: it was written before runs were "
            "recorded in checkpoints; train (or resume) with this version to record them"
        )
    if meta["command"] not in commands:
        raise ConfigError(
            f"unknown command {meta['command']!r} in {path}/meta.json (expected one of "
            f"{tuple(commands)})"
        )
    return RunMeta(
        path,
        meta["command"],
        meta[run_key],
        meta["adversarial"],
        meta.get("optimizer", {}),
        int(meta["global_step"]),
    )


def state_variables(model: keras.Model) -> list[Any]:
    """Model variables then optimizer variables, in a fixed order."""
    return list(model.variables) + list(model.optimizer.variables)


def _spread(value: Any) -> bool:
    """True for a JAX array split over several processes' devices (not readable here)."""
    return not getattr(value, "is_fully_addressable", True) and not getattr(
        value, "is_fully_replicated", False
    )


def needs_gather(model: keras.Model) -> bool:
    """True when a state variable is split over several processes (``host_values`` must
    then run on every process): ConAdv's buffer under multi-process JAX data parallelism."""
    return any(_spread(v.value) for v in state_variables(model))


def host_values(model: keras.Model) -> list[np.ndarray]:
    """Every state variable's value (``state_variables``' order) as NumPy on this host.

    A JAX array split over several processes is gathered from all of them
    (``multihost_utils.process_allgather``): a collective, so when ``needs_gather`` every
    process of the job calls this at the same step (``StepCheckpoint`` does)."""
    values = []
    for variable in state_variables(model):
        if _spread(variable.value):
            from jax.experimental import multihost_utils

            values.append(np.asarray(multihost_utils.process_allgather(variable.value, tiled=True)))
        else:
            values.append(np.asarray(variable.numpy()))
    return values


def data_position(model: keras.Model) -> int:
    """The global step a run has reached: the batch counter (see the module docstring)."""
    counter = getattr(model, "batches_seen", None)
    return int((counter if counter is not None else model.optimizer.iterations).numpy())


def file_digest(path: str) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def save_checkpoint(
    directory: str,
    model: keras.Model,
    meta: dict[str, Any],
    keep: int = 2,
    values: list[np.ndarray] | None = None,
) -> str:
    """Write ``ckpt-<step>/`` atomically and keep the newest ``keep`` complete ones.

    ``values``: the state's values from ``host_values`` (default: read here).

    A write that fails (``OSError``: a full disk, a read-only folder) removes its
    ``.partial`` folder, leaves every complete checkpoint as it was and raises
    ``CheckpointWriteError`` naming the folder, the cause and the newest intact checkpoint.
    """
    step = int(meta["global_step"])
    final = os.path.join(directory, f"ckpt-{step:08d}")
    partial = final + ".partial"
    try:
        _write_partial(partial, model, meta, values)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        newest = latest_checkpoint(directory, warn=False)
        raise CheckpointWriteError(
            f"could not write checkpoint {final} ({type(err).__name__}: {err}); the partial "
            f"folder was removed; newest intact checkpoint: {newest or 'none'}"
        ) from err
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    for old in complete_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_partial(
    partial: str, model: keras.Model, meta: dict[str, Any], values: list[np.ndarray] | None
) -> None:
    """``state.npz`` and ``meta.json`` (with the state's size and SHA-256) into ``partial``."""
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    variables = state_variables(model)
    values = host_values(model) if values is None else values
    state = os.path.join(partial, STATE_FILE)
    np.savez(state, **{f"v{i:05d}": value for i, value in enumerate(values)})
    files = {STATE_FILE: file_digest(state)}
    with open(os.path.join(partial, "meta.json"), "w") as f:
        json.dump({**meta, "paths": [v.path for v in variables], "files": files}, f, indent=1)


def complete_checkpoints(directory: str) -> list[str]:
    """Complete checkpoint folders, oldest first (``.partial`` ones are ignored)."""
    if not directory or not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    return [
        os.path.join(directory, n)
        for n in names
        if os.path.exists(os.path.join(directory, n, "meta.json"))
    ]


def integrity_problem(path: str) -> str | None:
    """Why the checkpoint folder ``path`` is not intact, or None when it is.

    Intact: ``meta.json`` parses and names its variables, and ``state.npz`` has the size
    and SHA-256 recorded in it (checkpoints written before checksums existed: the file
    must at least open as an archive with one array per variable).
    """
    try:
        meta = read_meta(path)
    except (OSError, ValueError) as err:
        return f"meta.json is unreadable ({type(err).__name__}: {err})"
    if not isinstance(meta, dict) or "paths" not in meta or "global_step" not in meta:
        return "meta.json lacks the variable paths or the step"
    state = os.path.join(path, STATE_FILE)
    if not os.path.exists(state):
        return f"{STATE_FILE} is missing"
    recorded = (meta.get("files") or {}).get(STATE_FILE)
    if recorded is not None:
        actual = file_digest(state)
        if actual != recorded:
            return (
                f"{STATE_FILE} has {actual['bytes']} bytes / sha256 {actual['sha256'][:12]}, "
                f"meta.json recorded {recorded['bytes']} / {recorded['sha256'][:12]}"
            )
        return None
    try:
        with np.load(state) as data:
            if len(data.files) != len(meta["paths"]):
                return f"{STATE_FILE} holds {len(data.files)} arrays for {len(meta['paths'])} paths"
    except Exception as err:  # noqa: BLE001 -- any failure to open means "not intact"
        return f"{STATE_FILE} does not open ({type(err).__name__}: {err})"
    return None


def latest_checkpoint(directory: str, warn: bool = True) -> str | None:
    """The newest *intact* checkpoint in ``directory`` (None: there is none).

    A newer one that is not intact is skipped with a warning naming it and why.
    """
    for path in reversed(complete_checkpoints(directory)):
        problem = integrity_problem(path)
        if problem is None:
            return path
        if warn:
            warnings.warn(
                f"checkpoint {path} is not intact ({problem}); falling back to an older one",
                stacklevel=2,
            )
    return None


def resolve_checkpoint(path: str) -> str:
    """One complete checkpoint: ``path`` itself if it is a ``ckpt-<step>`` folder, else the
    newest complete one in the run folder ``path``.  ``ConfigError`` names ``path`` when
    there is none (``.partial`` folders never count)."""
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint path {path!r} does not exist")
    if _NAME.match(os.path.basename(os.path.normpath(path))):
        missing = [
            n for n in ("meta.json", "state.npz") if not os.path.exists(os.path.join(path, n))
        ]
        if missing:
            raise ConfigError(f"{path!r} is not a complete checkpoint (no {' or '.join(missing)})")
        problem = integrity_problem(path)
        if problem is not None:
            raise ConfigError(f"checkpoint {path!r} is not intact: {problem}")
        return path
    found = latest_checkpoint(path)
    if found is None:
        broken = complete_checkpoints(path)
        if broken:
            raise ConfigError(
                f"{path!r} holds no intact checkpoint: "
                + "; ".join(f"{os.path.basename(p)}: {integrity_problem(p)}" for p in broken)
            )
        raise ConfigError(
            f"{path!r} holds no complete checkpoint (a ckpt-<step>/ folder with meta.json; "
            "ckpt-<step>.partial/ folders are ignored)"
        )
    return found


def read_meta(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def restore_checkpoint(path: str, model: keras.Model) -> dict[str, Any]:
    """Load a checkpoint into a compiled model (its optimizer is built first)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    meta = read_meta(path)
    variables = state_variables(model)
    with np.load(os.path.join(path, "state.npz")) as data:
        mismatch = first_path_mismatch(meta["paths"], [v.path for v in variables])
        if mismatch is not None:
            i, saved, wanted = mismatch
            raise ConfigError(
                f"checkpoint {path} does not fit this model: its variable {i} is {saved!r}, "
                f"the model's is {wanted!r} (written by a different model or optimizer)"
            )
        if len(data.files) != len(variables):
            raise ConfigError(
                f"checkpoint {path} holds {len(data.files)} variables but this model has "
                f"{len(variables)}: it was written by a different model or optimizer"
            )
        _assign(path, data, meta["paths"], list(enumerate(variables)))
    return meta


def _comparable_path(path: str) -> str:
    """A variable path without Keras' per-process name counters anywhere in it
    (``dense_3/kernel``, ``lamb/dense_3_kernel_momentum``)."""
    return re.sub(r"_\d+(?=[/_]|$)", "", path)


def first_path_mismatch(saved: Sequence[str], wanted: Sequence[str]) -> tuple[int, str, str] | None:
    """``(index, saved path, wanted path)`` of the first variable whose recorded path
    differs from the model's (Keras' name counters aside), or None when all agree."""
    for i, (a, b) in enumerate(zip(saved, wanted)):
        if _comparable_path(a) != _comparable_path(b):
            return i, a, b
    return None


def restore_variables(path: str, variables: Sequence[Any]) -> dict[str, Any]:
    """Load ``variables`` (a subset of a checkpoint, e.g. one network's weights) by path.

    Each variable takes the saved value whose path matches (``match_saved_paths``);
    the trainer's own variables and the optimizer's in the checkpoint are left
    alone.  Returns the checkpoint's meta.
    """
    meta = read_meta(path)
    indices = match_saved_paths([v.path for v in variables], meta["paths"], path)
    with np.load(os.path.join(path, "state.npz")) as data:
        _assign(path, data, meta["paths"], list(zip(indices, variables)))
    return meta


def _normal_path(path: str) -> str:
    """A variable path without Keras' per-process ``_<n>`` suffixes on its components."""
    return re.sub(r"_\d+(?=/|$)", "", path)


def match_saved_paths(wanted: Sequence[str], saved: Sequence[str], where: str = "") -> list[int]:
    """Index into ``saved`` of each path of ``wanted``.

    Exact paths when each one is saved exactly once; otherwise (a network rebuilt in
    a process whose Keras name counters differ: ``conv2d_7`` for ``conv2d_3``) the
    paths are compared without their ``_<n>`` suffixes, in order: ``wanted`` must be
    an ordered subsequence of ``saved``, as a network's variables are of its
    trainer's.
    """
    positions = {p: i for i, p in enumerate(saved)}
    if len(positions) == len(saved) and all(p in positions for p in wanted):
        return [positions[p] for p in wanted]
    normal = [_normal_path(p) for p in saved]
    indices, cursor = [], 0
    for p in wanted:
        key = _normal_path(p)
        while cursor < len(saved) and normal[cursor] != key:
            cursor += 1
        if cursor == len(saved):
            raise ConfigError(
                f"checkpoint {where or '(state)'} has no variable {p!r} (in order): it was "
                "written by a different model"
            )
        indices.append(cursor)
        cursor += 1
    return indices


def _assign(path: str, data: Any, saved_paths: Sequence[str], pairs: list[tuple[int, Any]]) -> None:
    """``variable.assign(saved value i)`` for each ``(i, variable)``, checking shapes."""
    for i, variable in pairs:
        value = data[f"v{i:05d}"]
        if tuple(value.shape) != tuple(variable.shape):
            raise ConfigError(
                f"checkpoint {path}: {saved_paths[i]} has shape {value.shape}, the model's "
                f"{variable.path} has {tuple(variable.shape)}"
            )
        variable.assign(value)


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a resumable checkpoint every ``every`` optimizer steps and when training ends.

    Only the chief writes.  With a ``backend`` of several workers, every worker learns
    whether the chief's write failed (one scalar all-reduce after each write), so all of
    them stop with ``CheckpointWriteError`` at the same step instead of the others waiting
    in the next step's all-reduce for a chief that is gone.
    """

    def __init__(
        self,
        directory: str,
        every: int,
        steps_per_epoch: int,
        meta: dict[str, Any] | None = None,
        is_chief: bool = True,
        keep: int = 2,
        backend: Any = None,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.meta = dict(meta or {})
        self.is_chief = is_chief
        self.keep = keep
        self.backend = backend

    def path_of(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt-{step:08d}")

    def _save(self, step: int) -> None:
        if getattr(self.model, "stopped_nonfinite_at", None) is not None:
            return  # stopped on a non-finite step: keep the last good checkpoint the newest
        failure = None
        # A state split over the processes (JAX) is gathered by all of them, then written
        # by the chief alone.
        values = host_values(self.model) if needs_gather(self.model) else None
        if self.is_chief and not os.path.isdir(self.path_of(step)):
            meta = {
                **self.meta,
                "global_step": step,
                "epoch": step // self.steps_per_epoch,
                "step_in_epoch": step % self.steps_per_epoch,
            }
            try:
                save_checkpoint(self.directory, self.model, meta, self.keep, values)
            except CheckpointWriteError as err:
                failure = err
        if self.backend is not None and self.backend.size > 1:
            failed = float(self.backend.allreduce_mean(0.0 if failure is None else 1.0)) > 0
            if failed and failure is None:
                failure = CheckpointWriteError(
                    f"the chief could not write checkpoint {self.path_of(step)} (its log says why)"
                )
        if failure is not None:
            raise failure

    def save_now(self) -> str | None:
        """Checkpoint the model's step now, whatever ``every`` says; its folder (every
        worker), or the newest intact one after a non-finite stop (None: none)."""
        step = data_position(self.model)
        self._save(step)
        if getattr(self.model, "stopped_nonfinite_at", None) is not None:
            return latest_checkpoint(self.directory, warn=False)
        return self.path_of(step)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = data_position(self.model)
        if step % self.every == 0:
            self._save(step)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._save(data_position(self.model))
