"""The pieces a training run is built from, one job per module, and the loop (train.py) that puts them together.

cli          train_clm.py's command: the flags and output folder checked before the heavy imports
arguments    one config dataclass per component, parsed from flags and YAML
checks       flags, output folder and launch checked before any heavy work
accelerator  the Accelerator: processes, precision, trackers
training_data  the prepared blocks (prepared here if needed) and their loaders
model        the model's config and the model
optim        AdamW, or Muon + AdamW in one optimizer; clipping and the step
schedule     learning-rate schedules
state        step, tokens, and the divergence guard
checkpoint   saving, resuming, the final folder
model_folder the shareable model folder in each checkpoint, and the saved weights without aliases
stopping     signals turned into a clean stop
validation   held-out loss and bits per byte per language, samples
metrics      tokens/s, FLOPs, MFU
run_log      train_log.jsonl, trackers, run_args.json
summary      what the model card says about the run
hub          --push_to_hub
finetune     what --sft and --lora_r change in the set-up (chat tokenizer and stop tokens, the LoRA adapter)
merge_lora   a LoRA adapter merged into a plain model folder (a command)
dpo          preference tuning through TRL's DPOTrainer (a command)
"""
