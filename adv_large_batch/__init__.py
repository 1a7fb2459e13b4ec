"""adv-large-batch: large-batch training with adversarial perturbation.

Two published methods as Keras ``train_step`` overrides, so ``model.fit`` works:

* ScaLA (``adv_large_batch.scala``): PGA-1 perturbation of the token-embedding
  output of BERT-family encoders, a symmetric-KL regulariser, delayed injection
  and a layer-wise adaptive optimizer (LAMB with trust-ratio clipping).
* ConAdv (``adv_large_batch.conadv``): adversarial examples for batch t+1 built
  with the stale weights of step t, split BatchNorm and LARS.

Model builders live in ``adv_large_batch.models`` (the repository's top-level
``models/`` folder, installed under this namespace).
"""

__version__ = "0.1.0"
