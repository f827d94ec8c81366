"""The pieces train_clm.py is built from: data, optimizers, schedules, checkpoints, metrics."""
