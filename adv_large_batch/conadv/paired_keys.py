"""The keys of ConAdv's paired training element (no TensorFlow, no JAX).

A ConAdv run with ``staleness = tau >= 1`` trains on elements
``({IMAGES: x_t, NEXT_IMAGES: x_t+tau, NEXT_LABELS: y_t+tau}, y_t)``: the clean batch of
step t beside the batch whose adversarial examples step t makes.  ``pairing.pair_with_future``
builds them with ``tf.data``; ``data/numpy_images`` with NumPy (the JAX backend).
"""

IMAGES, NEXT_IMAGES, NEXT_LABELS = "images", "next_images", "next_labels"

__all__ = ["IMAGES", "NEXT_IMAGES", "NEXT_LABELS"]
