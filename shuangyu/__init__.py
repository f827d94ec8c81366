"""Shuangyu (双语): from raw Chinese and English text to a small language model you can evaluate, talk to and
share.

One package, one sub-package per step of the flow; dependencies point one way (tests/test_layout.py checks):

    errors, files     the user-error type, atomic folder writes, size parsing (used everywhere)
    text              naming text sources, reading documents from files and Hub datasets
    tokenizer         training the byte-level BPE, loading a trained tokenizer
    data              tokenising, mixing and packing into cached blocks; the resumable block loader
    modeling          the PreTrainedModel (standalone: it is copied into every saved folder)
    evaluation        held-out bits per byte, lm-eval on local benchmark copies
    sharing           the model card and the Hub push
    training          the pieces of a training run (arguments, optimizer, checkpoints, ...) and the loop; SFT, LoRA
                      and DPO reuse them
    chat              talking to a saved model on a terminal
    planning          a compute budget to a model, tokens, batch, learning rate, memory and a training config
"""
