import pytest

from llmpipe.data.packing import count_blocks, sliding_blocks


@pytest.mark.parametrize(
    "n_tokens, context, stride, expected",
    [
        (10, 4, 4, 2),  # no overlap: [0..3] [4..7], the last 2 tokens dropped
        (12, 4, 4, 3),
        (10, 4, 2, 4),  # overlap: starts 0, 2, 4, 6
        (10, 4, 1, 7),  # the book's stride-1 window
        (3, 4, 4, 0),  # shorter than one block
    ],
)
def test_block_count_with_and_without_overlap(n_tokens, context, stride, expected):
    documents = [list(range(0, 3)), list(range(3, n_tokens))]  # blocks cross document boundaries
    blocks = list(sliding_blocks(documents, context, stride))
    assert len(blocks) == expected == count_blocks(n_tokens, context, stride)
    assert blocks == [list(range(start, start + context)) for start in range(0, expected * stride, stride)]


def test_overlapping_blocks_share_context_length_minus_stride_tokens():
    blocks = list(sliding_blocks([list(range(100))], 8, 6))
    for first, second in zip(blocks, blocks[1:]):
        assert first[6:] == second[:2]
