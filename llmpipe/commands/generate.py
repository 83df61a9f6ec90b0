"""`llmpipe generate` (book ch5.3): continue a prompt, greedy or sampled with temperature, top-k and top-p, streamed."""

import argparse
import dataclasses
import functools
from typing import Callable

from transformers import TextStreamer, set_seed

from llmpipe import artifacts, config
from llmpipe.errors import UserError
from llmpipe.generation import Decoding, continue_text, decoding, idle_filters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    held_to_rule = functools.partial(config.option_type, Decoding)  # Decoding's checks, named by option
    parser.add_argument("--model", required=True, help="model folder (e.g. artifacts/pretrain) or Hub id")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=held_to_rule("max_new_tokens", int), default=50, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--temperature", type=held_to_rule("temperature", float), default=0.0, help="0 = greedy (default); >0 samples")
    parser.add_argument("--top-k", type=held_to_rule("top_k", int), default=None, help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=held_to_rule("top_p", float), default=None, help="sample only within this cumulative probability")
    parser.add_argument("--seed", type=held_to_rule("seed", int), default=123, help="random seed for sampling (default: %(default)s)")


def option(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def checked_decoding(values: dict, name: Callable[[str], str] = option) -> Decoding:
    """The Decoding `values` (field -> value) ask for, held to its rules; a value a field refuses, or a sampling
    filter with greedy decoding, is a UserError naming the control that set it (`name(field)`: an option here,
    a control's label in the app)."""
    for field in dataclasses.fields(Decoding):
        if broken := config.broken_rule(field, values[field.name]):
            raise UserError(f"{name(field.name)}: {broken}")
    settings = Decoding(**values)
    if idle := idle_filters(settings):
        named, temperature = " and ".join(name(field) for field in idle), name("temperature")
        raise UserError(f"{named} {'filters' if len(idle) == 1 else 'filter'} sampling, and {temperature} 0 decodes greedily: "
                        f"set {temperature} above 0, or drop {named}")
    return settings


def main(args: argparse.Namespace) -> None:
    settings = checked_decoding({field.name: getattr(args, field.name) for field in dataclasses.fields(Decoding)})
    tokenizer = artifacts.load_tokenizer(args.model)
    model = artifacts.load_causal_lm(args.model).eval()
    artifacts.check_vocabulary(model, tokenizer, args.model)
    set_seed(settings.seed)
    continue_text(model, tokenizer, args.prompt, decoding(tokenizer, settings), streamer=TextStreamer(tokenizer))
