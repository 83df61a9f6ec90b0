"""A politeness measure the preference data itself defines: the words its impolite rewrites use and the
original outputs never do, and the markers of its polite rewrites, each list's rate in a set of answers,
and the answers' length (so that empty, cut-off or rambling answers show beside the rates).

Derive the lists from the train pairs only: the measure is then taken on answers to instructions it was
not made from."""

import re
from collections import Counter

from llmpipe.data import instructions, preferences

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_lists(pairs: list[dict], min_rewrites: int = 3) -> dict[str, list[str]]:
    """`impolite`: the words of the impolite rewrites (the `rejected` answer where the original is `chosen`)
    that no original output in `pairs` uses; `polite`: the same of the polite rewrites. A word counts once
    per rewrite and must appear in at least `min_rewrites` of them (one rewrite's subject matter is no
    marker), and in one list only (a word both kinds of rewrite add marks neither)."""
    original = {word for entry in pairs for word in words(instructions.reference(entry))}
    rewrites = {"impolite": ("impolite_rejected", "rejected"), "polite": ("polite_preferred", "chosen")}
    found = {}
    for name, (kind, answer) in rewrites.items():
        counts = Counter(word for entry in pairs if preferences.pair_type(entry) == kind for word in set(words(entry[answer])))
        found[name] = {word for word, count in counts.items() if count >= min_rewrites and word not in original}
    both = found["impolite"] & found["polite"]
    return {name: sorted(listed - both) for name, listed in found.items()}


def rates(answers: list[str], lists: dict[str, list[str]]) -> dict[str, float]:
    """For each list, the share of `answers` that use at least one of its words (`<list>_rate`); and the
    answers' mean length in words and the share that are empty."""
    split = [words(answer) for answer in answers]
    count = max(len(split), 1)
    measured = {f"{name}_rate": round(sum(bool(set(answer) & set(listed)) for answer in split) / count, 4)
                for name, listed in lists.items()}
    return {
        **measured,
        "answer_words": round(sum(map(len, split)) / count, 2),
        "empty_answers": round(sum(not answer for answer in split) / count, 4),
    }
