"""The byte-level BPE tokenizer for Chinese + English: its special tokens, training (train_bpe, bpe) and
loading a trained one (loading)."""
