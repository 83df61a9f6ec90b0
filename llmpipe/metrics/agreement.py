"""How well a measure agrees with a gold rating (the book's GPT-4 scores): rank correlations, the AUC of
telling answers GPT-4 rates highly (80 or more) from the rest, and pairwise accuracy over two answers to
the same instruction. An answer a measure could not score (None) is left out and counted; a measure that
scored fewer than two answers has no figures, only its count."""

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

GOOD = 80  # GPT-4 scores at or above this count as good answers for the AUC


def _rounded(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 4)


def agreement(measure: list[float | None], gold: list[int]) -> dict:
    """Spearman, Kendall (tau-b) and AUC at gold >= GOOD over the answers the measure scored."""
    pairs = [(m, g) for m, g in zip(measure, gold) if m is not None]
    found = {"scored": len(pairs), "unscored": len(gold) - len(pairs), "spearman": None, "kendall": None, "auc": None}
    if len(pairs) < 2:
        return found
    values, truth = map(np.asarray, zip(*pairs))
    if len(set(values)) > 1 and len(set(truth)) > 1:
        found["spearman"] = _rounded(stats.spearmanr(values, truth).statistic)
        found["kendall"] = _rounded(stats.kendalltau(values, truth).statistic)
    good = truth >= GOOD
    if 0 < good.sum() < len(good):
        found["auc"] = _rounded(roc_auc_score(good, values))
    return found


def pairwise_accuracy(first: list[float | None], second: list[float | None], gold_first: list[int], gold_second: list[int]) -> dict:
    """Over the instructions whose two answers gold scores differently (and the measure scored both): how
    often the measure orders them as gold does; a tie of the measure counts half."""
    pairs = [(a, b, ga, gb) for a, b, ga, gb in zip(first, second, gold_first, gold_second) if ga != gb and None not in (a, b)]
    if not pairs:
        return {"pairwise_accuracy": None, "pairs": 0}
    same = [0.5 if a == b else float((a > b) == (ga > gb)) for a, b, ga, gb in pairs]
    return {"pairwise_accuracy": round(float(np.mean(same)), 4), "pairs": len(pairs)}
