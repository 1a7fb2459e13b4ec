"""The command-line runs: finetune, train-images, sharpness and info, on one run skeleton."""
