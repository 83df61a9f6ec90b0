"""The judge (book ch7.8): ask a model to score a response against the reference, 0 to 100.

The protocol is the book's: the judge sees the instruction, the correct output and the model's output,
and is asked for an integer only. Two backends implement it (`hf`, `openai` beside this module; `backends.load` picks one); both return a
`Verdict` for every example, so nothing is dropped: a verdict without a score is counted as unscored.
"""

from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmpipe import config

SCORES = range(0, 101)


@dataclass
class JudgeSettings:
    backend: Literal["hf", "openai"] = "hf"
    # hf: a model folder or Hub id ("self": the sft stage's model); openai: the endpoint's model name
    model: str = "self"
    prompt_format: Literal["auto", "chat", "alpaca"] = "auto"  # hf: auto = chat if the tokenizer has a template
    # hf: first_number = the number the answer begins with; exact = the score then EOS, nothing else (judge/scoring.py)
    reading: Literal["first_number", "exact"] = "first_number"
    base_url: str | None = config.checked(  # openai: e.g. http://localhost:11434/v1 (Ollama); default: $OPENAI_BASE_URL, else OpenAI
        None, lambda url: url.startswith(("http://", "https://")), "an http:// or https:// URL, e.g. http://localhost:11434/v1"
    )
    api_key_env: str = "OPENAI_API_KEY"  # openai: the environment variable holding the key (never the key itself)
    timeout: float = config.checked(60.0, lambda seconds: seconds > 0, "above 0 seconds")  # openai: seconds per request
    max_retries: int = config.at_least(0, 3)  # openai: retries with exponential backoff on connection errors, 429 and 5xx
    max_tokens: int = config.at_least(1, 8)  # openai: tokens the judge may answer with
    seed: int = 123  # openai: sent with temperature 0 so endpoints that honour it answer reproducibly


@dataclass
class Verdict:
    score: float | None  # None: the judge's answer could not be read as a score (counted, never dropped)
    detail: dict = field(default_factory=dict)


class Judge(Protocol):
    identity: str

    def __call__(self, request: str, reference: str, response: str) -> Verdict: ...


def prompt(request: str, reference: str, response: str) -> str:
    """The book's judge prompt: the instruction, the correct output, the model's output, integer only."""
    return (
        f"Given the input `{request}` and correct output `{reference}`, "
        f"score the model response `{response}` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )
