"""Evaluating a model: held-out bits per byte (bits_per_byte, used by training too), lm-eval on local copies of
the benchmarks (local_tasks, tasks/), and the command that runs both (run)."""
