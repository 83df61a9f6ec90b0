from pathlib import Path

import pytest
from datasets import Dataset

from llmpipe.data.documents import deduplicate, load, read_documents, split
from llmpipe.errors import UserError
from llmpipe.inputs import read_text
from llmpipe.params import DataParams


def test_paragraphs_lines_and_files(tmp_path):
    text = "first para\nstill first\n\n\nsecond\r\n  \n third \n"
    path = tmp_path / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    assert list(read_documents(path, "paragraphs")) == ["first para\nstill first", "second", "third"]
    assert list(read_documents(path, "lines")) == ["first para", "still first", "second", "third"]
    assert list(read_documents(path, "files")) == [text.strip()]


def test_a_byte_order_mark_at_the_start_is_dropped_and_nowhere_else(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeffham\thello\n\ufeffkept\n".encode("utf-8"))
    assert list(read_documents(path, "lines")) == ["ham\thello", "\ufeffkept"]
    assert read_text(path, "a test file").startswith("ham\t")
    path.write_bytes(b"\xef\xbb\xbfab\xffcd\n")  # a bad byte after the mark: offsets still count from the file's start
    for read in (lambda: list(read_documents(path, "lines")), lambda: read_text(path, "a test file")):
        with pytest.raises(UserError, match=r"byte offset 5: b'\\xffcd\\n'"):
            read()


def documents(texts: list[str]) -> Dataset:
    return Dataset.from_dict({"text": texts})


def test_deduplicate_keeps_first_copy_in_order():
    assert deduplicate(documents(["a", "b", "a", "c", "b"]))["text"] == ["a", "b", "c"]


def test_split_is_deterministic_and_disjoint():
    texts = documents([f"document {i}" for i in range(200)])
    first, again, other_seed = split(texts, 0.1, 1), split(texts, 0.1, 1), split(texts, 0.1, 2)
    assert list(first["validation"]["text"]) == list(again["validation"]["text"])
    assert list(first["validation"]["text"]) != list(other_seed["validation"]["text"])
    assert len(first["validation"]) == 20 and len(first["train"]) == 180
    assert not set(first["train"]["text"]) & set(first["validation"]["text"])


def test_split_that_leaves_a_side_empty_is_an_error():
    with pytest.raises(UserError, match="validation_fraction"):
        split(documents(["only", "two"]), 0.1, 1)


def test_load_normalises_then_dedupes(tmp_path):
    (tmp_path / "a.txt").write_text("caf\u0065\u0301\n\ncaf\u00e9\n\nother\n\nmore\n", encoding="utf-8")
    docs = load(DataParams(files=[str(tmp_path / "*.txt")], validation_fraction=0.34), tmp_path / "work")
    assert docs.duplicates_removed == 1  # NFC makes the two spellings of "café" one document
    assert sorted([*docs.splits["train"]["text"], *docs.splits["validation"]["text"]]) == ["café", "more", "other"]


def test_non_utf8_file_is_named_with_its_byte_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok text\n\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt: not UTF-8 text \(byte offset 12"):
        load(DataParams(files=[str(bad)]), tmp_path / "work")


def test_pattern_matching_nothing_is_named(tmp_path):
    with pytest.raises(UserError, match="nothing-here"):
        load(DataParams(files=[str(tmp_path / "nothing-here*.txt")]), tmp_path / "work")


def test_dataset_source_goes_through_datasets_load_dataset(tmp_path):
    from llmpipe.params import HubDataset

    folder = tmp_path / "local_dataset"  # a local folder takes the same path as a Hub id
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(f'{{"body": "document {i}"}}' for i in range(10)))
    docs = load(DataParams(hub=[HubDataset(path=str(folder), column="body")], validation_fraction=0.2), tmp_path / "work")
    assert len(docs.splits["validation"]) == 2 and len(docs.splits["train"]) == 8
    with pytest.raises(UserError, match="has no column 'text'; its columns are \\['body'\\]"):
        load(DataParams(hub=[HubDataset(path=str(folder))]), tmp_path / "work")


def test_a_bad_byte_deep_in_a_streamed_file_is_named_with_its_offset(tmp_path):
    bad = tmp_path / "big.txt"
    good = "a paragraph of text\n\n" * 5000
    bad.write_bytes(good.encode("utf-8") + b"caf\xe9\n")
    with pytest.raises(UserError, match=rf"big\.txt: not UTF-8 text \(byte offset {len(good) + 3}:"):
        load(DataParams(files=[str(bad)]), tmp_path / "work")


def test_files_without_documents_are_named(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="no text in the corpus"):
        load(DataParams(files=[str(tmp_path / "empty.txt")]), tmp_path / "work")


def test_documents_are_written_to_arrow_files_in_the_working_folder(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(f"document {i}" for i in range(100)))
    docs = load(DataParams(files=[str(tmp_path / "a.txt")]), tmp_path / "work")
    files = [Path(f["filename"]) for f in docs.splits["train"].cache_files]
    assert files and all(tmp_path / "work" in f.parents for f in files)  # memory-mapped, not held in RAM
