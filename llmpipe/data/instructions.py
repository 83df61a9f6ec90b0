"""Instruction data (book ch7): load entries, split them, and render them as prompt + completion.

An entry is either `{"instruction", "input" (optional), "output"}` (the book's, Alpaca's) or
`{"messages": [{"role", "content"}, ...]}` ending with the assistant's answer. Files are JSON (a list)
or JSONL (one entry per line).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmpipe.data import splits
from llmpipe.errors import UserError
from llmpipe.inputs import read_text

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
RESPONSE_MARKER = "\n\n### Response:\n"

# A minimal chat template for models that have none: each turn is `<|role|>\n...`, the assistant's turn
# ends with the EOS token so the model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass
class InstructionTask:
    """`recipes/<recipe>/instructions.yaml`: how the instruction data is cut and shown to a model. The sft,
    lora and evaluate stages all read this one file, so no example is trained on and then tested."""

    split: dict[str, float] = field(default_factory=lambda: {"train": 0.85, "test": 0.1, "validation": 0.05})
    prompt_format: Literal["alpaca", "chat"] = "alpaca"  # chat: the tokenizer's chat template (a minimal one if it has none)

    def splits(self, data_file: str | Path, source: Path) -> dict[str, list[dict]]:
        """The data file's entries cut by `split`; `source` (this settings file) is named in errors."""
        return split(load(data_file, self.prompt_format, source), self.split, source)


def load(path: str | Path, prompt_format: str | None = None, settings: object = "instructions.yaml") -> list[dict]:
    """Every entry, checked; with a `prompt_format`, also that the format can show it (`settings` names
    where the format is set). An error names the entry: its line in a JSONL file, its index in a JSON list."""
    return [entry for _, entry in located_entries(path, prompt_format, settings)]


def located_entries(path: str | Path, prompt_format: str | None = None, settings: object = "instructions.yaml",
                    key: str = "instruction_data") -> list[tuple[str, dict]]:
    """`load`'s entries, each with where it is (`<file>: entry 3`, `<file>:4`) for errors about it; `key` is
    the params.yaml key that names the file."""
    path = Path(path)
    text = read_text(path, f"params.yaml `{key}`")
    if path.suffix == ".jsonl":
        located = [(f"{path}:{number}", _parse(line, path, number)) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        entries = _parse(text, path)
        located = [(f"{path}: entry {index}", entry) for index, entry in enumerate(entries)] if isinstance(entries, list) else []
    if not located:
        raise UserError(f"{path}: expected a non-empty list of entries")
    for where, entry in located:
        _check(entry, where)
        if prompt_format == "alpaca" and not alpaca_can_show(entry):
            raise UserError(f"{where}: a system message or several turns, which the Alpaca prompt cannot show; "
                            f"set `prompt_format: chat` in {settings}")
    if not any(reference(entry).strip() for _, entry in located):
        raise UserError(f"{path}: every entry's answer (`output`, or the last assistant message) is empty: the loss is on "
                        "the answers, so there is nothing to learn from; fill in the answers")
    return located


def _parse(text: str, path: Path, first_line: int = 1):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = first_line + err.lineno - 1
        raise UserError(f"{path}: not valid JSON at line {line}, column {err.colno}: {err.msg}") from None


def _check(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object, got {type(entry).__name__}")
    if "messages" in entry:
        messages = entry["messages"]
        if not isinstance(messages, list) or len(messages) < 2 or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise UserError(f"{where}: `messages` must be a list of at least two {{role, content}} objects")
        if messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message must be the assistant's answer")
        return
    for key in ("instruction", "output"):
        if not isinstance(entry.get(key), str):
            raise UserError(f"{where}: missing `{key}` (a string); entries need instruction and output, or messages")
    if not isinstance(entry.get("input", ""), str):
        raise UserError(f"{where}: `input` must be a string")


def split(entries: list[dict], fractions: dict[str, float], source: object = "the recipe") -> dict[str, list[dict]]:
    """Contiguous parts in the order given (the book: first 85 % train, next 10 % test, last 5 % validation)."""
    return splits.cut(entries, fractions, "split", source)


def as_messages(entry: dict) -> list[dict]:
    if "messages" in entry:
        return entry["messages"]
    request = entry["instruction"] + (f"\n\n{entry['input']}" if entry.get("input") else "")
    return [{"role": "user", "content": request}, {"role": "assistant", "content": entry["output"]}]


def alpaca_can_show(entry: dict) -> bool:
    """The Alpaca prompt holds one request and its answer: no system message, no further turns."""
    return "messages" not in entry or [m["role"] for m in entry["messages"]] == ["user", "assistant"]


def alpaca_prompt(entry: dict) -> str:
    """The book's `format_input` plus the response marker: everything the model sees before answering."""
    if not alpaca_can_show(entry):
        raise UserError("an entry with system or several turns needs `prompt_format: chat`")
    if "messages" in entry:
        entry = {"instruction": entry["messages"][0]["content"], "output": entry["messages"][1]["content"]}
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + RESPONSE_MARKER


def prompt_completion(entry: dict, prompt_format: str) -> dict:
    """TRL's prompt-completion format: the loss is computed on the completion only."""
    if prompt_format == "chat":
        messages = as_messages(entry)
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"prompt": alpaca_prompt(entry), "completion": as_messages(entry)[-1]["content"]}


def request(entry: dict) -> str:
    """What the entry asks, as a judge is shown it: the book's `format_input` (no response marker)."""
    asked = as_messages(entry)[:-1]
    if [m["role"] for m in asked] == ["user"]:
        return alpaca_prompt(entry).removesuffix(RESPONSE_MARKER)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in asked)


def reference(entry: dict) -> str:
    return as_messages(entry)[-1]["content"]


def prepare_tokenizer(tokenizer, prompt_format: str) -> None:
    """A chat prompt needs a chat template: give the minimal one to a tokenizer that has none."""
    if prompt_format == "chat" and not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE


def prompt_text(entry: dict, prompt_format: str, tokenizer) -> str:
    """What to feed `generate` for this entry."""
    if prompt_format == "chat":
        return tokenizer.apply_chat_template(as_messages(entry)[:-1], tokenize=False, add_generation_prompt=True)
    return alpaca_prompt(entry)
