"""Delayed injection (ScaLA Algorithm 1: the perturbation is on for epochs t >= t_s)."""

from __future__ import annotations

import keras


def first_step_of_epoch(start_epoch: int, steps_per_epoch: int) -> int:
    """The optimizer step at which epoch ``t_s`` begins, t_s counted from 1 as in the paper
    (Algorithm 1: perturbation for t >= t_s, t in 1..T); 0 and 1 both mean step 0."""
    return max(int(start_epoch) - 1, 0) * int(steps_per_epoch)


class DelayedInjection(keras.callbacks.Callback):
    """Turns ScaLA's perturbation on in epoch ``t_s`` (1-based, the paper's) and says so.

    ``fit`` does not tell ``train_step`` the epoch, so the switch is kept as
    ``adv_start_step = (t_s - 1) * steps_per_epoch`` on the model (a variable, so it is
    checkpointed) and compared with the optimizer's step counter.  When the model's
    ``ScaLAConfig.start_step`` gives t_s in steps, that step stands and the callback
    only announces the switch.  The announcement numbers epochs as Keras prints them.
    """

    def __init__(self, start_epoch: int, steps_per_epoch: int | None = None, verbose: bool = True):
        super().__init__()
        self.start_epoch = start_epoch
        self.steps_per_epoch = steps_per_epoch
        self.verbose = verbose
        self._switch_epoch: int | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if self.model.config.start_step is None:  # t_s in epochs -> optimizer steps
            if steps is None:
                raise ValueError(
                    "DelayedInjection needs steps_per_epoch: pass it, or give fit a "
                    "dataset of known length"
                )
            self.model.adv_start_step.assign(first_step_of_epoch(self.start_epoch, steps))
        # else t_s was given in steps (--adv-start-step): it stands, whatever start_epoch is.
        start = int(self.model.adv_start_step.numpy())
        self._switch_epoch = start // int(steps) if steps else None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.verbose and epoch == self._switch_epoch and self.model.config.perturbs:
            epochs = (self.params or {}).get("epochs", "?")
            print(
                f"\n[ScaLA] epoch {epoch + 1}/{epochs}: adversarial perturbation ON from step "
                f"{int(self.model.adv_start_step.numpy())} "
                f"(method={self.model.config.method}, eps={self.model.config.eps}, "
                f"rho={self.model.config.step_size}, K={self.model.config.steps})",
                flush=True,
            )
