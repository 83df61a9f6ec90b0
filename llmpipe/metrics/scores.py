"""Classification scores of the positive (spam) class: the project's `spam_scores` evaluate module
(scikit-learn underneath)."""

from functools import cache

from llmpipe.metrics import evaluate_modules


@cache
def _spam_scores():
    return evaluate_modules.load("spam_scores")


def classification_scores(labels, predictions) -> dict[str, float]:
    scores = _spam_scores().compute(predictions=[int(p) for p in predictions], references=[int(y) for y in labels])
    return {name: round(value, 4) for name, value in scores.items()}
