"""bf16/fp16 training without accelerate's fp32 copy of the model's outputs."""

from types import MethodType

from accelerate.utils.operations import ConvertOutputsToFp32
from torch import nn
from transformers import TrainerCallback


def drop_fp32_outputs(model: nn.Module) -> bool:
    """Under mixed precision accelerate wraps the model's forward twice: autocast inside and, around it, a
    conversion of every half-precision output to fp32. For a causal LM that converts the logits (batch x
    context x vocabulary: 3.3 GB in fp32 for GPT-2 124M at 16 x 1,024) at every step, though training reads
    only the loss, which the model computes in fp32 itself. This keeps the autocast and removes the
    conversion; True if there was one to remove."""
    forward = model.__dict__.get("forward")  # accelerate sets it on the instance
    function = getattr(forward, "__func__", forward)
    conversion = getattr(function, "__wrapped__", None)
    if not isinstance(conversion, ConvertOutputsToFp32):
        return False
    autocast_forward = conversion.model_forward
    model.forward = MethodType(autocast_forward, model) if hasattr(forward, "__func__") else autocast_forward
    return True


class HalfPrecisionOutputs(TrainerCallback):
    """Drops the conversion once Trainer has prepared the model (before the first step). For training
    whose loss is computed inside the model's forward and whose logits nothing else reads (pretraining)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        drop_fp32_outputs(model)
