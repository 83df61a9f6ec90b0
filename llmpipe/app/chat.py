"""Chat and Generate: the prompt a model sees (the chat template over the turns that fit its context, or the
book's Alpaca prompt for one message) and its answer streamed as it is generated, under the decoding rules of
`llmpipe generate`, ending at the model's EOS."""

import threading
from typing import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, set_seed

from llmpipe import artifacts, generation
from llmpipe.app.models import LanguageModel
from llmpipe.commands.generate import checked_decoding
from llmpipe.data import instructions
from llmpipe.generation import Decoding

# the decoding controls' labels, which name them in error messages
LABELS = {"max_new_tokens": "max new tokens", "temperature": "temperature", "top_k": "top-k", "top_p": "top-p", "seed": "seed"}


def whole(value: float | None) -> int | None:
    """A count from a control: sliders and numbers hand floats."""
    return None if value is None else int(value)


def decoding(max_new_tokens, temperature, top_k, top_p, seed) -> Decoding:
    """The decoding controls' values as `llmpipe generate`'s settings, under its rules, a refusal naming the control."""
    values = {"max_new_tokens": whole(max_new_tokens), "temperature": float(temperature), "top_k": whole(top_k),
              "top_p": top_p, "seed": whole(seed)}
    return checked_decoding(values, LABELS.get)


def text_of(content) -> str:
    """A chat message's text: Gradio hands history content as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


def prompt_tokens(lm: LanguageModel, prompt: str) -> int:
    return len(lm.tokenizer(prompt, add_special_tokens=not lm.multi_turn)["input_ids"])


def chat_prompt(lm: LanguageModel, history: list[dict], message: str, max_new_tokens: int) -> str:
    """The prompt for `message` after `history` (Gradio's role/content dicts). A chat-template model sees the
    latest turns that leave room for `max_new_tokens` in its context (the oldest are dropped first); an
    Alpaca model sees the message alone, one instruction as the book's models were tuned on."""
    if not lm.multi_turn:
        return instructions.alpaca_prompt({"instruction": message})
    turns = [{"role": turn["role"], "content": text_of(turn["content"])} for turn in history if turn.get("role") in ("user", "assistant")]
    turns.append({"role": "user", "content": message})
    room = artifacts.context_length(lm.model) - max_new_tokens
    while True:
        prompt = lm.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        if len(turns) == 1 or prompt_tokens(lm, prompt) <= room:
            return prompt
        turns = turns[1:]
        while turns[0]["role"] != "user":  # a conversation starts with the user's turn
            turns = turns[1:]


class _Stopped(StoppingCriteria):
    """Ends generation once the reader is gone (the user pressed Stop or left): no work for nobody."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream(lm: LanguageModel, prompt: str, settings: Decoding) -> Iterator[str]:
    """The generated text so far, after each new piece the tokenizer can decode; generation runs in a thread
    and ends at the model's EOS, after `max_new_tokens`, or when the reader stops reading."""
    generation.check_prompt(lm.model, lm.tokenizer, prompt, settings.max_new_tokens)
    # a chat template writes its own special tokens (as the evaluate stage feeds such prompts)
    inputs = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=not lm.multi_turn).to(lm.model.device)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    stopped, failed = threading.Event(), []

    def generate() -> None:
        try:
            set_seed(settings.seed)
            with torch.inference_mode():
                lm.model.generate(**inputs, generation_config=generation.decoding(lm.tokenizer, settings), streamer=streamer,
                                  stopping_criteria=StoppingCriteriaList([_Stopped(stopped)]))
        except Exception as err:  # re-raised in the reader's thread, where the app reports it
            failed.append(err)
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            if piece:
                yield text
    finally:
        stopped.set()
        worker.join()
    if failed:
        raise failed[0]


def reply(lm: LanguageModel, history: list[dict], message: str, settings: Decoding) -> Iterator[str]:
    """The model's answer to `message` as it grows, cleaned as the evaluate stage cleans answers (an Alpaca
    answer ends where the model starts another `### ` section)."""
    for text in stream(lm, chat_prompt(lm, history, message, settings.max_new_tokens), settings):
        yield generation.clean(text, lm.prompt_format)
