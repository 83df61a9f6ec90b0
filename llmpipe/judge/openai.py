"""The `openai` judge: any OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp server, `transformers serve`,
OpenAI) through the `openai` client, which retries connection errors, 429 and 5xx with exponential
backoff. The answer must be an integer 0-100 and nothing else; any other answer is kept, unscored."""

import os
import re

import openai

from llmpipe.errors import UserError
from llmpipe.judge import base
from llmpipe.runtime import redact

INTEGER = re.compile(r"\s*(\d{1,3})\s*")


def parse_score(answer: str | None) -> int | None:
    """The integer the judge answered, if that is all it answered and it lies in 0-100."""
    match = INTEGER.fullmatch(answer or "")
    if match and int(match.group(1)) in base.SCORES:
        return int(match.group(1))
    return None


class OpenAIJudge:
    def __init__(self, settings: base.JudgeSettings):
        self.settings = settings
        # Endpoints such as Ollama or `transformers serve` need no key, but the client insists on one.
        key = os.environ.get(settings.api_key_env) or "no-key"
        self.client = openai.OpenAI(
            base_url=settings.base_url, api_key=key, timeout=settings.timeout, max_retries=settings.max_retries
        )
        self.base_url = redact.url(str(self.client.base_url))  # what messages, metrics and cards show
        self.identity = f"openai:{settings.model}@{self.base_url}"

    def __call__(self, request: str, reference: str, response: str) -> base.Verdict:
        try:
            reply = self.client.chat.completions.create(
                model=self.settings.model,
                messages=[{"role": "user", "content": base.prompt(request, reference, response)}],
                temperature=0,
                seed=self.settings.seed,
                max_tokens=self.settings.max_tokens,
            )
        except openai.APIStatusError as err:
            raise UserError(
                f"judge endpoint {self.base_url} answered HTTP {err.status_code} for model "
                f"`{self.settings.model}`: {_first_line(err.message)}; check the recipe's judge.model and "
                f"judge.base_url, and ${self.settings.api_key_env} if the endpoint needs a key"
            ) from None
        except openai.APIConnectionError as err:
            raise UserError(
                f"judge endpoint {self.base_url} did not answer ({_first_line(str(err))}) after "
                f"{self.settings.max_retries} retries; start the server (e.g. `ollama serve`), fix judge.base_url, "
                f"or raise judge.timeout ({self.settings.timeout:g} s)"
            ) from None
        except (openai.APIResponseValidationError, ValueError) as err:
            raise _not_a_completion(self.base_url, err) from None
        try:
            answer = reply.choices[0].message.content
        except (AttributeError, TypeError, IndexError) as err:
            raise _not_a_completion(self.base_url, err) from None
        return base.Verdict(score=parse_score(answer), detail={"answer": answer})


def _not_a_completion(base_url: str, err: Exception) -> UserError:
    return UserError(
        f"judge endpoint {base_url} answered with something that is not an OpenAI chat completion "
        f"({type(err).__name__}); check that judge.base_url is the server's OpenAI-compatible API (often ending in /v1)"
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else "no detail"
