"""What fine-tuning trains when it does not train every weight, on any decoder-only model transformers
knows: PEFT's adapters (LoRA, book appendix E; IA3; prompt and prefix tuning), or a chosen part of the model
itself (the last decoder block and the final norm, book ch6; the bias terms, BitFit)."""

import inspect
from pathlib import Path
from typing import Callable

import peft
import torch
import transformers
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer
from transformers.pytorch_utils import Conv1D

from llmpipe import artifacts
from llmpipe.errors import UserError


def transposed_weights(model: PreTrainedModel) -> dict:
    """`fan_in_fan_out` for PEFT where the model's linear layers are Conv1D (GPT-2's: weights stored transposed)."""
    return {"fan_in_fan_out": True} if any(isinstance(module, Conv1D) for module in model.modules()) else {}


def lora_config(settings: dict, task_type: TaskType, model: PreTrainedModel) -> LoraConfig:
    """The recipe's `lora` section over the book's defaults: r 16, alpha 16, every linear layer of the
    decoder (PEFT's `all-linear` finds them in any architecture: GPT-2's c_attn, c_proj, c_fc; Llama's
    q/k/v/o_proj and gate/up/down_proj; never the output layer). GPT-2's linear layers are Conv1D
    (weights stored transposed), which `fan_in_fan_out` tells PEFT."""
    _check_task_type("lora", settings)
    defaults = {"r": 16, "lora_alpha": 16, "target_modules": "all-linear", **transposed_weights(model)}
    return LoraConfig(task_type=task_type, **{**defaults, **settings})


def _check_task_type(method: str, settings: dict) -> None:
    if "task_type" in settings:
        raise UserError(f"`{method}.task_type` is set by llmpipe from the stage (its task); remove it")


# each PEFT method's config class, and the values a recipe's empty section starts from
PEFT_METHODS: dict[str, type[PeftConfig]] = {
    "lora": LoraConfig, "ia3": IA3Config, "prompt_tuning": PromptTuningConfig, "p_tuning": PromptEncoderConfig,
    "prefix_tuning": PrefixTuningConfig,
}
MERGEABLE = ("lora", "ia3")  # saved merged into the base too; the prompt methods stay adapters
PROMPT_AS_EMBEDDINGS = ("prompt_tuning", "p_tuning")  # the model gets embeddings, not token ids
PEFT_DEFAULTS = {name: {"num_virtual_tokens": 10} for name in ("prompt_tuning", "p_tuning", "prefix_tuning")}


def peft_config(method: str, settings: dict, task_type: TaskType, model: PreTrainedModel) -> PeftConfig:
    """The recipe's section for a PEFT `method` over its defaults. IA3's target and feed-forward modules
    default to PEFT's own per architecture; on GPT-2 (Conv1D layers) it needs `fan_in_fan_out` like LoRA."""
    if method == "lora":
        return lora_config(settings, task_type, model)
    if method == "prefix_tuning" and "past_key_values" not in inspect.signature(model.forward).parameters:
        raise UserError(
            f"`trainable: prefix_tuning`: PEFT {peft.__version__} hands the prefix to the model as `past_key_values`, "
            f"which {type(model).__name__} in transformers {transformers.__version__} no longer takes (it is `cache` "
            "now); use prompt_tuning, p_tuning or ia3 until PEFT follows"
        )
    _check_task_type(method, settings)
    defaults = {**PEFT_DEFAULTS.get(method, {}), **(transposed_weights(model) if method == "ia3" else {})}
    return PEFT_METHODS[method](task_type=task_type, **{**defaults, **settings})


def check_on_skeleton(build: Callable[[PreTrainedModel], PeftConfig], model_class: type, config: PretrainedConfig, where: str) -> None:
    """The PEFT config a recipe's section `build`s, tried on the base model's skeleton (on the meta device:
    no weights, no memory) where the recipe enters: PEFT's own refusals (a rank of 0, a dropout of 2, target
    modules the model lacks) then come before any training, as one line naming the recipe."""
    with torch.device("meta"):
        skeleton = model_class.from_config(config)
        try:
            get_peft_model(skeleton, build(skeleton))
        except (UserError, ValueError, TypeError) as err:
            raise UserError(f"{where}: {str(err).strip().splitlines()[0]}") from None


def text_positions(model) -> int:
    """Positions left for the text: the model's context, less a prompt-learning adapter's virtual tokens
    (PEFT puts them in front of the text)."""
    config = getattr(model, "active_peft_config", None)
    virtual = config.num_virtual_tokens if config is not None and config.is_prompt_learning else 0
    return artifacts.context_length(model) - virtual


def bias_terms(model: PreTrainedModel) -> list[nn.Parameter]:
    """Every bias of the base model (BitFit trains these): of its linear layers and of its norms."""
    found = [parameter for name, parameter in model.base_model.named_parameters() if name.endswith(".bias")]
    if not found:
        raise UserError(
            f"`trainable: bitfit` needs bias terms, and {type(model.base_model).__name__} has none "
            "(Llama-style models drop them); use `trainable: ia3` or `lora`, which train as few parameters"
        )
    return found


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


def save_adapter_and_merged(trainer: Trainer, adapter_dir: Path, merged_dir: Path, load_base: Callable[[], PreTrainedModel]) -> None:
    """The adapter (loads with PeftModel.from_pretrained on the base) and the base with it merged in (loads
    with stock from_pretrained), each with the tokenizer. Every rank calls it: Trainer's `save_model` gathers
    the adapter's weights where FSDP or DeepSpeed shard them. Rank 0 then merges the saved adapter into a
    fresh base from `load_base()` (the trained model may be sharded), so the merged folder is exactly what
    the adapter folder loads to."""
    _sort_module_names(trainer.model)
    trainer.save_model(str(adapter_dir))
    if trainer.is_world_process_zero():
        merged = PeftModel.from_pretrained(load_base(), str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(str(merged_dir))
        trainer.processing_class.save_pretrained(str(merged_dir))


def _sort_module_names(model: PeftModel) -> None:
    """PEFT writes its sets of module names (`target_modules`, IA3's `feedforward_modules`) to
    adapter_config.json in set order, which changes from process to process (Python salts string hashes);
    as sorted lists the file is byte-identical run to run, so DVC does not rerun the stages after a rerun
    that trained the same adapter. PEFT reads either back as a set."""
    for config in model.peft_config.values():
        for field, value in vars(config).items():
            if isinstance(value, set):
                setattr(config, field, sorted(value))
