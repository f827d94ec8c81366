"""Byte-level BPE for Chinese + English: the trainer, its pre-tokenization, and the text sources it reads."""
