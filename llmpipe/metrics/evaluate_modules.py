"""The project's metrics as `evaluate` modules, loaded from this package by path (works offline: the
Hub's metric scripts cannot be fetched without the network)."""

from pathlib import Path

import evaluate

FOLDER = Path(__file__).parent  # one folder per module: judge/, rouge_l/, spam_scores/


def load(name: str) -> evaluate.EvaluationModule:
    """`judge`, `rouge_l` or `spam_scores`; kept in memory (no cache files written)."""
    return evaluate.load(str(FOLDER / name), keep_in_memory=True)
