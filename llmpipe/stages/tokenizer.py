"""Stage `tokenizer` (book ch2): byte-level BPE trained with `tokenizers` on the train documents only,
saved as a `PreTrainedTokenizerFast`; or, with `init_from`, an existing model's tokenizer."""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llmpipe import artifacts, config
from llmpipe.config import library_section
from llmpipe.data import documents
from llmpipe.errors import UserError
from llmpipe.hub import cards
from llmpipe.runtime import atomic
from llmpipe.stages import base

BPE_TRAINER_VOCAB = 30000  # tokenizers' BpeTrainer default, where a recipe names no vocab_size


@dataclass
class TokenizerRecipe:
    init_from: str | None = None  # Hub id or folder: take that model's tokenizer instead of training one
    eos_token: str = config.checked("<|endoftext|>", bool, "a token, not empty")  # ends every document; also BOS
    pad_token: str | None = None  # default: the EOS token
    trainer: dict = library_section(BpeTrainer)


def special_tokens(recipe: TokenizerRecipe) -> list[str]:
    return list(dict.fromkeys([recipe.eos_token, recipe.pad_token or recipe.eos_token, *recipe.trainer.get("special_tokens", [])]))


def check_trainer(recipe: TokenizerRecipe, source: str | Path) -> None:
    """The recipe's `trainer` section, checked before any document is read."""
    base.reject_owned(recipe.trainer, ("initial_alphabet",), f"{source}: `trainer", "GPT-2's scheme (every byte is a token)")
    smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(specials := special_tokens(recipe))
    if recipe.trainer.get("vocab_size", BPE_TRAINER_VOCAB) < smallest:
        raise UserError(f"{source}: `trainer.vocab_size` must be at least {smallest} (256 bytes + {len(specials)} special tokens)")


def train_bpe(texts: Iterable[str] | Iterable[list[str]], recipe: TokenizerRecipe, length: int | None = None) -> PreTrainedTokenizerFast:
    """GPT-2's scheme: bytes as the base alphabet (any UTF-8 text round-trips), no prefix space. `texts`
    may be an iterator (of texts or batches of texts): the trainer streams it; `length` is for its progress bar."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(**{**recipe.trainer, "special_tokens": special_tokens(recipe), "initial_alphabet": pre_tokenizers.ByteLevel.alphabet()})
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts) if length is None and isinstance(texts, list) else length)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=recipe.eos_token,
        eos_token=recipe.eos_token,
        pad_token=recipe.pad_token or recipe.eos_token,
        clean_up_tokenization_spaces=False,
    )


def bytes_per_token(tokenizer: PreTrainedTokenizerBase, batches: Iterable[list[str]]) -> float:
    n_bytes = n_tokens = 0
    for texts in batches:
        n_tokens += sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        n_bytes += sum(len(text.encode("utf-8")) for text in texts)
    return n_bytes / max(n_tokens, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_common_arguments(parser, "tokenizer", TokenizerRecipe)
    parser.add_argument("--output", default="artifacts/tokenizer", help="tokenizer folder to write (default: %(default)s)")


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "tokenizer", TokenizerRecipe)
    recipe = job.recipe
    check_trainer(recipe, job.recipe_path)
    with atomic.scratch(args.output) as workdir:
        docs = documents.load(job.params.data, workdir)
        with job.tracker:
            job.log_config()
            started = time.perf_counter()
            if recipe.init_from:
                tokenizer = artifacts.load_tokenizer(recipe.init_from)
            else:
                train = docs.splits["train"]
                tokenizer = train_bpe(documents.text_batches(train), recipe, length=len(train))
            train_seconds = time.perf_counter() - started
            efficiency = bytes_per_token(tokenizer, documents.text_batches(docs.splits["validation"]))
            metrics = {
                "vocab_size": len(tokenizer),
                "validation_bytes_per_token": round(efficiency, 4),
                "train_seconds": round(train_seconds, 2),
            }
            with atomic.directory(args.output) as staging:
                tokenizer.save_pretrained(staging)
                cards.write(staging, job.card("tokenizer", metrics, args.output, recipe.init_from))
            job.tracker.log_model_folder(args.output)
            job.finish(
                metrics,
                f"{len(tokenizer)}-token vocabulary -> {args.output} ({efficiency:.2f} bytes/token on validation)",
            )
