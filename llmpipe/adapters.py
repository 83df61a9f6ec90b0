"""LoRA settings shared by the classifier and the instruction stages (book appendix E: r 16, alpha 16,
every linear layer)."""

from peft import LoraConfig, TaskType

GPT2_LINEAR_LAYERS = ["c_attn", "c_proj", "c_fc"]


def lora_config(settings: dict, task_type: TaskType) -> LoraConfig:
    """The recipe's `lora` section over the book's defaults. GPT-2's linear layers are Conv1D (weights
    stored transposed), which `fan_in_fan_out` tells PEFT."""
    defaults = {"r": 16, "lora_alpha": 16, "target_modules": GPT2_LINEAR_LAYERS, "fan_in_fan_out": True}
    return LoraConfig(task_type=task_type, **{**defaults, **settings})
