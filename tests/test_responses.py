import pytest

from llmpipe import generation
from llmpipe.data import instructions
from llmpipe.generation import clean, generate_responses


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Paris.", "Paris."),
        ("### Response:\nParis.", "Paris."),
        ("Paris.\n\n### Instruction:\nName a city.", "Paris."),
        ("### Instruction:\nName a city.", ""),
        ("  Paris.  ", "Paris."),
    ],
)
def test_alpaca_responses_are_cut_at_the_next_section(raw, expected):
    assert clean(raw, "alpaca") == expected


def test_chat_responses_are_only_stripped():
    assert clean(" ### Paris. ", "chat") == "### Paris."


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(tiny_model, tokenizer):
    prompts = [instructions.alpaca_prompt({"instruction": text}) for text in ("Hi.", "Name a painter of the town.", "Why?")]
    settings = generation.decoding(tokenizer, generation.Decoding(12))
    batched = generate_responses(tiny_model, tokenizer, prompts, settings, "alpaca", batch_size=3)
    single = [generate_responses(tiny_model, tokenizer, [p], settings, "alpaca", batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(batched)


def test_a_prompt_that_fills_the_context_gets_an_empty_response_and_is_kept(tiny_model, tokenizer):
    too_long = "word " * 400
    settings = generation.decoding(tokenizer, generation.Decoding(4))
    answers = generate_responses(tiny_model, tokenizer, ["Hi.", too_long], settings, "alpaca", batch_size=2)
    assert len(answers) == 2 and answers[1] == ""
