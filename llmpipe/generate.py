"""Decoding (book ch5.3): greedy, or sampling with temperature, top-k and top-p, via `generate`."""

import argparse

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, TextStreamer, set_seed

from llmpipe import artifacts
from llmpipe.errors import UserError


def decoding(
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> GenerationConfig:
    """temperature 0 means greedy, as in the book; otherwise sample from the scaled, filtered distribution."""
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be at least 1 (got {top_k}); leave it unset to sample from every token")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (got {top_p}): the share of probability mass to sample from")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **(sampling if temperature > 0 else {"do_sample": False}),
    )


def check_prompt(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int) -> None:
    """An empty prompt, or one that leaves no room for `max_new_tokens` in the context, is an error."""
    if not prompt.strip():
        raise UserError("the prompt is empty; give some text to continue")
    n_prompt = len(tokenizer(prompt)["input_ids"])
    context = artifacts.context_length(model)
    if n_prompt + max_new_tokens > context:
        raise UserError(
            f"the prompt ({n_prompt} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
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
        output = model.generate(**inputs, generation_config=settings, streamer=streamer)
    return tokenizer.decode(output[0, n_prompt:], skip_special_tokens=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (e.g. artifacts/pretrain) or Hub id")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample only within this cumulative probability")
    parser.add_argument("--seed", type=int, default=123, help="random seed for sampling (default: %(default)s)")


def main(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or positive")
    tokenizer = artifacts.load_tokenizer(args.model)
    model = artifacts.load_causal_lm(args.model).eval()
    artifacts.check_vocabulary(model, tokenizer, args.model)
    set_seed(args.seed)
    settings = decoding(tokenizer, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    continue_text(model, tokenizer, args.prompt, settings, streamer=TextStreamer(tokenizer))
