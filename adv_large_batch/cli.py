"""The ``adv-large-batch`` command line.

Subcommands: ``info`` (installation report), ``finetune`` (ScaLA / baseline
fine-tuning of a BERT-family encoder), ``train-images`` (ConAdv / DisAdv /
baseline image training) and ``sharpness`` (top Hessian eigenvalue of a
checkpoint's training loss).  Every flag comes from a config
dataclass (``adv_large_batch.flags``); bad values exit with status 2 and a
message naming the value before TensorFlow does any work.

``--backend {tensorflow,jax}`` (before the subcommand) sets ``KERAS_BACKEND`` before Keras
is imported; without it the environment's ``KERAS_BACKEND`` applies.  On JAX the finetune
run needs no TensorFlow; flags that do are refused (``commands/jax_checks.py``).

Exit statuses (what a launcher, ``horovodrun`` or a scheduler sees): ``adv_large_batch.exits``
(0 done, 2 bad input, 3 non-finite stop, 74 a checkpoint could not be written, 75 preempted:
resume with ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from adv_large_batch import __version__
from adv_large_batch.exits import (
    EXIT_BAD_INPUT,
    EXIT_CHECKPOINT_WRITE,
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_PREEMPTED,
    CheckpointWriteError,
    Preempted,
)
from adv_large_batch.flags import ConfigError, add_arguments, add_deprecated_alias, from_args


def _status(result: dict) -> int:
    """The exit status of a training command's result."""
    return EXIT_NONFINITE if result.get("stopped_nonfinite_at") is not None else EXIT_OK


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One subcommand: its help, its flag groups (config dataclasses, each built from the
    parsed flags and validated before any work) and what runs them."""

    help: str
    description: str
    configs: Callable[[], list[tuple[type, str]]]  # (config class, flag group title)
    run: Callable[..., int]  # run(*configs) -> exit status
    defaults: Callable[[], dict[str, Any]] = dict  # flag defaults of this subcommand
    old_spellings: tuple[tuple[str, str], ...] = ()  # (deprecated flag, the flag it names)


def _finetune_configs() -> list[tuple[type, str]]:
    from adv_large_batch.commands.finetune import FinetuneConfig
    from adv_large_batch.optimizers import OptimizerConfig
    from adv_large_batch.scala import ScaLAConfig

    return [
        (FinetuneConfig, "run"),
        (ScaLAConfig, "adversarial perturbation (ScaLA)"),
        (OptimizerConfig, "optimizer and learning rate"),
    ]


def _images_configs() -> list[tuple[type, str]]:
    from adv_large_batch.commands.train_images import ImageTrainConfig
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.optimizers import OptimizerConfig

    return [
        (ImageTrainConfig, "run"),
        (ConAdvConfig, "adversarial examples (ConAdv / DisAdv)"),
        (OptimizerConfig, "optimizer and learning rate (LARS for images)"),
    ]


def _images_defaults() -> dict[str, Any]:
    from adv_large_batch.optimizers import IMAGE_OPTIMIZER_DEFAULTS

    return IMAGE_OPTIMIZER_DEFAULTS  # the same optimizer flags, image defaults


def _sharpness_configs() -> list[tuple[type, str]]:
    from adv_large_batch.commands.sharpness import SharpnessConfig

    return [(SharpnessConfig, "sharpness")]


def _run_finetune(*configs: Any) -> int:
    from adv_large_batch.commands import finetune

    return _status(finetune.run(*configs))


def _run_images(*configs: Any) -> int:
    from adv_large_batch.commands import train_images

    return _status(train_images.run(*configs))


def _run_sharpness(cfg: Any) -> int:
    from adv_large_batch.commands import sharpness

    sharpness.run(cfg)
    return EXIT_OK


#: ``adv-large-batch <name>``: every subcommand but ``info`` (which takes only ``--json``).
SUBCOMMANDS: dict[str, Subcommand] = {
    "finetune": Subcommand(
        "fine-tune a BERT-family encoder (ScaLA, baseline or Gaussian noise)",
        "Fine-tune a BERT-family encoder on a GLUE-style task with ScaLA.",
        _finetune_configs,
        _run_finetune,
    ),
    "train-images": Subcommand(
        "train an image classifier (ConAdv, DisAdv or baseline) with LARS",
        "Large-batch image training with concurrent adversarial learning (ConAdv).",
        _images_configs,
        _run_images,
        _images_defaults,
        (("--dtype-policy", "--precision"),),
    ),
    "sharpness": Subcommand(
        "top Hessian eigenvalue of a checkpoint's training loss (power iteration)",
        "Sharpness of a finetune / train-images checkpoint: the top eigenvalue of the Hessian "
        "of the training loss (dropout off, no perturbation) with respect to the trainable "
        "weights, by power iteration on Hessian-vector products over one fixed batch of the "
        "run's training data.",
        _sharpness_configs,
        _run_sharpness,
    ),
}


#: ``--backend`` choices: the Keras backends this library trains on.
KERAS_BACKENDS = ("tensorflow", "jax")
_BACKEND_HELP = (
    "Keras backend of the run (sets KERAS_BACKEND before Keras is imported; default: "
    "KERAS_BACKEND as the environment has it, else Keras' own default)"
)


def _backend_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=add_help, allow_abbrev=False)
    parser.add_argument("--backend", choices=KERAS_BACKENDS, default=None, help=_BACKEND_HELP)
    return parser


def select_backend(argv: Sequence[str]) -> None:
    """Apply a ``--backend`` of ``argv`` (before the subcommand) to ``KERAS_BACKEND``,
    before anything imports Keras.  ``ConfigError`` when Keras is already imported in
    this process with another backend (one backend per process)."""
    head = list(argv)
    for i, arg in enumerate(head):
        after_flag = i > 0 and head[i - 1] == "--backend"
        if not arg.startswith("-") and not after_flag:  # the subcommand: its flags aren't ours
            head = head[:i]
            break
    known, _ = _backend_parser(add_help=False).parse_known_args(head)
    if known.backend is None:
        return
    keras = sys.modules.get("keras")
    if keras is not None and keras.config.backend() != known.backend:
        raise ConfigError(
            f"--backend {known.backend}: Keras is already imported in this process with the "
            f"{keras.config.backend()} backend (one backend per process)"
        )
    os.environ["KERAS_BACKEND"] = known.backend


def _add_unavailable(sub: Any, name: str, command: Subcommand, err: ImportError) -> None:
    """A subcommand whose flags cannot be imported here (e.g. TensorFlow-only code on the
    JAX backend): it parses anything and ``main`` refuses it, naming the import error."""
    p = sub.add_parser(name, help=f"{command.help} [unavailable here]", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(unavailable=f"not available in this process ({type(err).__name__}: {err})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adv-large-batch",
        description="Large-batch training with adversarial perturbation (ScaLA, ConAdv).",
        parents=[_backend_parser(add_help=False)],
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = sub.add_parser("info", help="versions, devices, Horovod build, bundled data")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    for name, command in SUBCOMMANDS.items():
        try:
            configs = command.configs()
        except ImportError as err:  # e.g. train-images' TensorFlow code under a blocked TF
            _add_unavailable(sub, name, command, err)
            continue
        p = sub.add_parser(name, help=command.help, description=command.description)
        for cls, title in configs:
            add_arguments(p, cls, title)
        for alias, flag in command.old_spellings:
            add_deprecated_alias(p, alias, flag)
        p.set_defaults(**command.defaults())
    return parser


def resume_command(argv: Sequence[str]) -> str:
    """The command line that resumes the run of ``argv`` (``--resume`` added once)."""
    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["adv-large-batch", *args])


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        select_backend(argv)
    except ConfigError as exc:
        print(f"adv-large-batch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "unavailable", None):
        print(f"adv-large-batch {args.command}: error: {args.unavailable}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.command == "info":
            from adv_large_batch.commands import info

            data = info.collect()
            print(json.dumps(data, indent=2) if args.json else info.report(data))
            return EXIT_OK
        command = SUBCOMMANDS[args.command]
        return command.run(*(from_args(cls, args) for cls, _ in command.configs()))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"adv-large-batch {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Preempted as stop:
        if stop.is_chief:
            print(stop.report(args.command, resume_command(argv)), file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except CheckpointWriteError as exc:
        print(f"adv-large-batch {args.command}: error: {exc}", file=sys.stderr, flush=True)
        print(
            f"[{args.command}] stopped: free space or fix the folder, then resume with: "
            + resume_command(argv),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_CHECKPOINT_WRITE


if __name__ == "__main__":
    sys.exit(main())
