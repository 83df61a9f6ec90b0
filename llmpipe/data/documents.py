"""Raw text -> documents: read, normalise, drop exact duplicates, split train/validation by document.

The tokenizer and corpus stages both call `load`, so the tokenizer trains on exactly the corpus's
train documents and the validation text never shapes the vocabulary.

Corpora larger than memory stream: files are read line by line and the documents written to Arrow
files in a working folder as they come (`Dataset.from_generator`); everything after works on those
memory-mapped files. Memory holds a writer batch of documents, plus 8 bytes per document for finding
duplicates, never the corpus.
"""

import glob
import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from datasets.exceptions import DatasetGenerationError

from llmpipe import inputs
from llmpipe.errors import UserError
from llmpipe.params import DataParams, HubDataset

TEXT = Features({"text": Value("string")})


@dataclass
class Documents:
    splits: DatasetDict  # "train" and "validation", one "text" column, one row per document
    duplicates_removed: int


def load(data: DataParams, workdir: str | Path) -> Documents:
    """The documents of `data`, as Arrow files in `workdir` (put it on a disk, not a RAM-backed /tmp)."""
    paths = _expand(data.files)
    if next(_documents(paths, data), None) is None:
        named = ", ".join(str(path) for path in paths) or "no files"
        raise UserError(f"params.yaml: data: {named}: no text in the corpus (empty files?); add text or change data.files")
    try:
        every = Dataset.from_generator(_documents, features=TEXT, cache_dir=str(workdir), gen_kwargs={"paths": paths, "data": data})
    except DatasetGenerationError as err:  # datasets wraps what the generator raised
        raise err.__cause__ if isinstance(err.__cause__, UserError) else err
    unique = deduplicate(every) if data.deduplicate else every
    return Documents(split(unique, data.validation_fraction, data.seed), len(every) - len(unique))


def _documents(paths: list[Path], data: DataParams) -> Iterator[dict]:
    texts = (doc for path in paths for doc in read_documents(path, data.documents))
    hub = (text for source in data.hub for text in _hub_texts(source))
    for source in (texts, hub):
        for text in source:
            yield {"text": unicodedata.normalize(data.normalization, text) if data.normalization else text}


def _expand(patterns: list[str]) -> list[Path]:
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise UserError(f"params.yaml: data.files: {pattern!r} matches no file (paths are relative to the repo root)")
        paths += [Path(match) for match in matches]
    return paths


def read_documents(path: Path, unit: str, setting: str = "params.yaml `data.files`") -> Iterator[str]:
    """One file -> documents, streamed: paragraphs (separated by blank lines), lines, or the whole file."""
    if unit == "files":
        if text := inputs.read_text(path, setting).strip():
            yield text
        return
    paragraph: list[str] = []
    offset = 0
    with inputs.open_binary(path, setting) as handle:
        for raw in handle:  # a UTF-8 character never contains the byte \n, so lines split safely
            line = inputs.decode_utf8(raw, path, offset).rstrip("\r\n")
            offset += len(raw)
            if unit == "lines":
                yield from (piece.strip() for piece in line.splitlines() if piece.strip())
            elif line.strip(" \t"):
                paragraph.append(line)
            elif text := "\n".join(paragraph).strip():
                yield text
                paragraph = []
    if text := "\n".join(paragraph).strip():
        yield text


def _hub_texts(source: HubDataset) -> Iterator[str]:
    from datasets import load_dataset

    dataset = load_dataset(source.path, source.name, split=source.split)
    if source.column not in dataset.column_names:
        raise UserError(
            f"params.yaml: data.hub: {source.path} has no column {source.column!r}; "
            f"its columns are {dataset.column_names}"
        )
    for batch in dataset.select_columns([source.column]).iter(batch_size=1000):
        yield from (text for text in batch[source.column] if text and text.strip())


def text_batches(documents: Dataset, size: int = 1000) -> Iterator[list[str]]:
    """The documents' text, a batch at a time (what `tokenizers` trainers and batched tokenisation take)."""
    for batch in documents.select_columns(["text"]).iter(batch_size=size):
        yield batch["text"]


def _digests(batch: dict) -> dict:
    # 64 bits of sha256: the chance of two different documents colliding is ~n^2 / 2^65 (1e-5 at 10M documents)
    return {"digest": [int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little", signed=True) for t in batch["text"]]}


def deduplicate(documents: Dataset) -> Dataset:
    """Keep the first copy of each exact duplicate, in order."""
    digests = documents.map(_digests, batched=True, remove_columns=["text"], desc="deduplicate")
    _, first = np.unique(digests.data.column("digest").to_numpy(), return_index=True)
    return documents if len(first) == len(documents) else documents.select(np.sort(first))


def split(documents: Dataset, validation_fraction: float, seed: int) -> DatasetDict:
    """A seeded, deterministic split by document (datasets' own train_test_split); `validation_fraction`
    in (0, 1), as params.yaml is checked when it loads."""
    n_validation = round(len(documents) * validation_fraction)
    if n_validation < 1 or n_validation >= len(documents):
        raise UserError(
            f"params.yaml: data: {len(documents)} documents with validation_fraction {validation_fraction} "
            "leaves a split empty; add text or change validation_fraction"
        )
    parts = documents.train_test_split(test_size=n_validation, seed=seed)
    return DatasetDict(train=parts["train"], validation=parts["test"])
