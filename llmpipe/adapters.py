"""What fine-tuning trains when it does not train every weight: LoRA adapters (book appendix E) on any
decoder-only model transformers knows, or the last decoder block and the final norm (book ch6)."""

from pathlib import Path

from peft import LoraConfig, TaskType
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from llmpipe.errors import UserError


def lora_config(settings: dict, task_type: TaskType, model: PreTrainedModel) -> LoraConfig:
    """The recipe's `lora` section over the book's defaults: r 16, alpha 16, every linear layer of the
    decoder (PEFT's `all-linear` finds them in any architecture: GPT-2's c_attn, c_proj, c_fc; Llama's
    q/k/v/o_proj and gate/up/down_proj; never the output layer). GPT-2's linear layers are Conv1D
    (weights stored transposed), which `fan_in_fan_out` tells PEFT."""
    defaults = {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"}
    if any(isinstance(module, Conv1D) for module in model.modules()):
        defaults["fan_in_fan_out"] = True
    return LoraConfig(task_type=task_type, **{**defaults, **settings})


def last_block_and_final_norm(model: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """The decoder's last block and the norm after it, from the base model's own layout: its one
    ModuleList of blocks (GPT-2's `h`, Llama's `layers`) and the one module with weights after it
    (`ln_f`, `norm`)."""
    children = list(model.base_model.children())
    blocks = [i for i, child in enumerate(children) if isinstance(child, nn.ModuleList)]
    after = [child for child in children[blocks[0] + 1 :] if next(child.parameters(), None) is not None] if len(blocks) == 1 else []
    if len(after) != 1:
        raise UserError(
            f"`trainable: last_block` finds no single list of blocks followed by a final norm in "
            f"{type(model.base_model).__name__}; use `trainable: all` or `lora`"
        )
    return children[blocks[0]][-1], after[0]


def save_adapter_and_merged(model, tokenizer, adapter_dir: Path, merged_dir: Path) -> None:
    """The adapter (loads with PeftModel.from_pretrained on the base) and the base with the adapter
    merged in (loads with stock from_pretrained), each with the tokenizer."""
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    tokenizer.save_pretrained(str(merged_dir))
