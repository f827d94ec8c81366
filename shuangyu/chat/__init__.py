"""Talk to a checkpoint on a terminal: `python -m shuangyu.chat CKPT` (the code is shuangyu/chat/cli.py)."""
