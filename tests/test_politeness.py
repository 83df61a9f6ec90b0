"""The politeness measure the preference data defines: word lists from the train pairs, their rates in answers."""

import json

from llmpipe.data import instructions
from llmpipe.metrics import politeness
from tests.conftest import REPO


def pair(output: str, chosen: str, rejected: str) -> dict:
    return {"instruction": "Say it.", "input": "", "output": output, "chosen": chosen, "rejected": rejected}


def test_lists_hold_the_rewrites_words_the_originals_never_use():
    pairs = [
        pair("The sky is blue.", "The sky is blue.", "Duh, the sky is obviously blue, really."),
        pair("Water is wet.", "Water is wet.", "Duh, water is really obviously wet, genius."),
        pair("Paris.", "Kindly note: Paris.", "Paris."),
        pair("Two.", "Kindly note: really two.", "Two."),
        pair("Ten.", "Ten, really.", "Ten."),
        pair("Blue.", "Blue.", "Blue."),  # chosen equals rejected: neither kind
    ]
    lists = politeness.word_lists(pairs, min_rewrites=2)
    assert lists == {"impolite": ["duh", "obviously"], "polite": ["kindly", "note"]}  # not "genius" (one rewrite), "is" (the originals'), "really" (both kinds)


def test_rates_and_length_of_answers():
    lists = {"impolite": ["duh"], "polite": ["kindly"]}
    measured = politeness.rates(["Duh, it is blue.", "Kindly, it is blue.", "", "It is blue."], lists)
    assert measured == {"impolite_rate": 0.25, "polite_rate": 0.25, "answer_words": 2.75, "empty_answers": 0.25}


def test_on_the_books_data_the_rewrites_score_apart_on_held_out_pairs():
    """Lists from the train pairs tell the held-out test pairs' impolite rewrites from their polite ones."""
    entries = json.loads((REPO / "data/instruction-data-with-preference.json").read_text())
    parts = instructions.split(entries, {"train": 0.85, "test": 0.1, "validation": 0.05})
    lists = politeness.word_lists(parts["train"])
    impolite = [e["rejected"] for e in parts["test"] if e["chosen"] == e["output"] != e["rejected"]]
    polite = [e["chosen"] for e in parts["test"] if e["rejected"] == e["output"] != e["chosen"]]
    assert politeness.rates(impolite, lists)["impolite_rate"] > 3 * politeness.rates(polite, lists)["impolite_rate"]
    assert politeness.rates(polite, lists)["polite_rate"] > 3 * politeness.rates(impolite, lists)["polite_rate"]
