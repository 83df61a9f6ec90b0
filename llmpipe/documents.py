"""Raw text -> documents: read, normalise, drop exact duplicates, split train/validation by document.

The tokenizer and corpus stages both call `load`, so the tokenizer trains on exactly the corpus's
train documents and the validation text never shapes the vocabulary.
"""

import glob
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

from llmpipe.errors import UserError
from llmpipe.params import DataParams, HubDataset

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass
class Documents:
    splits: DatasetDict  # "train" and "validation", one "text" column, one row per document
    duplicates_removed: int


def load(data: DataParams) -> Documents:
    texts = [doc for path in _expand(data.files) for doc in split_documents(read_text(path), data.documents)]
    texts += [text for source in data.hub for text in _hub_texts(source)]
    if data.normalization:
        texts = [unicodedata.normalize(data.normalization, text) for text in texts]
    unique = deduplicate(texts) if data.deduplicate else texts
    if not unique:
        raise UserError("params.yaml: data: the corpus has no documents (are the files empty?)")
    return Documents(split(unique, data.validation_fraction, data.seed), len(texts) - len(unique))


def _expand(patterns: list[str]) -> list[Path]:
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise UserError(f"params.yaml: data.files: {pattern!r} matches no file (paths are relative to the repo root)")
        paths += [Path(match) for match in matches]
    return paths


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte offset {err.start}: {raw[err.start:err.start + 4]!r}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def split_documents(text: str, unit: str) -> list[str]:
    """One file -> documents: paragraphs (blank-line separated), lines, or the whole file."""
    if unit == "files":
        pieces = [text]
    elif unit == "lines":
        pieces = text.splitlines()
    else:
        pieces = _BLANK_LINE.split(text.replace("\r\n", "\n"))
    return [piece.strip() for piece in pieces if piece.strip()]


def _hub_texts(source: HubDataset) -> list[str]:
    from datasets import load_dataset

    dataset = load_dataset(source.path, source.name, split=source.split)
    if source.column not in dataset.column_names:
        raise UserError(
            f"params.yaml: data.hub: {source.path} has no column {source.column!r}; "
            f"its columns are {dataset.column_names}"
        )
    return [text for text in dataset[source.column] if text and text.strip()]


def deduplicate(texts: list[str]) -> list[str]:
    """Keep the first copy of each exact duplicate, in order."""
    seen, unique = set(), []
    for text in texts:
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest not in seen:
            seen.add(digest)
            unique.append(text)
    return unique


def split(texts: list[str], validation_fraction: float, seed: int) -> DatasetDict:
    """A seeded, deterministic split by document (datasets' own train_test_split)."""
    if not 0 < validation_fraction < 1:
        raise UserError(f"params.yaml: data.validation_fraction must be between 0 and 1, got {validation_fraction}")
    n_validation = round(len(texts) * validation_fraction)
    if n_validation < 1 or n_validation >= len(texts):
        raise UserError(
            f"params.yaml: data: {len(texts)} documents with validation_fraction {validation_fraction} "
            "leaves a split empty; add text or change validation_fraction"
        )
    parts = Dataset.from_dict({"text": texts}).train_test_split(test_size=n_validation, seed=seed)
    return DatasetDict(train=parts["train"], validation=parts["test"])
