"""How far a judge's scores can be trusted, measured on the test split itself: the judge scores each
example's own reference answer (right) and another example's reference (wrong, fixed by the seed). A judge
that reads the answers ranks right above wrong: AUC and paired win rate near 1; 0.5 is chance. Its length
bias is the rank correlation of its scores with the answers' length in words."""

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def mismatched(references: list[str], seed: int) -> list[str]:
    """Another example's reference for every example: a cyclic shift over a seeded random order, so no
    example keeps its own."""
    order = np.random.default_rng(seed).permutation(len(references))
    wrong = [""] * len(references)
    for i, at in enumerate(order):
        wrong[at] = references[order[(i + 1) % len(order)]]
    return wrong


def measure(right: list[float], wrong: list[float], scores: list[float], answers: list[str]) -> dict:
    """Validity from the paired right/wrong scores; length bias over `scores` of `answers` (every model's)."""
    right_, wrong_ = np.asarray(right), np.asarray(wrong)
    lengths = [len(answer.split()) for answer in answers]
    bias = stats.spearmanr(scores, lengths).statistic if len(set(lengths)) > 1 and len(set(scores)) > 1 else None
    return {
        "auc": round(float(roc_auc_score([1] * len(right_) + [0] * len(wrong_), np.concatenate([right_, wrong_]))), 4),
        "win_rate": round(float(np.mean((right_ > wrong_) + 0.5 * (right_ == wrong_))), 4),  # ties count half
        "reference_mean": round(float(right_.mean()), 3),
        "mismatched_mean": round(float(wrong_.mean()), 3),
        "length_bias": None if bias is None else round(float(bias), 4),
        "pairs": len(right_),
    }
