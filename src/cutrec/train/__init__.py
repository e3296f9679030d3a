"""The training loop, evaluation of a model on a split, and run-folder checkpoints."""
