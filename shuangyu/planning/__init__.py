"""Planning a pretraining run from a compute budget: `python -m shuangyu.planning.plan`.

laws.py (DeepSeek LLM and Chinchilla scaling laws, with their sources), shapes.py (presets, named shapes up to
~1B and the depth dial; parameters and FLOPs per token), hardware.py (GPU peaks, memory, measured MFU, prices),
memory.py (peak memory per GPU), planner.py (the arithmetic), plan.py (the command and the config it writes).
"""
