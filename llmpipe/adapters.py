"""LoRA settings and saving shared by the classifier and the instruction stages (book appendix E: r 16, alpha 16,
every linear layer)."""

from pathlib import Path

from peft import LoraConfig, TaskType

GPT2_LINEAR_LAYERS = ["c_attn", "c_proj", "c_fc"]


def lora_config(settings: dict, task_type: TaskType) -> LoraConfig:
    """The recipe's `lora` section over the book's defaults. GPT-2's linear layers are Conv1D (weights
    stored transposed), which `fan_in_fan_out` tells PEFT."""
    defaults = {"r": 16, "lora_alpha": 16, "target_modules": GPT2_LINEAR_LAYERS, "fan_in_fan_out": True}
    return LoraConfig(task_type=task_type, **{**defaults, **settings})


def save_adapter_and_merged(model, tokenizer, adapter_dir: Path, merged_dir: Path) -> None:
    """The adapter (loads with PeftModel.from_pretrained on the base) and the base with the adapter
    merged in (loads with stock from_pretrained), each with the tokenizer."""
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    tokenizer.save_pretrained(str(merged_dir))
