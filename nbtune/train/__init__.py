"""The training engine: one loop, one event vocabulary, checkpoints, exact resume, OOM recovery."""
