"""Compare: one instruction, two models' answers, decoded as the evaluate stage decodes them, each scored by
the evaluate stage's judge and by ROUGE-L against a reference answer when one is given."""

from dataclasses import dataclass
from functools import cache

from transformers import set_seed

from llmpipe import generation
from llmpipe.app.models import LanguageModel
from llmpipe.data import instructions
from llmpipe.errors import UserError
from llmpipe.generation import Decoding
from llmpipe.judge.base import Judge
from llmpipe.metrics import evaluate_modules


def entry(instruction: str, input_text: str = "", reference: str = "") -> dict:
    """The instruction as the data's entries hold one (the reference as its output)."""
    if not instruction.strip():
        raise UserError("the instruction is empty; write what the models should do")
    return {"instruction": instruction.strip(), "input": input_text.strip(), "output": reference.strip()}


def answer(lm: LanguageModel, asked: dict, settings: Decoding) -> str:
    """The model's answer as the evaluate stage gets it: the same prompt, decoding, cut at EOS and cleaning."""
    prompt = instructions.prompt_text(asked, lm.prompt_format, lm.tokenizer)
    generation.check_prompt(lm.model, lm.tokenizer, prompt, settings.max_new_tokens)
    set_seed(settings.seed)
    config = generation.decoding(lm.tokenizer, settings)
    return generation.generate_responses(lm.model, lm.tokenizer, [prompt], config, lm.prompt_format, batch_size=1, desc="answering")[0]


@dataclass
class Scores:
    judge: list[float | None]  # 0-100 per answer (None: the judge's answer was not a score)
    rouge_l: list[float]


@cache
def _judge_metric():
    return evaluate_modules.load("judge")


@cache
def _rouge_l():
    return evaluate_modules.load("rouge_l")


def scores(judge: Judge, asked: dict, answers: list[str]) -> Scores:
    """The judge's score and ROUGE-L of each answer against the entry's reference (its output)."""
    references = [instructions.reference(asked)] * len(answers)
    judged = _judge_metric().compute(
        predictions=answers, references=references, requests=[instructions.request(asked)] * len(answers), judge=judge
    )
    overlap = _rouge_l().compute(predictions=answers, references=references)
    return Scores(judged["scores"], overlap["rougeL_per_example"])
