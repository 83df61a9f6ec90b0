"""The book's judged examples (ch7.8, data/judge-ratings/): 100 instructions with a reference, each answered
by two fine-tuned GPT-2 models; GPT-4 scored every answer 0-100, Llama 3 8B (the book's judge) model 1's.

Model 1's answers are the development half (anything a judge chooses is chosen on them), model 2's the
held-out half (reported, never chosen by). Llama 3 8B's model-2 list has 99 scores that cannot be lined up
with the answers (data/SOURCES.md), so it is not read."""

import json
from dataclasses import dataclass
from pathlib import Path

from llmpipe.data import instructions
from llmpipe.errors import UserError

EXAMPLES = "eval-example-data.json"
HALVES = {"development": 1, "held-out": 2}  # half -> the book's model number
GOLD = "gpt4-model-{}-response.json"
BOOK_JUDGE = "llama3-8b-model-1-response.json"  # development half only


@dataclass
class RatedHalf:
    requests: list[str]
    references: list[str]
    responses: list[str]
    gold: list[int]  # GPT-4's scores
    book_judge: list[int] | None  # Llama 3 8B's scores, where they line up


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; copy the book's judge ratings there (data/SOURCES.md says where from)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def scores(path: Path, count: int) -> list[int]:
    """A list of `count` integer scores 0-100, or an error naming the file and the entry."""
    found = read_json(path)
    if not isinstance(found, list):
        raise UserError(f"{path}: expected a JSON list of integer scores 0-100, got {type(found).__name__}")
    if len(found) != count:
        raise UserError(f"{path}: {len(found)} scores for {count} answers; each entry of {EXAMPLES} needs exactly one score, in order")
    for at, score in enumerate(found):
        if not isinstance(score, int) or isinstance(score, bool):
            raise UserError(f"{path}: entry {at} is {score!r}, not an integer score; every entry must be an integer 0-100")
        if not 0 <= score <= 100:
            raise UserError(f"{path}: entry {at} is {score}, outside 0-100; every entry must be an integer 0-100")
    return found


def load(folder: Path) -> dict[str, RatedHalf]:
    """Both halves, checked: every score list lines up with the examples."""
    examples_path = folder / EXAMPLES
    examples = read_json(examples_path)
    if not isinstance(examples, list) or not examples:
        raise UserError(f"{examples_path}: expected a non-empty JSON list of rated examples")
    fields = ("instruction", "input", "output", *(f"model {model} response" for model in HALVES.values()))
    for at, entry in enumerate(examples):
        if not isinstance(entry, dict) or (missing := [key for key in fields if not isinstance(entry.get(key), str)]) :
            raise UserError(f"{examples_path}: entry {at} lacks {', '.join(missing) if isinstance(entry, dict) else 'its fields'}; "
                            f"each entry needs the strings {', '.join(fields)}")
    requests = [instructions.request(entry) for entry in examples]
    references = [entry["output"] for entry in examples]
    return {
        half: RatedHalf(
            requests, references, [entry[f"model {model} response"].strip() for entry in examples],
            scores(folder / GOLD.format(model), len(examples)),
            scores(folder / BOOK_JUDGE, len(examples)) if model == 1 else None,
        )
        for half, model in HALVES.items()
    }
