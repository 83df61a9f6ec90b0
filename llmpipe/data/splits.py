"""Contiguous splits by fractions, shared by the spam and the instruction data."""

from llmpipe import config
from llmpipe.errors import UserError

PARTS = ("train", "validation", "test")


def cut(items: list, fractions: dict[str, float], key: str, source: object = "the recipe") -> dict[str, list]:
    """Parts in the order the fractions are given; the last part takes the remainder.
    `source` (the recipe file) and `key` name the culprit in errors."""
    config.reject_unknown(fractions, PARTS, str(source), f"{key}.")
    if set(fractions) != set(PARTS) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise UserError(f"{source}: `{key}` needs train, validation and test fractions that add up to 1, got {fractions}")
    parts, start = {}, 0
    names = list(fractions)
    for position, name in enumerate(names):
        end = len(items) if position == len(names) - 1 else start + int(len(items) * fractions[name])
        parts[name] = items[start:end]
        if not parts[name]:
            raise UserError(f"{source}: the {name} split is empty ({len(items)} examples); change `{key}` or add data")
        start = end
    return parts
