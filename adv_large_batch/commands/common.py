"""The one run skeleton of the training commands (``finetune``, ``train-images``).

Top to bottom, the same for both:

    precision policy -> backend -> batch split -> seed
      -> command.prepare   (data: the resumable train stream, evaluation sets, steps/epoch,
                            the optimizer config resolved for the run, the command's data)
      -> in the backend's scope: command.build (network + trainer), Keras optimizer, compile
      -> summary line -> command.before_fit -> resume from the newest intact checkpoint
      -> callbacks: command's first, then the standard ones, then the checkpoint writers
      -> fit from the step (SIGTERM / SIGINT: checkpoint the step, raise ``Preempted``)
      -> command.evaluate -> the metrics dict -> --metrics-out

A command supplies only what differs (``TrainingCommand``); everything above is here once,
with the helpers every command shares: the batch split (``split_batch``), the precision
switch (``precision_policy``) and the JSON writer (``write_json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from adv_large_batch.commands.run_config import RunConfig
from adv_large_batch.flags import require
from adv_large_batch.optimizers import OptimizerConfig

Say = Callable[..., None]
D = TypeVar("D")  # a command's own data (``TextData``, ``ImageData``)


@dataclasses.dataclass
class Plan(Generic[D]):
    """What a command's ``prepare`` hands the skeleton (``data``: the command's own)."""

    train_stream: Callable[[int], Any]  # global step -> batches from that step on
    validation: Any  # a tf.data.Dataset for fit's validation_data
    steps_per_epoch: int
    optimizer_config: OptimizerConfig  # resolved for this run (e.g. the LARS recipe)
    summary: str  # the data half of the run's first line
    data: D  # the command's typed data (task, tokenizer, evaluation sets, ...)
    metrics: tuple[str, ...] = ()  # the task metrics the progress line shows
    perturbation_from: str = "never"  # when the adversarial work starts (the dry run)


@dataclasses.dataclass(frozen=True)
class Context:
    """The run's fixed facts every hook may read."""

    run: RunConfig
    adversarial: Any
    backend: Any
    per_worker_batch: int
    say: Say


class TrainingCommand(Protocol):
    """The parts of a training command the skeleton calls, in this order."""

    name: str  # the subcommand ("finetune"): the checkpoints' meta and the log prefix
    unit: str  # the throughput unit of the progress and last lines ("ex/s", "img/s")

    def prepare(self, ctx: Context, optimizer_config: OptimizerConfig) -> Plan: ...

    def build(self, ctx: Context, plan: Plan) -> tuple[Any, Any, dict[str, Any]]:
        """(network, trainer, compile kwargs: loss and metrics), inside the backend's scope."""
        ...

    def before_fit(self, ctx: Context, plan: Plan, model: Any) -> None: ...

    def callbacks(self, ctx: Context, plan: Plan, model: Any, start_step: int) -> list: ...

    def evaluate(self, ctx: Context, plan: Plan, model: Any, timing: dict[str, Any]) -> dict: ...

    def headline(self, result: dict[str, Any]) -> str:
        """The final metric(s) of the run's last line (``validation {'accuracy': 0.81}``)."""
        ...


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy ``name`` for the run, the previous one restored after.

    Weights stay float32; compute runs in float16/bfloat16 (float16 gets Keras' dynamic
    loss scaling from ``compile``).
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def split_batch(run: RunConfig, workers: int, replicas: int = 1) -> tuple[int, int]:
    """(per-worker batch, micro-batch) for ``workers`` processes of ``replicas`` replicas each.

    The global batch must split into whole micro-batches on every replica.
    """
    parts = max(workers, 1) * max(replicas, 1)
    micro = run.micro_batch_size or max(run.batch_size // parts, 1)
    require(
        run.batch_size % (micro * parts) == 0,
        f"--batch-size {run.batch_size} is not divisible by --micro-batch-size {micro} x "
        f"{workers} worker(s) x {replicas} replica(s) = {micro * parts}",
    )
    return run.batch_size // max(workers, 1), micro


def write_json(path: str | None, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path`` (its folder made; nothing if ``path`` is None)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def printer(backend: Any, verbose: int) -> Say:
    """``print`` on the chief with ``--verbose`` > 0, else a no-op."""
    return print if backend.is_chief and verbose else (lambda *a, **k: None)


def history_dict(history: Any) -> dict[str, list[float]]:
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def run_training(
    command: TrainingCommand, run_cfg: RunConfig, adv: Any, optimizer_config: OptimizerConfig
) -> dict[str, Any]:
    """Train and evaluate with ``command``; returns the metrics dict (also --metrics-out).

    SIGTERM / SIGINT are watched from the start to the end of ``fit`` (``_fit``): a signal
    while the model is built or restored stops the run after its first step, checkpointed,
    like one during training; the evaluation after ``fit`` runs with the previous handlers.
    """
    import keras

    from adv_large_batch.engine import checkpointing
    from adv_large_batch.engine.preemption import SignalWatch

    with precision_policy(run_cfg.precision):
        with SignalWatch() as watch:
            backend = run_backend(run_cfg.strategy)
            per_worker, _ = split_batch(run_cfg, backend.size, backend.num_replicas_in_sync)
            ctx = Context(run_cfg, adv, backend, per_worker, printer(backend, run_cfg.verbose))
            keras.utils.set_random_seed(run_cfg.seed)
            plan = command.prepare(ctx, optimizer_config)
            record = checkpointing.run_record(
                command.name, run_cfg, adv, plan.optimizer_config, backend
            )
            model = _build(command, ctx, plan)
            if not run_cfg.dry_run:
                history, timing = _fit(command, ctx, plan, model, record, watch)
        if run_cfg.dry_run:
            watch.deliver()  # a signal while it was prepared: as if no watch had been there
            return dry_run(command, ctx, plan, model, total_steps(ctx, plan), record)
        result = {
            **command.evaluate(ctx, plan, model, timing),
            **timing,
            "stopped_nonfinite_at": model.stopped_nonfinite_at,
            "history": history_dict(history),
            "config": record,
        }
        if backend.is_chief:
            write_json(run_cfg.metrics_out, result)
        ctx.say(last_line(command, run_cfg, result))
        return result


def run_backend(strategy: str) -> Any:
    """The distributed backend of this process's Keras backend: on JAX
    ``jax_distribution.get_jax_backend()`` (``strategy`` is auto or single there:
    ``RunConfig`` refused the others), else ``distributed.get_backend(strategy)``."""
    import keras

    if keras.config.backend() == "jax":
        from adv_large_batch.engine.jax_distribution import get_jax_backend

        return get_jax_backend()
    from adv_large_batch.engine import distributed

    return distributed.get_backend(strategy)


def total_steps(ctx: Context, plan: Plan) -> int:
    """Optimizer steps of the whole run."""
    return plan.steps_per_epoch * ctx.run.epochs


def _build(command: TrainingCommand, ctx: Context, plan: Plan) -> Any:
    """The command's model, compiled with the plan's optimizer in the backend's scope."""
    from adv_large_batch.optimizers import build_optimizer

    run_cfg, backend = ctx.run, ctx.backend
    with backend.scope():
        network, model, compile_kwargs = command.build(ctx, plan)
        keras_optimizer = build_optimizer(
            plan.optimizer_config, total_steps(ctx, plan), run_cfg.batch_size
        )
        model.compile(optimizer=keras_optimizer, jit_compile=backend.jit_compile, **compile_kwargs)
    ctx.say(f"[{command.name}] {plan.summary} " + _batch_summary(ctx, plan, ctx.adversarial))
    return model


def _fit(
    command: TrainingCommand,
    ctx: Context,
    plan: Plan,
    model: Any,
    record: dict[str, Any],
    watch: Any,
) -> tuple[Any, dict[str, Any]]:
    """Restore (``--resume``) and ``fit`` to the end under ``watch``: SIGTERM / SIGINT
    checkpoint the agreed step and raise ``Preempted``; one after the last step raises it
    before the evaluation (``PreemptionCheckpoint.after_fit``).  Returns the History and
    the timing."""
    from adv_large_batch.engine import checkpointing, resume

    run_cfg = ctx.run
    command.before_fit(ctx, plan, model)
    start_step = 0
    if run_cfg.resume:
        start_step = resume.resume_step(
            run_cfg.checkpoint_dir, model, ctx.backend, ctx.say, command.name
        )
    start = time.time()
    callbacks = _callbacks(command, ctx, plan, model, start_step, record, watch)
    history = resume.fit_from_step(
        model,
        plan.train_stream,
        start_step,
        plan.steps_per_epoch,
        run_cfg.epochs,
        validation_data=plan.validation,
        callbacks=callbacks,
        verbose=0,  # engine.progress.Progress prints what a person watches
    )
    for callback in callbacks:
        if hasattr(callback, "after_fit"):
            newest = checkpointing.latest_checkpoint(run_cfg.checkpoint_dir, warn=False)
            callback.after_fit(model, newest)
    wall = time.time() - start
    steps_run = checkpointing.data_position(model) - start_step  # fewer: resumed/stopped
    timing = {"wall_time_s": wall, "steps": total_steps(ctx, plan), "steps_run": steps_run}
    return history, timing


def last_line(command: TrainingCommand, run_cfg: RunConfig, result: dict[str, Any]) -> str:
    """The run's one closing line: final metric(s), wall time, throughput, where things are."""
    from adv_large_batch.engine import checkpointing

    wall, steps = result["wall_time_s"], result["steps_run"]
    rate = (
        f"{steps * run_cfg.batch_size / wall:.1f} {command.unit}"
        if steps
        else "no training step left to run (the checkpoint is at the end of the run)"
    )
    newest = checkpointing.latest_checkpoint(run_cfg.checkpoint_dir, warn=False)
    places = [
        f"TensorBoard {run_cfg.logdir}" if run_cfg.logdir else None,
        f"metrics {run_cfg.metrics_out}" if run_cfg.metrics_out else None,
        f"checkpoint {newest}" if newest else None,
    ]
    stopped = result["stopped_nonfinite_at"]
    state = [] if stopped is None else [f"STOPPED at a non-finite step ({stopped})"]
    return " | ".join(
        [f"[{command.name}] {command.headline(result)}", *state, f"{wall:.0f} s, {rate}"]
        + [p for p in places if p]
    )


def dry_run(
    command: TrainingCommand,
    ctx: Context,
    plan: Plan,
    model: Any,
    total_steps: int,
    record: dict[str, Any],
) -> dict[str, Any]:
    """``--dry-run``: the resolved arithmetic of the run, printed (chief only), nothing
    trained; returned as ``{"dry_run": {...}}`` (also to --metrics-out)."""
    from adv_large_batch.optimizers import describe_parameter_groups
    from adv_large_batch.optimizers.param_groups import effective_parameter_groups
    from adv_large_batch.optimizers.schedules import scale_learning_rate

    run, opt, backend = ctx.run, plan.optimizer_config, ctx.backend
    replicas = backend.num_replicas_in_sync
    per_replica = ctx.per_worker_batch // replicas
    micro = run.micro_batch_size or per_replica
    peak = scale_learning_rate(opt.lr, run.batch_size, opt.base_batch_size, opt.lr_scaling)
    warmup = 0 if opt.schedule == "constant" else opt.warmup_steps_for(total_steps)
    variables = model.network.trainable_variables
    groups = [
        {
            "weight_decay": g.weight_decay,
            "layer_adaptation": g.layer_adaptation,
            "variables": len(g.paths),
            "weights": g.num_weights,
        }
        for g in effective_parameter_groups(model.optimizer, variables)
    ]
    facts = {
        "workers": backend.size,
        "replicas_per_worker": replicas,
        "global_batch": run.batch_size,
        "per_worker_batch": ctx.per_worker_batch,
        "per_replica_batch": per_replica,
        "micro_batch": micro,
        "micro_batches_per_replica": -(-per_replica // micro),
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": run.epochs,
        "total_steps": total_steps,
        "peak_learning_rate": peak,
        "warmup_steps": warmup,
        "perturbation_from": plan.perturbation_from,
        "parameter_groups": groups,
    }
    for key, value in facts.items():
        if key != "parameter_groups":
            ctx.say(f"[{command.name}] dry run: {key} = {value}")
    ctx.say(describe_parameter_groups(model.optimizer, variables))
    ctx.say(f"[{command.name}] dry run: nothing trained")
    result = {"dry_run": facts, "config": record}
    if backend.is_chief:
        write_json(run.metrics_out, result)
    return result


def _callbacks(
    command: TrainingCommand,
    ctx: Context,
    plan: Plan,
    model: Any,
    start_step: int,
    record: dict[str, Any],
    watch: Any = None,
) -> list:
    """The command's callbacks, then the standard ones, then the checkpoint writers (every
    meta.json holds the run ``record``) and the preemption handler of ``watch``."""
    from adv_large_batch.engine import resume
    from adv_large_batch.engine.callbacks import standard_callbacks

    run_cfg, backend = ctx.run, ctx.backend
    callbacks = command.callbacks(ctx, plan, model, start_step)
    callbacks += standard_callbacks(
        backend,
        run_cfg.logdir,
        run_cfg.checkpoint_dir,
        global_batch_size=run_cfg.batch_size,
        trust_ratios=plan.optimizer_config.log_trust_ratios,
        nonfinite=run_cfg.on_nonfinite,
        profile_steps=(2, 4) if run_cfg.profile else None,
        progress=progress(ctx, plan, command),
        hparams=record,
        metrics=plan.metrics,
    )
    other_writers = tuple(c.save_now for c in callbacks if hasattr(c, "save_now"))
    return callbacks + resume.step_callbacks(
        run_cfg.checkpoint_dir,
        run_cfg.checkpoint_every,
        run_cfg.stop_at_step,
        plan.steps_per_epoch,
        backend,
        record,
        watch,
        other_writers,  # ConAdv's per-worker buffers
    )


def progress(ctx: Context, plan: Plan, command: TrainingCommand) -> Any:
    """The progress line (chief only, ``--verbose`` 1 or 2), or None."""
    from adv_large_batch.engine.progress import Progress

    if not (ctx.backend.is_chief and ctx.run.verbose):
        return None
    return Progress(ctx.run.verbose, plan.metrics, ctx.run.batch_size, command.unit)


def _batch_summary(ctx: Context, plan: Plan, adv: Any) -> str:
    run, opt = ctx.run, plan.optimizer_config
    return (
        f"workers={ctx.backend.size} batch={run.batch_size} (per worker "
        f"{ctx.per_worker_batch}, micro {run.micro_batch_size or ctx.per_worker_batch}) "
        f"steps/epoch={plan.steps_per_epoch} method={adv.method} optimizer={opt.optimizer} "
        f"base lr={opt.lr:g} ({opt.lr_scaling} scaling from {opt.base_batch_size})"
    )


__all__ = [
    "Context",
    "Plan",
    "TrainingCommand",
    "precision_policy",
    "printer",
    "run_backend",
    "run_training",
    "split_batch",
    "write_json",
]
