"""What the model card says about a run at a checkpoint: the data mix and the recipe (rendered by
shuangyu.sharing.card.training_section)."""

from __future__ import annotations

from pathlib import Path

from shuangyu.data.loader import validation_rows
from shuangyu.data.prepared import PreparedData
from shuangyu.data.streaming import StreamedData
from shuangyu.training.arguments import TrainConfig
from shuangyu.training.state import TrainState


def training_summary(
    config: TrainConfig,
    data: PreparedData | StreamedData,
    state: TrainState,
    max_steps: int,
    processes: int,
    precision: str,
    validation: dict,
) -> dict:
    manifest = data.manifest
    sources = [
        {
            "name": s["name"],
            "files": [Path(f).name for f in s.get("files") or []],
            "dataset": s.get("dataset"),
            "weight": s.get("weight"),
            "docs_taken": s.get("docs_taken"),
            "tokens_taken": s.get("tokens_taken"),
            "passes": s.get("passes"),
        }
        for s in manifest["sources"]
    ]
    t, o, sched = config.train, config.optim, config.schedule
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * processes
    recipe = {
        "model": config.model.model_name_or_path or config.model.model_config,
        "tokenizer_vocabulary": manifest["tokenizer"]["vocab_size"],
        "block_size": data.block_size,
        "batch": f"{batch} rows x {data.block_size} tokens ({processes} process{'es' if processes > 1 else ''} x "
        f"{t.per_device_train_batch_size} rows x {t.gradient_accumulation_steps} accumulation)",
        "steps": state.step,
        "planned_steps": max_steps,
        "tokens_seen": state.tokens,
        "optimizer": o.optimizer + (f" ({o.muon_scale})" if o.optimizer == "muon" else ""),
        "learning_rate": o.learning_rate
        if o.embedding_learning_rate is None
        else f"{o.learning_rate} ({o.embedding_learning_rate} for the token embedding)",
        "weight_decay": o.weight_decay,
        "schedule": f"{sched.lr_scheduler_type}, {sched.warmup_steps} warmup steps",
        "gradient_clipping": o.max_grad_norm,
        "precision": "fp32" if precision == "no" else precision,
        "compiled": "yes (torch.compile)" if t.compile else "no",
        "attention": config.model.attn_implementation + (", per document" if config.data.document_attention else ""),
        "seed": t.seed,
        "validation": validation_measure(config, data),
    }
    if config.lora.lora_r:
        recipe["optimizer"] = "adamw (the LoRA adapter; shuangyu/training/finetune.py says why)"
    summary = {"sources": sources, "recipe": recipe, "validation": validation}
    return summary | finetune_summary(config, data)


def finetune_summary(config: TrainConfig, data: PreparedData | StreamedData) -> dict:
    """An SFT or LoRA run: the stage, the base model, the conversations (what the card says the model is)."""
    if not (config.sft.sft or config.lora.lora_r):
        return {"stage": "pretraining"}
    extra = {"stage": "sft" if config.sft.sft else "fine-tuning", "base_model": config.model.model_name_or_path}
    if data.is_conversations:
        extra["sources"] = [
            {
                "name": s["name"],
                "files": [Path(f).name for f in s.get("files") or []],
                "dataset": s.get("dataset"),
                "conversations": s["examples"],
                "truncated": s["truncated"],
                "skipped": s["skipped"],
                "trained_tokens": s["trained_tokens"],
            }
            for s in data.manifest["sources"]
        ]
        extra["packing"] = data.manifest["packing"]
    lora = config.lora
    if lora.lora_r:
        extra["lora"] = {
            "r": lora.lora_r,
            "alpha": lora.lora_alpha,
            "dropout": lora.lora_dropout,
            "target_modules": list(lora.lora_target_modules),
        }
    return extra


def validation_measure(config: TrainConfig, data: PreparedData | StreamedData) -> str:
    """What the held-out numbers are measured on: how many rows of each validation source, how often."""
    rows = config.logging.eval_rows
    counts = {name: validation_rows(len(ds), rows) for name, ds in data.validation_datasets().items()}
    if not counts:
        return "none"
    each = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    every = f"every {config.logging.eval_steps} steps"
    return f"{every}, the first rows of each source: {each} (rows of {data.block_size} tokens)"
