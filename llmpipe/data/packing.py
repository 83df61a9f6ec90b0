"""The book's sliding window (ch2): one token stream cut into blocks of `context_length`, a block
starting every `stride` tokens. stride == context_length: no overlap; stride < context_length: overlap.
"""

from typing import Iterable, Iterator

import torch


def count_blocks(n_tokens: int, context_length: int, stride: int) -> int:
    if n_tokens < context_length:
        return 0
    return (n_tokens - context_length) // stride + 1


def sliding_blocks(token_lists: Iterable[list[int]], context_length: int, stride: int) -> Iterator[list[int]]:
    """Stream blocks from documents' token lists (concatenated in order), holding one block of memory."""
    buffer: list[int] = []
    for tokens in token_lists:
        buffer.extend(tokens)
        while len(buffer) >= context_length:
            yield buffer[:context_length]
            del buffer[:stride]


def causal_lm_batch(features: list[dict]) -> dict[str, torch.Tensor]:
    """Blocks are all full length, so labels are the inputs (the model shifts them). Not
    DataCollatorForLanguageModeling: with pad == EOS it would mask every EOS out of the loss."""
    input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids}
