"""Stage `corpus` (book ch2): documents -> token ids (`datasets.map`, batched, multi-process), an EOS
after each document, then blocks of `context_length` every `stride` tokens, saved with `save_to_disk`
in shards. Every step streams through Arrow files on disk, so a corpus larger than memory works:
memory holds a tokenisation batch (`batch_size` documents), not the corpus."""

import argparse
import os
import time
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, Features, List, Value
from datasets.fingerprint import Hasher
from datasets.utils.py_utils import convert_file_size_to_int

from llmpipe import artifacts, config
from llmpipe.config import at_least
from llmpipe.data import documents, packing
from llmpipe.errors import UserError
from llmpipe.runtime import atomic
from llmpipe.stages import base

BLOCK_FEATURES = Features({"input_ids": List(Value("int32"))})


@dataclass
class CorpusRecipe:
    context_length: int = at_least(2, 256)  # tokens per block (the model's n_positions must be at least this)
    stride: int | None = at_least(1, None)  # tokens between block starts; default context_length (no overlap)
    num_proc: int = at_least(1, 1)  # processes for tokenisation
    batch_size: int = at_least(1, 1000)  # documents per tokenisation batch
    # the largest Arrow file of the saved corpus
    shard_size: str = config.checked("500MB", lambda size: _size_in_bytes(size) > 0, "a size such as 500MB or 2GB")


def _size_in_bytes(size: str) -> int:
    try:
        return convert_file_size_to_int(size)
    except ValueError:
        return 0


def tokenize(splits: DatasetDict, tokenizer, recipe: CorpusRecipe) -> DatasetDict:
    eos = tokenizer.eos_token_id

    def encode(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc + [eos] for doc in ids], "n_tokens": [len(doc) + 1 for doc in ids]}

    return splits.map(
        encode, batched=True, batch_size=recipe.batch_size, num_proc=recipe.num_proc if recipe.num_proc > 1 else None,
        remove_columns=["text"], desc="tokenize",
    )


def _blocks(token_docs: Dataset, context_length: int, stride: int):
    ids = (doc for batch in token_docs.select_columns(["input_ids"]).iter(batch_size=1000) for doc in batch["input_ids"])
    for block in packing.sliding_blocks(ids, context_length, stride):
        yield {"input_ids": block}


def count_tokens(token_docs: Dataset) -> int:
    return sum(sum(batch["n_tokens"]) for batch in token_docs.select_columns(["n_tokens"]).iter(batch_size=10_000))


def pack(tokenized: DatasetDict, context_length: int, stride: int, cache_dir: str) -> DatasetDict:
    # datasets would derive the blocks' fingerprint from the scratch folder's random path; one derived from the
    # tokenised documents' (deterministic) fingerprint keeps the saved corpus byte-identical run to run, so DVC
    # does not rerun every later stage when the corpus stage reruns with the same output
    return DatasetDict({
        split: Dataset.from_generator(
            _blocks, features=BLOCK_FEATURES, cache_dir=cache_dir, split=split,
            gen_kwargs={"token_docs": docs, "context_length": context_length, "stride": stride},
            fingerprint=Hasher.hash([docs._fingerprint, context_length, stride]),
        )
        for split, docs in tokenized.items()
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base.add_common_arguments(parser, "corpus", CorpusRecipe)
    parser.add_argument("--tokenizer", default="artifacts/tokenizer", help="tokenizer folder (default: %(default)s)")
    parser.add_argument("--output", default="artifacts/corpus", help="dataset folder to write (default: %(default)s)")


def main(args: argparse.Namespace) -> None:
    job = base.begin(args, "corpus", CorpusRecipe)
    recipe = job.recipe
    stride = recipe.context_length if recipe.stride is None else recipe.stride
    if stride > recipe.context_length:  # blocks would skip tokens (the lower bounds are the fields' own)
        raise UserError(f"{job.recipe_path}: `stride` must be at most context_length ({recipe.context_length}), got {stride}")
    tokenizer = artifacts.load_tokenizer(args.tokenizer)
    if tokenizer.eos_token_id is None:
        raise UserError(f"{args.tokenizer}: the tokenizer has no EOS token to put between documents")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes of `map` parallelise instead
    with atomic.scratch(args.output) as workdir:
        docs = documents.load(job.params.data, workdir)
        with job.tracker:
            job.log_config()
            tokenized = tokenize(docs.splits, tokenizer, recipe)
            metrics = {"documents": sum(docs.splits.num_rows.values()), "duplicates_removed": docs.duplicates_removed}
            for split, docs_of_split in tokenized.items():
                n_tokens = count_tokens(docs_of_split)
                n_blocks = packing.count_blocks(n_tokens, recipe.context_length, stride)
                if n_blocks == 0:
                    raise UserError(
                        f"the {split} split has {n_tokens} tokens, fewer than one block of "
                        f"{recipe.context_length}; add text or lower `context_length` in {job.recipe_path}"
                    )
                metrics |= {f"{split}_documents": docs_of_split.num_rows, f"{split}_tokens": n_tokens, f"{split}_blocks": n_blocks}
            with atomic.directory(args.output) as staging:
                pack(tokenized, recipe.context_length, stride, str(workdir)).save_to_disk(str(staging), max_shard_size=recipe.shard_size)
            total_tokens = metrics["train_tokens"] + metrics["validation_tokens"]
            metrics["tokens_per_second"] = round(total_tokens / (time.perf_counter() - job.started), 1)  # reading included
            job.finish(
                metrics,
                f"{metrics['train_blocks']} train / {metrics['validation_blocks']} validation blocks of "
                f"{recipe.context_length} tokens (stride {stride}) from {total_tokens} tokens -> {args.output} "
                f"({metrics['tokens_per_second']:,.0f} tokens/s)",
            )
