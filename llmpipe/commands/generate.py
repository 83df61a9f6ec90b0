"""`llmpipe generate` (book ch5.3): continue a prompt, greedy or sampled with temperature, top-k and top-p, streamed."""

import argparse

from transformers import TextStreamer, set_seed

from llmpipe import artifacts
from llmpipe.errors import UserError
from llmpipe.generation import continue_text, decoding


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
