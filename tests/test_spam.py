import pytest

from llmpipe.data.spam import SpamSplit, balanced_splits, read_messages
from llmpipe.errors import UserError
from tests.conftest import REPO

SMS = REPO / "data" / "sms_spam" / "SMSSpamCollection"


def test_every_line_survives_the_parse():
    messages = read_messages(SMS)
    assert len(messages) == 5574  # csv quoting would merge lines with stray quotes into 5,572
    assert sum(label == "spam" for label, _ in messages) == 747


def test_balanced_split_matches_the_book_sizes_and_is_seeded():
    splits = balanced_splits(read_messages(SMS), SpamSplit())
    assert {name: len(split) for name, split in splits.items()} == {"train": 1045, "validation": 149, "test": 300}
    labels = [label for split in splits.values() for label in split["label"]]
    assert labels.count(0) == labels.count(1) == 747
    again = balanced_splits(read_messages(SMS), SpamSplit())
    assert list(again["test"]["text"]) == list(splits["test"]["text"])
    assert list(balanced_splits(read_messages(SMS), SpamSplit(seed=7))["test"]["text"]) != list(splits["test"]["text"])


def test_unbalanced_keeps_every_message():
    splits = balanced_splits(read_messages(SMS), SpamSplit(balance=False))
    assert sum(len(split) for split in splits.values()) == 5574


@pytest.mark.parametrize(
    "content, message",
    [
        ("ham\tfine\nspam no tab here\n", r"spam\.tsv:2: no tab"),
        ("ham\tfine\nspamm\tclose\n", r"spam\.tsv:2: label 'spamm' is neither 'ham' nor 'spam'"),
    ],
)
def test_bad_lines_are_named_by_number(tmp_path, content, message):
    path = tmp_path / "spam.tsv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_messages(path)


def test_fractions_must_cover_the_three_splits():
    with pytest.raises(UserError, match="add up to 1"):
        balanced_splits([("ham", "a"), ("spam", "b")] * 10, SpamSplit(fractions={"train": 0.5, "test": 0.2}))
