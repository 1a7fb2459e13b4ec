"""The engine every method runs on: the accumulating trainer, step timing, randomness,
distributed backends, checkpoints, losses and callbacks."""
