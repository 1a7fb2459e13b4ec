"""``SignalWatch`` and ``PreemptionCheckpoint`` on one process, with real signals (the
runs that are signalled for real: tests/engine/test_faults.py and
tests/commands/test_faults_horovod.py)."""

from __future__ import annotations

import signal

import keras
import numpy as np
import pytest

from adv_large_batch.engine.distributed import Backend
from adv_large_batch.engine.preemption import PreemptionCheckpoint, SignalWatch
from adv_large_batch.exits import Preempted


def compiled_model(steps: int) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((steps, 2)), np.zeros((steps, 1)), batch_size=1, verbose=0)
    return model


def test_a_signal_after_the_last_step_of_a_run_resumed_at_its_end_is_a_preemption():
    """A run resumed from the checkpoint of its last step never enters ``fit``, so Keras
    never gives the callback its model; a SIGTERM then must still end in ``Preempted`` at
    that step (before: AttributeError on ``None.optimizer``, a traceback and status 1)."""
    model = compiled_model(steps=3)
    before = signal.getsignal(signal.SIGTERM)
    with SignalWatch() as watch:
        callback = PreemptionCheckpoint(watch, Backend(), save=None)
        signal.raise_signal(signal.SIGTERM)
        assert watch.requested == signal.SIGTERM
        with pytest.raises(Preempted) as stopped:
            callback.after_fit(model, "/checkpoints/ckpt-00000003")
    assert stopped.value.step == 3
    assert signal.getsignal(signal.SIGTERM) is before


def test_no_signal_no_preemption_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with SignalWatch() as watch:
        assert watch.active
        PreemptionCheckpoint(watch, Backend(), save=None).after_fit(compiled_model(1), None)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_recorded_by_a_watch_is_delivered_after_it_when_asked():
    """What a dry run does with a signal that came while it prepared: once the watch is
    over, ``deliver`` hands it to the handlers in place (SIGINT's raises
    ``KeyboardInterrupt``), as if nothing had watched; with nothing recorded, nothing."""
    with SignalWatch() as watch:
        signal.raise_signal(signal.SIGINT)
    assert watch.requested == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        watch.deliver()
    with SignalWatch() as quiet:
        pass
    quiet.deliver()
