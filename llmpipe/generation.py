"""Decoding (book ch5.3, 7.7): the settings for `generate` (greedy, or sampling with temperature, top-k and
top-p), and a model's responses to many instructions: batched, left-padded, KV-cached `generate`, each
response cut at EOS and stripped of the prompt format's markers."""

import copy
import math
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from llmpipe import artifacts, config
from llmpipe.data import instructions
from llmpipe.errors import UserError


@dataclass
class Decoding:
    """How to decode: checked where it enters (a recipe's `decoding` section, `llmpipe generate`'s options)."""

    max_new_tokens: int = config.at_least(1, 128)
    temperature: float = config.checked(0.0, lambda t: 0 <= t < math.inf, "0 (greedy, the book's) or a positive finite number (sampling)")
    top_k: int | None = config.checked(None, lambda k: k >= 1, "at least 1; leave it unset to sample from every token")
    top_p: float | None = config.checked(None, lambda p: 0 < p <= 1, "in (0, 1]: the share of probability mass to sample from")
    seed: int = config.seed(123)  # for sampling


def idle_filters(settings: Decoding) -> list[str]:
    """The sampling filters set with greedy decoding, where they would do nothing (named, so a user who
    meant to sample is told rather than getting greedy answers)."""
    return [name for name in ("top_k", "top_p") if settings.temperature == 0 and getattr(settings, name) is not None]


def decoding(tokenizer: PreTrainedTokenizerBase, settings: Decoding) -> GenerationConfig:
    """temperature 0 means greedy, as in the book; otherwise sample from the scaled, filtered distribution."""
    # top_k 0, not None: transformers fills None with its default of 50, and an unset filter means none here
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_k": settings.top_k or 0, "top_p": settings.top_p}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **(sampling if settings.temperature > 0 else {"do_sample": False}),
    )


def with_every_rank() -> bool:
    """Whether generation runs in several processes at once (the training stages' samples): each rank then
    steps until all have finished, since under FSDP every forward needs every rank (`synced_gpus`)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def check_prompt(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int,
                 where: str = "") -> None:
    """An empty prompt, or one that leaves no room for `max_new_tokens` in the context, is an error;
    `where` ("<file>: `key`: ") names a prompt that comes from a recipe."""
    if not prompt.strip():
        raise UserError(f"{where}the prompt is empty; give some text to continue")
    n_prompt = len(tokenizer(prompt)["input_ids"])
    context = artifacts.context_length(model)
    if n_prompt + max_new_tokens > context:
        raise UserError(
            f"{where}the prompt ({n_prompt} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {context} tokens; ask for fewer new tokens or shorten the prompt"
        )


def continue_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    settings: GenerationConfig,
    streamer: TextStreamer | None = None,
) -> str:
    """The prompt's continuation (without the prompt)."""
    check_prompt(model, tokenizer, prompt, settings.max_new_tokens)
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    n_prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        output = model.generate(**inputs, generation_config=settings, streamer=streamer, synced_gpus=with_every_rank())
    return tokenizer.decode(output[0, n_prompt:], skip_special_tokens=True)


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
            output = model.generate(**inputs, generation_config=batch_settings, synced_gpus=with_every_rank())
            for i, row in zip(batch, output[:, width:].tolist()):
                text = tokenizer.decode(until_eos(row, eos_ids), skip_special_tokens=True)
                responses[i] = clean(text, prompt_format)
            progress.update(len(batch))
    return responses
