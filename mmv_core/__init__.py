"""MMV video networks: models, checkpoints, video processing and evaluation."""
