#!/usr/bin/env bash
# ConAdv on ImageNet with EfficientNet-B2 (conadv.md table 2): the ResNet-50 script
# with MODEL=efficientnet_b2 (its input size, 260 px, is the model's default). Same hosts, batch arithmetic,
# LARS rule and environment knobs; UNTESTED here (no GPUs, no ImageNet).
set -euo pipefail
cd "$(dirname "$0")"
MODEL=efficientnet_b2 exec bash conadv_imagenet_resnet50.sh "$@"
