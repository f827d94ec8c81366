"""Shuangyu training components (data, optimizer, schedule, checkpoint, metrics) that train_clm.py is built from."""
