"""Training and evaluation engine: builds from a Config, runs loops, writes checkpoints and logs."""
