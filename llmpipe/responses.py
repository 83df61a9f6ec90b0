"""A model's responses to many instructions (book ch7.7): batched, left-padded, KV-cached `generate`,
each response cut at EOS and stripped of the prompt format's markers."""

import copy
import re

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from llmpipe import artifacts, instructions

# An Alpaca-format response ends where the model starts another "### " section.
NEXT_SECTION = re.compile(r"(?:^|\n)### ")


def clean(text: str, prompt_format: str) -> str:
    """Drop a repeated "### Response:" marker and anything from the next section on."""
    text = text.strip()
    if prompt_format == "alpaca":
        text = text.removeprefix(instructions.RESPONSE_MARKER.strip()).lstrip()
        text = NEXT_SECTION.split(text, maxsplit=1)[0]
    return text.strip()


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:position]
    return tokens


@torch.inference_mode()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: GenerationConfig,
    prompt_format: str,
    batch_size: int,
    desc: str = "generating",
) -> list[str]:
    """One response per prompt, in order. Prompts are batched by length (less padding); a batch gets
    the new tokens that fit the context after its longest prompt, and a prompt that fills the context
    alone gets an empty response."""
    model.eval()
    add_special = prompt_format != "chat"  # a chat template already writes its special tokens
    encoded = [tokenizer(p, add_special_tokens=add_special)["input_ids"] for p in prompts]
    context = artifacts.context_length(model)
    eos_ids = {settings.eos_token_id} if isinstance(settings.eos_token_id, int) else set(settings.eos_token_id or [])
    responses = [""] * len(prompts)
    fitting = sorted((i for i in range(len(prompts)) if len(encoded[i]) < context), key=lambda i: len(encoded[i]))
    with tqdm(total=len(prompts), desc=desc, unit="response") as progress:
        progress.update(len(prompts) - len(fitting))
        for start in range(0, len(fitting), batch_size):
            batch = fitting[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding_side="left", return_tensors="pt")
            inputs = padded.to(model.device)
            width = inputs["input_ids"].shape[1]
            batch_settings = copy.copy(settings)
            batch_settings.max_new_tokens = min(settings.max_new_tokens, context - width)
            output = model.generate(**inputs, generation_config=batch_settings)
            for i, row in zip(batch, output[:, width:].tolist()):
                text = tokenizer.decode(until_eos(row, eos_ids), skip_special_tokens=True)
                responses[i] = clean(text, prompt_format)
            progress.update(len(batch))
    return responses
