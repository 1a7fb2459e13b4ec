"""Model builders, installed as ``adv_large_batch.models``.

This top-level folder is installed as the package ``adv_large_batch.models`` (``package_dir``
in ``setup.cfg``), so ``import adv_large_batch.models.resnet`` works although the tree has no
``adv_large_batch/models/`` folder, and no package named ``models`` ever lands on ``sys.path``.
"""
