"""Shuangyu's special tokens, the one definition every step uses."""

EOS_TOKEN = "<|endoftext|>"  # document separator; also BOS and EOS
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")  # reserved for chat (ChatML)
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS)
