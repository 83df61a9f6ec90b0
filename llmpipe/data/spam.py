"""The SMS Spam Collection (book ch6): parse every line, balance the classes, split by fractions."""

import random
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from llmpipe.data import splits
from llmpipe.errors import UserError
from llmpipe.inputs import read_text

LABELS = ["ham", "spam"]
FEATURES = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})


@dataclass
class SpamSplit:
    balance: bool = True  # undersample ham to the number of spam, as the book does
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "validation": 0.1, "test": 0.2})
    seed: int = 123


def read_messages(path: str | Path) -> list[tuple[str, str]]:
    """`label<TAB>text` lines. Read by line, not with csv quoting: stray quotes would merge lines
    (pandas' default gives 5,572 rows of 5,574)."""
    messages = []
    for number, line in enumerate(read_text(Path(path), "params.yaml `classify_data`").splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab:
            raise UserError(f"{path}:{number}: no tab; each line must be `ham<TAB>text` or `spam<TAB>text`")
        if label not in LABELS:
            raise UserError(f"{path}:{number}: label {label!r} is neither 'ham' nor 'spam'")
        messages.append((label, text))
    if not messages:
        raise UserError(f"{path}: no messages; each line must be `ham<TAB>text` or `spam<TAB>text`")
    if not any(text.strip() for _, text in messages):
        raise UserError(f"{path}: every message's text is empty; each line must be `ham<TAB>text` or `spam<TAB>text`")
    if len(labels := {label for label, _ in messages}) < 2:
        raise UserError(f"{path}: every message is labelled {labels.pop()!r}; a spam classifier needs both ham and spam lines")
    return messages


def balanced_splits(messages: list[tuple[str, str]], settings: SpamSplit, source: object = "the recipe") -> DatasetDict:
    """Balance (optional), shuffle with the seed, then cut the parts in the order of the fractions."""
    rng = random.Random(settings.seed)
    if settings.balance:
        spam = [m for m in messages if m[0] == "spam"]
        ham = [m for m in messages if m[0] == "ham"]
        messages = rng.sample(ham, min(len(ham), len(spam))) + spam
    messages = list(messages)
    rng.shuffle(messages)
    parts = splits.cut(messages, settings.fractions, "split.fractions", source)
    return DatasetDict({
        name: Dataset.from_dict({"text": [t for _, t in part], "label": [LABELS.index(l) for l, _ in part]}, features=FEATURES)
        for name, part in parts.items()
    })
