"""Datasets and their tf.data pipelines: text tasks (Rotten Tomatoes, GLUE), image datasets
(Fashion-MNIST, CIFAR-10, ImageNet, folders), augmentation and GLUE's metrics."""
