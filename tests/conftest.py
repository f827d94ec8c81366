import os

# Tests never reach the network: every model and tokenizer is built locally or read from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
