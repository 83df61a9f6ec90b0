"""Preference data (the book's ch7 bonus, DPO): the instruction data's entries, in the same order, each
with a `chosen` and a `rejected` answer. Being the same entries, they are cut by the same `instructions.yaml`
split, so no pair whose instruction evaluate tests on is trained on.

Each of the book's pairs holds the original output once: either `rejected`, against a more polite rewrite
(`polite_preferred`), or `chosen`, against an impolite rewrite (`impolite_rejected`)."""

from pathlib import Path

from llmpipe.data import instructions
from llmpipe.errors import UserError

PAIR_TYPES = ("polite_preferred", "impolite_rejected")
ANSWERS = ("chosen", "rejected")


def load(path: str | Path, instruction_entries: list[dict], instruction_data: str, prompt_format: str,
         settings: object) -> list[dict]:
    """Every pair, checked: both answers are text, some pair prefers one answer to another, and the entries
    are the instruction data's (`instruction_entries`, read from `instruction_data`) in the same order."""
    located = instructions.located_entries(path, prompt_format, settings, key="preference_data")
    for where, entry in located:
        for answer in ANSWERS:
            if answer not in entry:
                raise UserError(f"{where}: missing `{answer}`; a preference entry needs `chosen` and `rejected` answers")
            if not isinstance(entry[answer], str):
                raise UserError(f"{where}: `{answer}` must be text (a string), got {type(entry[answer]).__name__}")
    if all(entry["chosen"] == entry["rejected"] for _, entry in located):
        raise UserError(f"{path}: every pair has `chosen` equal to `rejected` (e.g. {located[0][0]}), so there is "
                        "no preference to learn; give each entry the answer to prefer and the one to avoid")
    _check_same_entries(located, instruction_entries, path, instruction_data)
    return [entry for _, entry in located]


def splits(path: str | Path, instruction_data: str, task: instructions.InstructionTask, settings: Path) -> dict[str, list[dict]]:
    """The pairs cut by `instructions.yaml` (`settings`, read into `task`), as sft, lora and evaluate cut the
    instruction data: the file holds the same entries in the same order, or is refused."""
    originals = instructions.load(instruction_data, task.prompt_format, settings)
    return instructions.split(load(path, originals, instruction_data, task.prompt_format, settings), task.split, settings)


def _check_same_entries(located: list[tuple[str, dict]], instruction_entries: list[dict], path, instruction_data: str) -> None:
    if len(located) != len(instruction_entries):
        raise UserError(
            f"{path}: {len(located)} entries, but the instruction data ({instruction_data}) has {len(instruction_entries)}; "
            "the preference file must hold the instruction data's entries in the same order, so that instructions.yaml's "
            "split keeps every pair evaluate tests on out of training"
        )
    for (where, entry), original in zip(located, instruction_entries):
        if instructions.as_messages(entry)[:-1] != instructions.as_messages(original)[:-1]:
            raise UserError(
                f"{where}: asks {instructions.request(entry)[-80:]!r}, not what the instruction data ({instruction_data}) "
                "asks at the same place; the preference file must hold the instruction data's entries in the same order, "
                "so that instructions.yaml's split keeps every pair evaluate tests on out of training"
            )


def pair_type(entry: dict) -> str | None:
    """Which answer the original output (the entry's reference) is: `rejected` for a polite rewrite, `chosen`
    against an impolite one; None when it is both (chosen equals rejected) or neither."""
    original = instructions.reference(entry)
    if entry["rejected"] == original != entry["chosen"]:
        return "polite_preferred"
    if entry["chosen"] == original != entry["rejected"]:
        return "impolite_rejected"
    return None


def preference_example(entry: dict, prompt_format: str) -> dict:
    """TRL's preference format: the prompt as sft shows it, and the two answers (messages for a chat prompt)."""
    prompt = instructions.prompt_completion(entry, prompt_format)["prompt"]
    if prompt_format == "chat":
        return {"prompt": prompt, **{answer: [{"role": "assistant", "content": entry[answer]}] for answer in ANSWERS}}
    return {"prompt": prompt, **{answer: entry[answer] for answer in ANSWERS}}
